"""Measure the costs of the configured model on this device, the way a pipeline stage runs it -> CSV.

Everything runs the runtime's own code with random weights: the pipeline's stages are built
as real :class:`~pp_sarathi.model.llama.StageModel` s with the stage's real layer count (the
``parallel.pp`` / ``parallel.partition`` split) and a KV cache laid out as the block manager
lays it out, on ``cfg.device`` with the thread count a stage gets (``cores / parallel.pp``).
On a CPU host ``pp - 1`` co-running processes (``sim.profile_corunners=-1``; at most one per
further core) execute the very same measurement at the same time, as the other stages of a
pipeline on the same host do.

=================  ==========================  ==========================================
op                 swept over                  what runs (per call)
=================  ==========================  ==========================================
linear             tokens                      the 4 fused linear layers of every layer of
                                               the first stage, in execution order (seconds
                                               per layer: weights stream from memory as in
                                               a stage step)
attn_prefill       chunk, cached               ``DecoderLayer._attention`` of every layer of
                                               the stage over its own KV pool (per layer)
attn_decode        batch, context              the same for ``batch`` decodes
embed              tokens                      ``embed_tokens`` (cache flushed first)
lm_head            tokens (= sampled rows)     ``lm_head(norm(x)).float()`` (cache flushed)
sample             tokens (= sampled rows)     ``Sampler(cfg.sampling)``
overhead           batch (= parts), tokens     ``build_attention_metadata`` + rotary gather
stage              chunk x prefills, cached,   a whole ``StageExecutor.step`` of the first /
                   batch (decodes), context    middle / last stage (``stage``, ``layers``)
p2p                bytes                       gloo send/recv between two local processes
                                               (ping-pong / 2), as the transport sends
=================  ==========================  ==========================================

The ``stage`` rows are what a pipeline stage really costs; the cost model composes the ops
and fits the per-layer remainder (norms, rotary, KV writes, activation, residuals, Python)
to them (pp_sarathi/sim/costmodel.py). Every row also carries device, dtype, threads and the
model shape.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import select
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..config import RunConfig
from ..model.kv_cache import PartSpec, build_attention_metadata
from ..model.llama import StageModel
from ..model.loader import parse_dtype
from ..runtime.executor import StageExecutor
from ..runtime.partition import layer_counts, layer_ranges
from ..runtime.pipeline_threads import prepare_host
from ..runtime.sampler import Sampler
from ..runtime.setup import pick_device
from ..scheduler.batch import ScheduledPart
from .costmodel import holdout_errors, write_profile

log = logging.getLogger("pp_sarathi")

# Token counts of the linear sweep: every count up to 48 (small GEMMs are not monotonic in the
# row count on CPUs: 3 rows can cost more than 4), then a step of 5 (so that interpolation
# averages over the row-blocking residues), then coarser.
TOKEN_GRID = (list(range(1, 49)) + list(range(53, 161, 5))
              + [177, 206, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192])
CHUNK_GRID = [8, 32, 64, 128, 256, 512, 1024, 2048]
CACHED_GRID = [0, 128, 256, 512, 1024, 2048, 4096, 8192]
DECODE_BATCH_GRID = [1, 2, 4, 8, 16, 32, 64]
CONTEXT_GRID = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
ROWS_GRID = [1, 2, 4, 8, 16, 32, 64, 128]
P2P_BYTES = [16, 256, 4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]
# Micro-batches above this many tokens (whole prompts) take seconds a step: they are timed in
# fewer calls, and without waiting for the co-runners (see _Point.settle).
WHOLE_PROMPT_TOKENS = 1024
STAGE_WEIGHT_BYTES = 3 << 30  # at most this much weight per profiled stage (layers are capped)


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _once(self, fn, flush=None) -> float:
        if flush is not None:
            flush()
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def sample(self, fn, flush=None, budget_s: float = 0.02, max_calls: int = 25, min_calls: int = 1) -> list[float]:
        """Seconds of ``min_calls`` consecutive calls of ``fn``, or of as many as fit ``budget_s``
        (up to ``max_calls``)."""
        first = self._once(fn, flush)
        n = max(min_calls - 1, min(max_calls if flush is None else 2, int(budget_s / max(first, 1e-7))))
        return [first] + [self._once(fn, flush) for _ in range(n)]


def _random_stage(arch, dtype: torch.dtype, device: torch.device, start: int = 0, end: int | None = None
                  ) -> StageModel:
    """Layers ``[start, end)`` of ``arch`` as a stage with random weights, built on ``device``
    (default: a one-layer first+last stage)."""
    if end is None:
        arch, start, end = dataclasses.replace(arch, num_layers=1), 0, 1
    with torch.device("meta"):
        model = StageModel(arch, start, end)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(start)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model = model.to(dtype)
    model.reset_rope()
    return model.eval()


def _stage_executor(cfg: RunConfig, arch, device: torch.device, start: int, end: int, blocks: int) -> StageExecutor:
    """Layers ``[start, end)`` as a runtime stage with random weights and a random-filled KV pool
    of ``blocks`` blocks. A stage over ``STAGE_WEIGHT_BYTES`` of weights is built with fewer
    layers (the profile rows say how many), keeping the model's last layer when it has it."""
    dtype = parse_dtype(cfg.model.dtype)
    per_layer_bytes = max(1, arch.num_params() // max(1, arch.num_layers)) * torch.tensor([], dtype=dtype).element_size()
    n = min(end - start, max(1, STAGE_WEIGHT_BYTES // per_layer_bytes))
    start, end = (end - n, end) if end == arch.num_layers else (start, start + n)
    model = _random_stage(arch, dtype, device, start, end)
    kv = model.new_kv_cache(blocks, cfg.cache.block_size)
    with torch.no_grad():
        kv.k.normal_()
        kv.v.normal_()
    return StageExecutor(model, kv, Sampler(cfg.sampling) if model.is_last else None)


def _contiguous_tables(lengths: list[int], block_size: int) -> list[list[int]]:
    """Block tables packed from block 0, as the block manager hands out low ids first."""
    tables, nxt = [], 0
    for n in lengths:
        nb = -(-n // block_size)
        tables.append(list(range(nxt, nxt + nb)))
        nxt += nb
    return tables


def host_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def profile_threads_and_corunners(cfg: RunConfig, device: torch.device) -> tuple[int, int]:
    """(torch threads, co-running processes) of a profile: what one stage of a ``parallel.pp``
    pipeline on this host gets (runtime/pipeline_threads.py) and how many other stages share
    the host with it. Auto: ``pp - 1`` on a CPU, but at most as many as have cores of their
    own; more stages than cores time-share them, which the simulation models itself."""
    cores = host_cores()
    pp = max(1, cfg.parallel.pp)
    threads = cfg.sim.profile_threads or cfg.parallel.threads_per_stage or max(1, cores // pp)
    corunners = cfg.sim.profile_corunners
    if corunners < 0:
        corunners = min(pp, max(1, cores // threads)) - 1 if device.type == "cpu" else 0
    return threads, corunners


def _l3_bytes() -> int:
    try:
        txt = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
        return int(txt.rstrip("KMG")) * mult
    except Exception:
        return 32 << 20


@dataclass
class _Point:
    op: str
    cols: dict
    setup: Callable[[], Callable[[], object]]  # builds the inputs, returns the call to time
    per: int = 1  # the call covers this many layers: seconds are per layer
    flush: bool = False  # evict the CPU caches before each call (weights come from memory)
    calls: int = 1  # consecutive calls per round at least (their spread is the step-to-step jitter)
    rounds: int = 0  # timed in this many rounds only (0: every round); for the slowest points
    # Start timing only once every co-runner runs this very point. Without it, whole stage
    # steps were timed next to co-runners still finishing the previous point and came out
    # close to their uncontended time: decode steps, which lose 10-20 % to the other stage's
    # memory traffic in a real pipeline, were predicted that much too fast. (Whole-prompt
    # steps, seconds long and compute-bound, skip the wait.)
    settle: bool = False


class _Bench:
    """The stages and measurement points of a profile; built identically in the profiling
    process and in every co-running process, so that both can run point ``i``."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        from .simulate import sim_arch

        self.cfg = cfg
        self.device = device
        self.arch = arch = sim_arch(cfg)
        self.dtype = dtype = parse_dtype(cfg.model.dtype)
        sc = cfg.sim
        bs = self.bs = cfg.cache.block_size
        pp = max(1, cfg.parallel.pp)
        self.max_tokens = max_tokens = max(sc.profile_max_tokens, cfg.scheduler.chunk_size + 1)
        self.max_ctx = max_ctx = min(sc.profile_max_context, arch.max_position_embeddings)
        self.per_batch = per_batch = max(1, -(-cfg.scheduler.max_batch_size // pp))
        # Decodes per micro-batch: up to what the scheduler can put in one (max_batch_size over
        # all in-flight micro-batches), at least two micro-batches' share.
        self.max_dec = max_dec = max(4, min(cfg.scheduler.max_batch_size, 2 * per_batch))
        self.points: list[_Point] = []
        self.stage_shapes = _stage_shapes(cfg.scheduler.chunk_size, per_batch, max_dec, max_tokens, max_ctx)
        self.dec_grid = [b for b in DECODE_BATCH_GRID if b < max_dec] + [min(b for b in DECODE_BATCH_GRID + [max_dec]
                                                                              if b >= max_dec)]
        # KV slots the points touch (packed from slot 0, per layer): attention sweeps on the
        # first stage, whole steps on every stage.
        stage_need = max(p * (k + c + bs) + b * (ctx + bs) for c, p, k, b, ctx in self.stage_shapes) + 4 * bs
        attn_need = max(max_ctx + max_tokens + 2 * bs, max(self.dec_grid) * (max_ctx + bs)) + 4 * bs

        # ---- the pipeline's stages, with their real layer counts ----------------------------
        counts = layer_counts(arch, pp, cfg.parallel.partition)
        ranges = layer_ranges(counts)
        kinds = [("only" if pp == 1 else "first", ranges[0])]
        if pp > 2:
            kinds.append(("middle", max(ranges[1:-1], key=lambda r: r[1] - r[0])))
        if pp > 1:
            kinds.append(("last", ranges[-1]))
        self.stages: dict[str, StageExecutor] = {
            kind: _stage_executor(cfg, arch, device, start, end,
                                  -(-max(stage_need, attn_need if kind in ("first", "only") else 0) // bs))
            for kind, (start, end) in kinds}
        first = self.stages["only" if pp == 1 else "first"]
        last = self.stages["only" if pp == 1 else "last"]
        self._flush_buf = torch.ones(2 * _l3_bytes() // 4, dtype=torch.float32) if device.type == "cpu" else None
        self._build_points(first, last)

    def flush(self) -> None:
        if self._flush_buf is not None:
            self._flush_buf.sum()

    def rand(self, *shape):
        return torch.randn(*shape, device=self.device, dtype=self.dtype)

    def _build_points(self, first: StageExecutor, last: StageExecutor) -> None:
        arch, cfg, device, bs = self.arch, self.cfg, self.device, self.bs
        h = arch.hidden_size
        layers = list(first.model.layers)
        nl = len(layers)
        kv = first.kv
        add = self.points.append
        rand = self.rand

        # ---- linear layers, in execution order over the stage's layers ----------------------
        tokens = sorted({t for t in TOKEN_GRID if t <= self.max_tokens}
                        | {cfg.scheduler.chunk_size, cfg.scheduler.chunk_size + 1})

        def linear_setup(t):
            x1, x2, x3 = rand(t, h), rand(t, arch.q_size), rand(t, arch.intermediate_size)

            def fn():
                for lay in layers:
                    lay.qkv_proj(x1)
                    lay.o_proj(x2)
                    lay.gate_up_proj(x1)
                    lay.down_proj(x3)
            return fn

        for t in tokens:
            add(_Point("linear", {"tokens": t, "layers": nl}, lambda t=t: linear_setup(t), per=nl,
                       rounds=1 if t > WHOLE_PROMPT_TOKENS else 0))
        # ---- embedding, LM head and sampling ----------------------------------------------
        embed_model = first.model
        for t in [t for t in tokens if t in (1, 8, 32, 128, 512, 2048, 8192, cfg.scheduler.chunk_size)]:
            add(_Point("embed", {"tokens": t}, lambda t=t: (
                lambda ids=torch.randint(0, arch.vocab_size, (t,), device=device): embed_model.embed_tokens(ids)),
                flush=True))
        head = last.model
        sampler = Sampler(cfg.sampling)
        for n in [n for n in ROWS_GRID if n <= max(self.per_batch, 8) * 2]:
            add(_Point("lm_head", {"tokens": n}, lambda n=n: (
                lambda x=rand(n, h): head.lm_head(head.norm(x)).float()), flush=True))
            add(_Point("sample", {"tokens": n}, lambda n=n: (
                lambda lg=head.lm_head(head.norm(rand(n, h))).float(), keys=[(i, 0) for i in range(n)]:
                sampler(lg, keys))))

        # ---- attention, every layer of the stage over its own KV pool ----------------------
        def attn_setup(specs, q_rows):
            meta = build_attention_metadata(specs, bs, device, arch.sliding_window)
            q = rand(q_rows, arch.num_heads, arch.head_dim)

            def fn():
                for i, lay in enumerate(layers):
                    lay._attention(q, meta, kv.k[i], kv.v[i])
            return fn

        def prefill_specs(c, k):
            return [PartSpec(k, c, _contiguous_tables([k + c], bs)[0], False)]

        def decode_specs(b, ctx):
            return [PartSpec(ctx - 1, 1, t, True) for t in _contiguous_tables([ctx] * b, bs)]

        for c in [c for c in CHUNK_GRID if c <= self.max_tokens]:
            for k in [k for k in CACHED_GRID if k + c <= self.max_ctx]:
                add(_Point("attn_prefill", {"chunk": c, "cached": k, "tokens": c, "layers": nl},
                           lambda c=c, k=k: attn_setup(prefill_specs(c, k), c), per=nl))
        for b in self.dec_grid:
            for ctx in [x for x in CONTEXT_GRID if x <= self.max_ctx]:
                add(_Point("attn_decode", {"batch": b, "context": ctx, "tokens": b, "layers": nl},
                           lambda b=b, ctx=ctx: attn_setup(decode_specs(b, ctx), b), per=nl))

        # ---- per-batch overhead: metadata + rotary gather -------------------------------
        def overhead_setup(specs):
            def step():
                m = build_attention_metadata(specs, bs, device, arch.sliding_window)
                embed_model.rope_cos[m.positions].to(self.dtype)
                embed_model.rope_sin[m.positions].to(self.dtype)
            return step

        for parts in [p for p in [1, 2, 4, 8, 16, 32, 64] if p <= max(self.per_batch, 4) * 2]:
            for chunk in sorted({0, min(128, self.max_tokens), min(512, self.max_tokens)}):
                ctx = min(256, self.max_ctx - chunk) if self.max_ctx > chunk else 1
                specs = _mixed_specs(chunk, 1, 0, parts - (1 if chunk else 0), ctx, True, bs)
                if specs:
                    add(_Point("overhead", {"batch": len(specs), "tokens": sum(x.num_tokens for x in specs)},
                               lambda specs=specs: overhead_setup(specs)))

        # ---- whole stage steps (the runtime's StageExecutor.step) -------------------------
        def stage_setup(ex: StageExecutor, c, p, k, b, ctx):
            parts = _mixed_parts(c, p, k, b, ctx, bs)
            hidden = None if ex.is_first else rand(sum(x.num_tokens for x in parts), h)
            return lambda: ex.step(parts, hidden)

        for kind, ex in self.stages.items():
            n = len(ex.model.layers)
            for c, p, k, b, ctx in self.stage_shapes:
                big = c * p + b > WHOLE_PROMPT_TOKENS
                add(_Point("stage", {"stage": kind, "layers": n, "chunk": c, "prefills": p, "cached": k,
                                     "batch": b, "context": ctx, "tokens": c * p + b},
                           lambda ex=ex, c=c, p=p, k=k, b=b, ctx=ctx: stage_setup(ex, c, p, k, b, ctx),
                           calls=1 if big else 2, settle=not big))


def _mixed_specs(chunk, prefills, cached, decodes, ctx, logits, bs) -> list[PartSpec]:
    """``prefills`` chunks of ``chunk`` tokens over ``cached`` ones, then ``decodes`` decodes at ``ctx``."""
    np_ = prefills if chunk else 0
    tables = _contiguous_tables([cached + chunk] * np_ + [ctx] * decodes, bs)
    return ([PartSpec(cached, chunk, tables[i], logits) for i in range(np_)]
            + [PartSpec(ctx - 1, 1, t, logits) for t in tables[np_:]])


def _mixed_parts(chunk, prefills, cached, decodes, ctx, bs) -> list[ScheduledPart]:
    """The same batch as the scheduler hands it to a stage (every part samples)."""
    specs = _mixed_specs(chunk, prefills, cached, decodes, ctx, True, bs)
    return [ScheduledPart(seq_index=i, start=s.start, token_ids=[1] * s.num_tokens, block_table=s.block_table,
                          is_prefill=s.num_tokens > 1, sample=True, output_index=0) for i, s in enumerate(specs)]


def _stage_shapes(chunk: int, per_batch: int, max_dec: int, max_tokens: int, max_ctx: int
                  ) -> list[tuple[int, int, int, int, int]]:
    """(chunk, prefill parts, cached, decodes, decode context) of the whole-stage measurements:
    decode-only, prefill-only (one or several prompts) and hybrid micro-batches around the
    configured chunk size and batch size, and the shapes of schedulers that do not chunk
    (Orca, vLLM, FasterTransformer): whole prompts, a micro-batch full of them, a whole prompt
    next to the other requests' decodes."""
    d = max(1, min(per_batch, max_dec))
    whole = max(16, min(256, max_ctx // 4))  # a typical whole prompt
    cand = [(0, 0, 0, 1, 128), (0, 0, 0, 3, 384), (0, 0, 0, max(2, d // 2), 256), (0, 0, 0, d, 128),
            (0, 0, 0, d, 512), (0, 0, 0, min(max_dec, 2 * d), 320),
            (chunk, 1, 0, 0, 0), (chunk, 1, 256, 0, 0), (max(8, chunk // 4), 1, 384, 0, 0),
            (chunk, 4, 0, 0, 0), (2 * chunk, 2, 0, 0, 0),
            (chunk - d + 1, 1, 256, d - 1, 384), (chunk, 1, 128, 3, 256), (max(8, chunk // 4), 1, 512, d - 2, 256),
            (max(8, chunk // 2), 1, 0, d // 2, 448), (max(8, chunk - 2), 1, 640, 2, 200), (chunk, 1, 0, d, 160),
            (2 * chunk, 1, 0, d, 300), (chunk, 2, 64, 6, 256),
            (whole, per_batch, 0, 0, 0), (whole, max(2, per_batch // 2), 0, 0, 0),
            (7 * whole // 4, 1, 0, d - 1, 2 * whole), (whole, 4, 0, d - 4, 5 * whole // 4)]
    out = []
    for c, p, k, b, ctx in cand:
        b = max(0, min(b, max_dec))
        if c == 0 and b == 0:
            continue
        if c * p + b > max_tokens or k + c > max_ctx or ctx > max_ctx or (p and (c < 2 or p > per_batch)):
            continue
        if (c, p, k, b, ctx) not in out:
            out.append((c, p, k, b, ctx))
    return out


# ---- co-running stages -------------------------------------------------------------------


class _Corunners:
    """Processes that build the same :class:`_Bench` and run whatever point the profiler is
    timing, in a loop, so every measurement sees the contention of the other pipeline stages
    on this host (cores, caches, memory bandwidth)."""

    def __init__(self, cfg: RunConfig, n: int, threads: int):
        import subprocess

        self.procs = []
        self.unacked = 0
        if n <= 0:
            return
        arg = json.dumps({"threads": threads, "cfg": dataclasses.asdict(cfg)})
        self.procs = [subprocess.Popen([sys.executable, "-m", "pp_sarathi.sim.profile", "corunner", arg],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True) for _ in range(n)]

    def wait_ready(self) -> None:
        for p in self.procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError("a co-running profile process failed to start")

    def run(self, i: int, wait: bool = True) -> None:
        """Every co-runner switches to point ``i`` (``-1``: idle) once its current call is done;
        with ``wait``, returns when they have (else a co-runner may still finish a call of the
        previous, similar point while the next one is timed)."""
        for p in self.procs:
            p.stdin.write(f"{i}\n")
            p.stdin.flush()
        self.unacked += 1
        if wait:
            for p in self.procs:
                for _ in range(self.unacked):
                    p.stdout.readline()
            self.unacked = 0

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def _corunner_main(a: dict) -> None:
    from .fidelity import run_config_from_dict

    cfg = run_config_from_dict(a["cfg"])
    prepare_host(1, cfg.parallel, threads=a["threads"])
    fd = sys.stdin.fileno()
    with torch.inference_mode():
        bench = _Bench(cfg, torch.device("cpu"))
        print("ready", flush=True)
        fn, flush, buf = None, None, b""
        while True:
            # Raw reads (not sys.stdin's buffer, which select() cannot see): every queued command
            # is taken before the next call.
            if fn is None or select.select([fd], [], [], 0)[0]:
                chunk = os.read(fd, 4096)
                if not chunk:
                    return
                buf += chunk
                *lines, buf = buf.split(b"\n")
                if lines:  # only the newest command matters
                    i = int(lines[-1])
                    fn = bench.points[i].setup() if i >= 0 else None
                    flush = bench.flush if i >= 0 and bench.points[i].flush else None
                    print("ok\n" * len(lines), end="", flush=True)
                continue
            if flush is not None:
                flush()
            fn()


# ---- the profile ---------------------------------------------------------------------------


def run_profile(cfg: RunConfig, out_csv: Path | str) -> Path:
    """Profile ``cfg.model``'s shape on ``cfg.device`` and write ``out_csv``; returns its path."""
    from .simulate import sim_arch

    out_csv = Path(out_csv)
    arch = sim_arch(cfg)
    device = pick_device(cfg)
    sc = cfg.sim
    threads, corunners = profile_threads_and_corunners(cfg, device)
    old_threads = torch.get_num_threads()
    prepare_host(1, cfg.parallel, threads=threads)  # the threads and allocator of a stage process
    t_start = time.perf_counter()
    common = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              f"cpu x{threads}" + (f" +{corunners} co-running stages" if corunners else ""),
              "dtype": cfg.model.dtype, "threads": threads, "hidden_size": arch.hidden_size,
              "intermediate_size": arch.intermediate_size, "num_heads": arch.num_heads,
              "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "vocab_size": arch.vocab_size,
              "cores": host_cores() if device.type == "cpu" else 0, "torch": torch.__version__}
    rows: list[dict] = []

    def add(op, ts: list[float], **kw):
        row = {"op": op, "tokens": 0, "chunk": 0, "cached": 0, "batch": 0, "context": 0, "bytes": 0,
               "prefills": 0, "layers": 0, "stage": "", "jitter": "", "seconds": f"{statistics.median(ts):.9g}",
               "seconds_mean": f"{statistics.fmean(ts):.9g}", "seconds_min": f"{min(ts):.9g}",
               "repeats": len(ts), **common}
        row.update(kw)
        rows.append(row)

    rounds = max(1, sc.profile_repeats)
    co = _Corunners(cfg, corunners, threads)
    try:
        with torch.inference_mode():
            bench = _Bench(cfg, device)
            co.wait_ready()
            log.info("profiling %d points x %d rounds (%s, %d thread(s), %d co-running stage(s)); "
                     "stages: %s", len(bench.points), rounds, device, threads, len(co.procs),
                     ", ".join(f"{k} {len(e.model.layers)} layers" for k, e in bench.stages.items()))
            # Whole sweeps in rounds, so that a burst of background load hits one round of every
            # point rather than every repeat of a few points.
            timer = _Timer(device)
            samples: list[list[list[float]]] = [[] for _ in bench.points]
            for rnd in range(rounds):
                for i, pt in enumerate(bench.points):
                    if pt.rounds and rnd >= pt.rounds:
                        continue
                    co.run(i, wait=pt.settle or i == 0 or bench.points[i - 1].op != pt.op)
                    fn = pt.setup()
                    flush = bench.flush if pt.flush else None
                    if rnd == 0 and i == 0:  # warm-up (a first call per point is one of >= 3 rounds: the median drops it)
                        fn()
                    samples[i].append([t / pt.per for t in timer.sample(fn, flush, min_calls=pt.calls)])
                    del fn
                log.info("profile round %d/%d done after %.0f s", rnd + 1, rounds, time.perf_counter() - t_start)
            for pt, per_round in zip(bench.points, samples):
                add(pt.op, [t for ts in per_round for t in ts], jitter=f"{_within_round_log_sd(per_round):.4g}",
                    **pt.cols)
            del bench
    finally:
        torch.set_num_threads(old_threads)
        co.stop()
    if sc.profile_p2p:
        try:
            for nbytes, ts in measure_p2p(P2P_BYTES, max(3, sc.profile_repeats)):
                add("p2p", ts, bytes=nbytes, device="cpu gloo (2 local processes)")
        except Exception as exc:  # pragma: no cover - environment specific
            log.warning("p2p profile skipped: %s", exc)
        try:
            dev = f"cpu gloo ({max(2, cfg.parallel.pp)} local processes, runtime driver + stage loops)"
            for key, ivs in measure_link(cfg).items():
                c, d = (int(x) for x in key.split(","))
                for name, ts in ivs.items():
                    if ts:
                        add(f"link_{name}", ts, tokens=c + d, batch=(1 if c else 0) + d, chunk=c, device=dev)
        except Exception as exc:  # pragma: no cover - environment specific
            log.warning("link profile skipped: %s", exc)
    write_profile(rows, out_csv)
    log.info("profiled %d points in %.1f s -> %s", len(rows), time.perf_counter() - t_start, out_csv)
    try:  # the cost model's error on held-out points, next to the CSV
        errs = holdout_errors(out_csv)
        err_path = out_csv.with_name(out_csv.stem + "_errors.json")
        err_path.write_text(json.dumps(errs, indent=2))
        st = errs.get("stage") or {}
        log.info("cost model held-out error: median %.1f%%, mean %.1f%% over %d points; whole stage steps: "
                 "median %.1f%%, max %.1f%% over %d -> %s",
                 100 * errs["all"]["median_abs_rel_err"], 100 * errs["all"]["mean_abs_rel_err"],
                 errs["all"]["held_out"], 100 * (st.get("median_abs_rel_err") or 0),
                 100 * (st.get("max_abs_rel_err") or 0), st.get("held_out", 0), err_path)
    except Exception as exc:  # pragma: no cover - a partial profile still is a profile
        log.warning("could not evaluate the cost model on held-out points: %s", exc)
    return out_csv


def _within_round_log_sd(per_round: list[list[float]]) -> float:
    """Standard deviation of ln(seconds) among the consecutive calls of one round, pooled over
    rounds: how much one step differs from the next (slow drift between rounds excluded)."""
    import math

    num, dof = 0.0, 0
    for ts in per_round:
        if len(ts) >= 2:
            logs = [math.log(max(t, 1e-12)) for t in ts]
            m = sum(logs) / len(logs)
            num += sum((x - m) ** 2 for x in logs)
            dof += len(logs) - 1
    return math.sqrt(num / dof) if dof else 0.0


# ---- the runtime's transport and driver loop between stage processes -------------------------

LINK_SHAPES = [(0, 1), (0, 13), (60, 4), (128, 13), (0, 28), (512, 0)]  # (prefill chunk, decodes) per micro-batch


class _LinkStage:
    """A real pipeline stage (random weights, the rank's own layers of the configured model) for
    :func:`measure_link`, so that the transport is timed next to the compute it really shares
    the host with. To see both ways a stage takes in its input, the first stage keeps its core
    busy for half a step longer on every third micro-batch (the next stage waits for it: ``hop``)
    and the last stage on another third (the data is already there when it asks: ``recv``)."""

    def __init__(self, cfg: RunConfig, arch, rank: int, world: int, blocks: int):
        start, end = layer_ranges(layer_counts(arch, world, cfg.parallel.partition))[rank]
        self.ex = _stage_executor(cfg, arch, torch.device("cpu"), start, end, blocks)
        self.is_first, self.is_last = self.ex.is_first, self.ex.is_last
        self.calls = 0
        self._spin = torch.randn(128, 128)

    def step(self, parts, hidden=None):
        t0 = time.perf_counter()
        out = self.ex.step(parts, hidden)
        self.calls += 1
        if (self.is_first and self.calls % 3 == 1) or (self.is_last and self.calls % 3 == 0):
            end = time.perf_counter() + 0.5 * (time.perf_counter() - t0)
            while time.perf_counter() < end:
                torch.mm(self._spin, self._spin)
        return out


class _ScriptedPlans:
    """A scheduler that hands out ``n`` copies of one micro-batch."""

    def __init__(self, parts, n: int):
        self.parts, self.n, self.next, self.done = parts, n, 0, 0

    @property
    def has_unfinished(self) -> bool:
        return self.done < self.n

    def schedule(self, now: float):
        from ..scheduler.batch import BatchPlan

        if self.next >= self.n:
            return None
        self.next += 1
        return BatchPlan(id=self.next - 1, parts=self.parts, scheduled_at=now)

    def on_batch_done(self, plan, results, now):
        self.done += 1
        return []

    def next_arrival(self):
        return None


def _link_intervals(records, batches, world: int, skip: int = 3) -> dict[str, list[float]]:
    """Per micro-batch intervals of a pipeline run (real or :func:`measure_link`'s)."""
    R = {(r.stage, r.batch_id): r for r in records}
    done = {b.batch_id: b.done_at for b in batches}
    ids = sorted(done)[skip:]
    out: dict[str, list[float]] = {"send_first": [], "send_mid": [], "send_last": [], "recv": [], "hop": [], "ret": []}
    last = world - 1
    for k in ids:
        for s in range(world):
            r = R.get((s, k))
            if r is None:
                continue
            key = "send_first" if s == 0 else ("send_last" if s == last else "send_mid")
            out[key].append(r.send_end - r.compute_end)
            if s > 0:
                up = R[(s - 1, k)]
                if up.send_end <= r.recv_start:  # the data was sent before this stage asked for it
                    out["recv"].append(r.recv_end - r.recv_start)
                elif r.recv_start <= up.compute_end:  # this stage waited for the upstream compute
                    out["hop"].append(r.compute_start - up.compute_end)
        newest = R.get((0, k + world - 1))
        if newest is not None and newest.send_end <= R[(last, k)].compute_end:  # the driver waited in collect
            out["ret"].append(done[k] - R[(last, k)].compute_end)
    return out


def _clock_offsets(clock, rank: int, world: int, pings: int = 8) -> list[float]:
    """On rank 0: how far each rank's clock is ahead of rank 0's (NTP-style: the ping with the
    shortest round trip, assuming symmetric halves); [] elsewhere. Every rank takes part."""
    import torch.distributed as dist

    out = [0.0] * world
    buf = torch.zeros(1, dtype=torch.float64)
    for peer in range(1, world):
        best = None
        for _ in range(pings):
            if rank == 0:
                t0 = clock.now()
                dist.send(buf, peer)
                dist.recv(buf, peer)
                t2 = clock.now()
                if best is None or t2 - t0 < best[0]:
                    best = (t2 - t0, float(buf[0]) - (t0 + t2) / 2)
            elif rank == peer:
                dist.recv(buf, 0)
                buf[0] = clock.now()
                dist.send(buf, 0)
        if rank == 0:
            out[peer] = best[1]
    return out


def _shifted(r, dt: float):
    from ..metrics.records import StageRecord

    return StageRecord(r.stage, r.batch_id, r.recv_start + dt, r.recv_end + dt, r.compute_start + dt,
                       r.compute_end + dt, r.send_start + dt, r.send_end + dt)


def _link_worker(rank: int, a: dict) -> dict | None:
    import torch.distributed as dist

    from ..metrics.timing import StageClock
    from ..runtime.driver import drive
    from ..runtime.pipeline import DriverPipeline, worker_loop
    from ..runtime.transport import StageLink

    from .fidelity import run_config_from_dict
    from .simulate import sim_arch

    cfg = run_config_from_dict(a["cfg"])
    prepare_host(1, cfg.parallel, threads=1)
    world, bs = a["world"], cfg.cache.block_size
    arch = sim_arch(cfg)
    h, dtype = arch.hidden_size, parse_dtype(cfg.model.dtype)
    top = arch.max_position_embeddings
    shapes = [_mixed_parts(c, 1, min(64, top - c) if c else 0, d, min(300, top), bs) for c, d in a["shapes"]]
    blocks = max(sum(-(-(p.start + p.num_tokens) // bs) for p in parts) for parts in shapes) + 4
    ex = _LinkStage(cfg, arch, rank, world, blocks)
    dist.init_process_group("gloo", init_method=f"file://{a['init_file']}", rank=rank, world_size=world)
    result = {}
    try:
        for (c, d), parts in zip(a["shapes"], shapes):
            ex.calls = 0
            link = StageLink(rank, world, h, dtype, torch.device("cpu"))
            dist.barrier()
            clock = StageClock("cpu")
            offsets = _clock_offsets(clock, rank, world)
            if rank != 0:
                recs = worker_loop(ex, link, clock)
                dist.gather_object(recs, None, dst=0)
                continue
            pipe = DriverPipeline(ex, link, clock)
            batches = drive(_ScriptedPlans(parts, a["batches"]), pipe, clock)
            link.send_stop()
            link.flush()
            gathered: list = [None] * world
            dist.gather_object(pipe.records, gathered, dst=0)
            records = [_shifted(r, -offsets[r.stage]) for part in gathered for r in (part or [])]
            result[f"{c},{d}"] = _link_intervals(records, batches, world)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return result if rank == 0 else None


def measure_link(cfg: RunConfig, shapes=LINK_SHAPES, batches: int = 36, timeout_s: float = 300.0) -> dict:
    """Run the runtime's own driver loop (``drive`` + ``DriverPipeline``) and stage loop
    (``worker_loop``) with its gloo transport over ``parallel.pp`` local processes whose stages
    really compute (:class:`_LinkStage`): {"chunk,decodes": {interval: [seconds]}} for each
    micro-batch shape, intervals as in :func:`_link_intervals`."""
    world = max(2, cfg.parallel.pp)
    with tempfile.TemporaryDirectory() as d:
        arg = {"init_file": str(Path(d) / "pg"), "world": world, "cfg": dataclasses.asdict(cfg),
               "shapes": [list(x) for x in shapes], "batches": batches}
        return _run_workers("link-worker", world, arg, timeout_s)


# ---- point-to-point over gloo -----------------------------------------------------------


def _p2p_worker(rank: int, init_file: str, sizes: list[int], repeats: int) -> list[tuple[int, list[float]]]:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    out = []
    try:
        peer = 1 - rank
        for n in sizes:
            buf = torch.zeros(max(1, n), dtype=torch.uint8)
            rtts = []
            reps = repeats * 4 if n < (1 << 20) else repeats
            for i in range(reps + 5):
                if rank == 0:
                    t0 = time.perf_counter()
                    dist.send(buf, peer)
                    dist.recv(buf, peer)
                    if i >= 5:
                        rtts.append(time.perf_counter() - t0)
                else:
                    dist.recv(buf, peer)
                    dist.send(buf, peer)
            if rank == 0:
                out.append((n, [t / 2 for t in rtts]))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return out


def measure_p2p(sizes: list[int], repeats: int = 5, timeout_s: float = 120.0) -> list[tuple[int, list[float]]]:
    """(bytes, one-way times) of gloo messages between two fresh local processes (ping-pong / 2)."""
    with tempfile.TemporaryDirectory() as d:
        arg = {"init_file": str(Path(d) / "pg"), "sizes": sizes, "repeats": repeats}
        return [tuple(x) for x in _run_workers("p2p-worker", 2, arg, timeout_s)]


def _run_workers(kind: str, world: int, arg: dict, timeout_s: float):
    """Run ``world`` ``python -m pp_sarathi.sim.profile KIND RANK ARG`` processes; returns the
    JSON of rank 0's last output line. Plain subprocesses, so this works whatever the caller's
    main module is."""
    import subprocess

    procs = [subprocess.Popen([sys.executable, "-m", "pp_sarathi.sim.profile", kind, str(r), json.dumps(arg)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(world)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout_s)
            if p.returncode != 0:
                raise RuntimeError(f"{kind} failed: {err.strip()[-500:]}")
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return json.loads(outs[0].strip().splitlines()[-1])


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "p2p-worker":
        a = json.loads(sys.argv[3])
        res = _p2p_worker(int(sys.argv[2]), a["init_file"], a["sizes"], a["repeats"])
        print(json.dumps(res))
    elif len(sys.argv) == 4 and sys.argv[1] == "link-worker":
        res = _link_worker(int(sys.argv[2]), json.loads(sys.argv[3]))
        if res is not None:
            print(json.dumps(res))
    elif len(sys.argv) == 3 and sys.argv[1] == "corunner":
        _corunner_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m pp_sarathi.sim.profile p2p-worker RANK JSON | corunner JSON")
