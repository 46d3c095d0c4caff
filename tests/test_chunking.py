"""Chunked prefill is lossless, and a hybrid batch (prefill chunk(s) + decodes) equals running
its parts separately while every linear layer runs once over the concatenated tokens.

Tolerances. The tiny test models use a large init range (so greedy outputs vary), which puts
the residual stream at ~200 and logits at ~10; float32 summation-order noise between
differently shaped kernels (one chunk vs several, SDPA prefill vs batched decode) is then
~1e-5 to 6e-5 on the logits, both ours vs ours and ours vs HF. So every comparison runs twice:
in float64 (weights, activations and KV cache; RMSNorm and logits are float32 as in HF) with an
absolute 1e-5 - where the results are in fact bit-identical - and in float32 with 1e-5
relative to the largest logit magnitude.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from conftest import build_hf_model, make_requests, random_prompts, run_engine, save_checkpoint
from pp_sarathi.config import SamplingConfig
from pp_sarathi.model.kv_cache import PartSpec, build_attention_metadata
from pp_sarathi.model.loader import load_stage
from pp_sarathi.runtime.executor import StageExecutor
from pp_sarathi.runtime.sampler import Sampler
from pp_sarathi.scheduler.batch import ScheduledPart

BLOCK = 4
BLOCKS_PER_REQ = 16  # 64 tokens per request
ATOL = 1e-5
# Engine-level checks only see float32 logprobs (logits ~10, so float32 noise ~1e-5 to 6e-5).
LOGPROB_TOL = 1e-4


def tol(dtype: str, ref: torch.Tensor) -> float:
    """Absolute tolerance for comparing against ``ref``: see the module docstring."""
    if dtype == "float64":
        return ATOL
    return ATOL * max(1.0, ref.abs().max().item())


def load(path, dtype: str = "float32"):
    model = load_stage(path, 0, _num_layers(path), dtype="float32")
    return model.double() if dtype == "float64" else model


@pytest.fixture(scope="module")
def mistral_sw_ckpt(tmp_path_factory):
    """Mistral with a binding sliding window (6 < prompt length)."""
    model = build_hf_model("mistral", seed=5, sliding_window=6)
    return save_checkpoint(model, tmp_path_factory.mktemp("mistral_sw"))


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


@pytest.fixture(params=["llama", "qwen2", "mistral_sw"])
def stage_model(request, hf_checkpoint, dtype):
    if request.param == "mistral_sw":
        path = request.getfixturevalue("mistral_sw_ckpt")
    else:
        path = hf_checkpoint(request.param)[0]
    return load(path, dtype)


def _num_layers(path) -> int:
    from pp_sarathi.model.arch import ModelArch

    return ModelArch.from_pretrained(path).num_layers


def table(req: int) -> list[int]:
    """Request ``req`` owns blocks [req*16, req*16+16), deliberately not starting at 0."""
    base = req * BLOCKS_PER_REQ + 1
    return list(range(base, base + BLOCKS_PER_REQ))[::-1]  # reversed: slots are not contiguous


def new_cache(model, num_reqs: int = 8):
    return model.new_kv_cache(num_reqs * BLOCKS_PER_REQ + 1, BLOCK)


def step(model, kv, parts: list[PartSpec], token_ids: list[int]) -> torch.Tensor:
    meta = build_attention_metadata(parts, BLOCK, "cpu", model.arch.sliding_window)
    return model(torch.tensor(token_ids), meta, kv)


def prefill(model, kv, req: int, prompt: list[int], chunk: int) -> torch.Tensor:
    """Prefill in chunks of ``chunk`` tokens; returns the logits after the last prompt token."""
    n = len(prompt)
    logits = None
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        out = step(model, kv, [PartSpec(s, e - s, table(req), needs_logits=e == n)], prompt[s:e])
        if e == n:
            logits = out[0]
        else:
            assert out.shape[0] == 0  # no LM head rows for a chunk that does not end the prompt
    return logits


def greedy(model, kv, req: int, prompt: list[int], first_logits: torch.Tensor, steps: int):
    tokens, all_logits = [], [first_logits]
    logits = first_logits
    for i in range(steps):
        tok = int(logits.argmax())
        tokens.append(tok)
        logits = step(model, kv, [PartSpec(len(prompt) + i, 1, table(req), True)], [tok])[0]
        all_logits.append(logits)
    return tokens, torch.stack(all_logits)


def test_chunked_prefill_is_lossless(stage_model, dtype):
    model = stage_model
    prompt = random_prompts([37], model.arch.vocab_size, seed=11)[0]
    results = {}
    for chunk in (1, 3, 16, len(prompt)):
        kv = new_cache(model)
        first = prefill(model, kv, 0, prompt, chunk)
        results[chunk] = greedy(model, kv, 0, prompt, first, steps=10)
    ref_tokens, ref_logits = results[len(prompt)]
    assert len(set(ref_tokens)) > 2, ref_tokens
    for chunk, (tokens, logits) in results.items():
        assert tokens == ref_tokens, chunk
        err = (logits - ref_logits).abs().max().item()
        assert err <= tol(dtype, ref_logits), f"chunk {chunk}: logits differ by {err}"


def test_whole_prompt_logits_match_hf(hf_checkpoint, dtype):
    """Anchor: the unchunked reference above is itself HF's result."""
    import copy

    path, hf_model = hf_checkpoint("llama")
    model = load(path, dtype)
    if dtype == "float64":
        hf_model = copy.deepcopy(hf_model).double()
    prompt = random_prompts([37], model.arch.vocab_size, seed=11)[0]
    with torch.no_grad():
        ref = hf_model(torch.tensor([prompt])).logits[0, -1].float()
    for chunk in (5, 37):
        ours = prefill(model, new_cache(model), 0, prompt, chunk)
        assert (ours - ref).abs().max().item() <= tol(dtype, ref)


