"""bf16 (or fp16) hybrid-batch logits against a float32 reference of the same weights.

The reduced-precision model is random-init in that dtype and the reference is its exact
upcast to float32, so the difference is the arithmetic (activations, KV cache, kernels), not
weight rounding. Both see the same history: decode requests whose prompts were prefilled, and
a request whose first chunk is cached; then one hybrid batch (its decodes + that request's
second chunk) runs in both, and the logits of every sampled row are compared. The same batch's
parts are also run separately in each dtype (hybrid == separate is the SARATHI invariant).
"""
from __future__ import annotations

import copy

import torch

from ..model.arch import ModelArch
from ..model.kv_cache import PartSpec, build_attention_metadata
from ..model.llama import StageModel
from ..model.shapes import canonical_dtype
from ..model.random_weights import random_stage_model

CHECK_ARCH = dict(vocab_size=1024, hidden_size=256, intermediate_size=688, num_layers=4, num_heads=8,
                  num_kv_heads=4, max_position_embeddings=512)


def _compare(x: torch.Tensor, ref: torch.Tensor) -> dict:
    x, ref = x.double().cpu(), ref.double().cpu()
    diff = (x - ref)
    return {"max_abs_err": float(diff.abs().max()),
            "max_abs_ref": float(ref.abs().max()),
            "rel_max_err": float(diff.abs().max() / ref.abs().max().clamp_min(1e-30)),
            "rel_l2_err": float(diff.norm() / ref.norm().clamp_min(1e-30)),
            "min_cosine": float(torch.nn.functional.cosine_similarity(x, ref, dim=-1).min()),
            "top1_agree": float((x.argmax(-1) == ref.argmax(-1)).double().mean())}


class _Runner:
    def __init__(self, model: StageModel, num_blocks: int, block_size: int):
        self.model, self.block_size = model, block_size
        self.kv = model.new_kv_cache(num_blocks, block_size)
        self.device = next(model.parameters()).device

    def __call__(self, parts: list[PartSpec], ids: list[int]) -> torch.Tensor:
        meta = build_attention_metadata(parts, self.block_size, self.device, self.model.arch.sliding_window)
        return self.model(torch.tensor(ids, device=self.device), meta, self.kv)


def hybrid_logits_check(device: torch.device | str, dtype: torch.dtype = torch.bfloat16,
                        arch: ModelArch | None = None, num_decodes: int = 5, chunk: int = 48,
                        seed: int = 0, std: float = 0.05) -> dict:
    """Compare ``dtype`` hybrid-batch logits with a float32 reference on ``device``."""
    arch = arch or ModelArch.from_shape(**CHECK_ARCH, dtype=canonical_dtype(str(dtype)))
    low = random_stage_model(arch, dtype=dtype, device=device, seed=seed, std=std)
    ref = copy.deepcopy(low).to(torch.float32)
    ref.reset_rope()
    bs = 16
    gen = torch.Generator().manual_seed(seed)
    prompt_lens = [int(x) for x in torch.randint(17, 120, (num_decodes,), generator=gen)]
    seq_len = max(prompt_lens + [2 * chunk]) + 1
    per = -(-seq_len // bs)
    tables = [list(range(i * per, (i + 1) * per)) for i in range(num_decodes + 1)]
    prompts = [torch.randint(3, arch.vocab_size, (n + 1,), generator=gen).tolist() for n in prompt_lens]
    long_prompt = torch.randint(3, arch.vocab_size, (2 * chunk,), generator=gen).tolist()
    out = {}
    runners = {"low": _Runner(low, per * len(tables), bs), "ref": _Runner(ref, per * len(tables), bs)}
    # History: each decode request's prompt, then the first chunk of the long prompt.
    for r in runners.values():
        for i, (n, p) in enumerate(zip(prompt_lens, prompts)):
            r([PartSpec(0, n, tables[i], True)], p[:n])
        r([PartSpec(0, chunk, tables[-1], False)], long_prompt[:chunk])
    dec_parts = [PartSpec(n, 1, tables[i], True) for i, n in enumerate(prompt_lens)]
    dec_ids = [p[n] for n, p in zip(prompt_lens, prompts)]
    chunk_part = PartSpec(chunk, chunk, tables[-1], True)
    hybrid = {k: r(dec_parts + [chunk_part], dec_ids + long_prompt[chunk:]) for k, r in runners.items()}
    separate = {k: torch.cat([r(dec_parts, dec_ids), r([chunk_part], long_prompt[chunk:])])
                for k, r in runners.items()}
    out["low_vs_ref_hybrid"] = _compare(hybrid["low"], hybrid["ref"])
    out["low_hybrid_vs_low_separate"] = _compare(hybrid["low"], separate["low"])
    out["ref_hybrid_vs_ref_separate"] = _compare(hybrid["ref"], separate["ref"])
    out["dtype"] = str(dtype).replace("torch.", "")
    out["device"] = str(device)
    out["rows"] = int(hybrid["ref"].shape[0])
    return out