@pytest.mark.parametrize("chunk", [1, 3, 16, 10**6])
def test_engine_outputs_independent_of_chunk_size(chunk, llama_ckpt, workload_file, run_config):
    """End to end through the scheduler: the chunk size changes nothing in the outputs."""
    prompts = random_prompts([2, 19, 33], 384, seed=21)
    wl = workload_file(make_requests(prompts, [7, 5, 6]))
    ref = run_engine(run_config(llama_ckpt, wl, chunk_size=128, logprobs=3))
    out = run_engine(run_config(llama_ckpt, wl, chunk_size=chunk, logprobs=3))
    for a, b in zip(ref.sequences, out.sequences):
        assert a.output_token_ids == b.output_token_ids
        for la, lb in zip(a.logprobs, b.logprobs):
            assert la.keys() == lb.keys()
            assert max(abs(la[t] - lb[t]) for t in la) <= LOGPROB_TOL


# ---- hybrid batches ------------------------------------------------------------------

DECODE_PROMPT_LENS = [10, 7, 13]  # requests 0-2: decoding
CHUNKED_LEN = 20  # request 3: first 8 prompt tokens already prefilled
NEW_LEN = 6  # request 4: prompt not started


class LinearCounter:
    """Forward hooks on every nn.Linear: (module name, input rows) per call."""

    def __init__(self, model: nn.Module):
        self.calls: list[tuple[str, int]] = []
        self.handles = [m.register_forward_hook(self._hook(name))
                        for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        self.names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]

    def _hook(self, name):
        def hook(module, args, output):
            self.calls.append((name, args[0].shape[0]))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _history(model):
    """A cache where requests 0-2 are decoding (one output token fed back already) and request 3
    has its first 8 prompt tokens cached. Returns (kv, prompts, next decode tokens)."""
    vocab = model.arch.vocab_size
    prompts = random_prompts(DECODE_PROMPT_LENS + [CHUNKED_LEN, NEW_LEN], vocab, seed=31)
    kv = new_cache(model)
    next_tokens = []
    for r in range(3):
        logits = prefill(model, kv, r, prompts[r], chunk=5)
        tok = int(logits.argmax())
        logits = step(model, kv, [PartSpec(len(prompts[r]), 1, table(r), True)], [tok])[0]
        next_tokens.append(int(logits.argmax()))
    step(model, kv, [PartSpec(0, 8, table(3), False)], prompts[3][:8])
    return kv, prompts, next_tokens


def _clone(kv):
    import copy

    other = copy.copy(kv)
    other.k, other.v = kv.k.clone(), kv.v.clone()
    return other


@pytest.mark.parametrize("layout", ["last_chunk", "mid_chunk", "two_chunks"])
def test_hybrid_batch_equals_separate_parts(layout, hf_checkpoint, dtype):
    path = hf_checkpoint("llama")[0]
    model = load(path, dtype)
    kv, prompts, dec_tokens = _history(model)
    kv_sep = _clone(kv)

    # The prefill part(s) of the batch.
    if layout == "last_chunk":  # request 3's final chunk: samples its first token
        prefills = [(3, PartSpec(8, CHUNKED_LEN - 8, table(3), True), prompts[3][8:])]
    elif layout == "mid_chunk":  # a middle chunk: no LM head row
        prefills = [(3, PartSpec(8, 8, table(3), False), prompts[3][8:16])]
    else:  # a middle chunk of request 3 and the whole prompt of request 4 (sarathi_serve packs these)
        prefills = [(3, PartSpec(8, 8, table(3), False), prompts[3][8:16]),
                    (4, PartSpec(0, NEW_LEN, table(4), True), prompts[4])]
    decodes = [(r, PartSpec(len(prompts[r]) + 1, 1, table(r), True), [dec_tokens[r]]) for r in range(3)]
    parts = prefills + decodes

    counter = LinearCounter(model)
    try:
        hybrid = step(model, kv, [p for _, p, _ in parts], [t for _, _, ids in parts for t in ids])
        calls = list(counter.calls)
    finally:
        counter.close()

    total = sum(p.num_tokens for _, p, _ in parts)
    need = sum(p.needs_logits for _, p, _ in parts)
    # Each linear of each layer ran exactly once, over all tokens of the batch, except in the
    # model's last layer (this stage holds the whole model): after its QKV projection (every
    # row's K/V is cached) only the rows that reach the LM head go on. The LM head once, over one row per part that needs logits.
    last = f"layers.{model.arch.num_layers - 1}."
    assert sorted(name for name, _ in calls) == sorted(counter.names)
    for name, rows in calls:
        pruned = name == "lm_head" or (name.startswith(last) and not name.endswith("qkv_proj"))
        expect = need if pruned else total
        assert rows == expect, (name, rows, expect)
    per_layer = {n.split(".")[-1] for n in counter.names if n.startswith("layers.0.")}
    assert per_layer == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert hybrid.shape == (need, model.arch.vocab_size)

    # The same parts run one batch each (prefills first, then the decodes batched together,
    # then also each decode alone).
    separate = []
    for _, p, ids in prefills:
        out = step(model, kv_sep, [p], ids)
        separate.extend(out)
    dec_batch = step(model, kv_sep, [p for _, p, _ in decodes], [ids[0] for _, _, ids in decodes])
    separate.extend(dec_batch)
    separate = torch.stack(separate)
    assert separate.shape == hybrid.shape
    err = (hybrid - separate).abs().max().item()
    assert err <= tol(dtype, separate), f"hybrid vs separate logits differ by {err}"
    # Same K/V written to the cache.
    assert (kv.k - kv_sep.k).abs().max().item() <= tol(dtype, kv_sep.k)
    assert (kv.v - kv_sep.v).abs().max().item() <= tol(dtype, kv_sep.v)

    # A single decode alone (batch of one) gives the same logits as in the batch of decodes.
    kv_one = _clone(kv_sep)
    r, p, ids = decodes[1]
    alone = step(model, kv_one, [p], ids)[0]
    assert (alone - dec_batch[1]).abs().max().item() <= tol(dtype, alone)

    if layout != "last_chunk":
        # Finishing request 3's prompt from either cache gives the same first-token logits.
        rest = PartSpec(16, CHUNKED_LEN - 16, table(3), True)
        a = step(model, kv, [rest], prompts[3][16:])
        b = step(model, kv_sep, [rest], prompts[3][16:])
        assert (a - b).abs().max().item() <= tol(dtype, b)


@pytest.mark.parametrize("in_place", [True, False], ids=["cpu_kernels", "torch_path"])
def test_last_layer_on_sampled_rows_alone_equals_all_rows(stage_model, dtype, in_place, monkeypatch):
    """The model's last layer carries on only the rows the LM head reads: same logits and same
    K/V as running it over every row, for a hybrid of a middle chunk, a final chunk, a whole
    prompt and decodes, and for a middle chunk alone (no row sampled)."""
    from pp_sarathi.model import cpu_attention

    monkeypatch.setattr(cpu_attention, "ENABLED", in_place)
    model = stage_model
    kv, prompts, dec_tokens = _history(model)
    kv_full = _clone(kv)
    parts = [(PartSpec(8, 8, table(3), False), prompts[3][8:16]),
             (PartSpec(0, NEW_LEN, table(4), True), prompts[4])]
    parts += [(PartSpec(len(prompts[r]) + 1, 1, table(r), True), [dec_tokens[r]]) for r in range(3)]
    batches = [parts, [(PartSpec(16, 2, table(3), False), prompts[3][16:18])]]
    for batch in batches:
        specs, ids = [p for p, _ in batch], [t for _, i in batch for t in i]
        assert model.prune_last_layer
        pruned = step(model, kv, specs, ids)
        model.prune_last_layer = False
        try:
            full = step(model, kv_full, specs, ids)
        finally:
            model.prune_last_layer = True
        assert pruned.shape == full.shape == (sum(p.needs_logits for p in specs), model.arch.vocab_size)
        if full.numel():
            err = (pruned - full).abs().max().item()
            assert err <= tol(dtype, full), f"pruned vs full logits differ by {err}"
        assert torch.equal(kv.k, kv_full.k) and torch.equal(kv.v, kv_full.v)


def test_a_pipelines_last_stage_keeps_every_row(hf_checkpoint):
    """Only a stage holding the whole model carries its last layer on for the sampled rows
    alone; a pipeline's last stage runs every row through every layer (model/llama.py)."""
    path = hf_checkpoint("llama")[0]
    n = _num_layers(path)
    model = load_stage(path, 1, n)
    kv = new_cache(model)
    specs = [PartSpec(0, 6, table(0), True), PartSpec(0, 5, table(1), False)]
    counter = LinearCounter(model)
    try:
        meta = build_attention_metadata(specs, BLOCK, "cpu", model.arch.sliding_window)
        out = model(torch.randn(11, model.arch.hidden_size), meta, kv)
    finally:
        counter.close()
    assert out.shape == (1, model.arch.vocab_size)
    assert sorted(counter.calls) == sorted((name, 1 if name == "lm_head" else 11) for name in counter.names)


def test_the_start_up_probe_times_full_layers(hf_checkpoint):
    """The probe's fit models full layers: at pp=1 it runs the last layer over every row too,
    and leaves the model pruning afterwards."""
    from pp_sarathi.runtime.calibrate import probe

    path = hf_checkpoint("llama")[0]
    model = load(path)
    ex = StageExecutor(model, new_cache(model), Sampler(SamplingConfig()))
    counter = LinearCounter(model)
    try:
        rows = probe(ex, model.arch.max_position_embeddings, repeats=1)
    finally:
        counter.close()
    assert rows and model.prune_last_layer
    last = f"layers.{model.arch.num_layers - 1}."
    seen = [r for name, r in counter.calls if name == last + "qkv_proj"]
    assert seen and [r for name, r in counter.calls if name == last + "down_proj"] == seen


def test_executor_hybrid_step_samples_like_separate_steps(hf_checkpoint):
    """Through StageExecutor + Sampler (the runtime path): same tokens and logprobs."""
    path = hf_checkpoint("qwen2")[0]
    model = load_stage(path, 0, 2)
    kv, prompts, dec_tokens = _history(model)
    kv_sep = _clone(kv)
    sampler = Sampler(SamplingConfig(logprobs=4))
    parts = [ScheduledPart(3, 8, prompts[3][8:], table(3), True, True, 0)]
    parts += [ScheduledPart(r, len(prompts[r]) + 1, [dec_tokens[r]], table(r), False, True, 2)
              for r in range(3)]
    hybrid = StageExecutor(model, kv, sampler).step(parts)
    sep_exec = StageExecutor(model, kv_sep, sampler)
    separate = sep_exec.step(parts[:1]) + sep_exec.step(parts[1:])
    assert [r.token_id for r in hybrid] == [r.token_id for r in separate]
    for a, b in zip(hybrid, separate):
        assert a.logprobs.keys() == b.logprobs.keys() and len(a.logprobs) == 4
        assert max(abs(a.logprobs[t] - b.logprobs[t]) for t in a.logprobs) <= LOGPROB_TOL

    # A part that does not sample gets no result, and emits no LM-head row.
    mid = [ScheduledPart(4, 0, prompts[4][:3], table(4), True, False, 0)] + [
        ScheduledPart(r, len(prompts[r]) + 2, [hybrid[1 + r].token_id], table(r), False, True, 3)
        for r in range(3)]
    res = StageExecutor(model, kv, sampler).step(mid)
    assert res[0] is None and all(r is not None for r in res[1:])
