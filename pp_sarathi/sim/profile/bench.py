"""The stages and measurement points of a profile, and the timer that samples them.

Everything runs the runtime's own code with random weights: the pipeline's stages are built
as real stage executors with the stage's real layer count and a KV cache laid out as the
block manager lays it out.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ...config import RunConfig
from ...model.arch import ModelArch
from ...model.kv_cache import PartSpec, build_attention_metadata
from ...model.loader import parse_dtype
from ...model.random_weights import random_stage_model
from ...model.shapes import dtype_bytes
from ...runtime.executor import StageExecutor
from ...runtime.partition import layer_counts, layer_ranges
from ...runtime.sampler import Sampler
from .points import (CACHED_GRID, CHUNK_GRID, CONTEXT_GRID, DECODE_BATCH_GRID, ROWS_GRID, TOKEN_GRID,
                     WHOLE_PROMPT_TOKENS, Point, contiguous_tables, mixed_parts, mixed_specs, stage_shapes)

STAGE_WEIGHT_BYTES = 3 << 30  # at most this much weight per profiled stage (layers are capped)


class Timer:
    """Wall-clock samples of a call (synchronising the GPU around it)."""

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


def stage_executor(cfg: RunConfig, arch: ModelArch, device: torch.device, start: int, end: int,
                   blocks: int) -> StageExecutor:
    """Layers ``[start, end)`` as a runtime stage with random weights and a random-filled KV pool
    of ``blocks`` blocks. A stage over ``STAGE_WEIGHT_BYTES`` of weights is built with fewer
    layers (the profile rows say how many), keeping the model's last layer when it has it."""
    dtype = parse_dtype(cfg.model.dtype)
    per_layer_bytes = max(1, arch.num_params() // max(1, arch.num_layers)) * dtype_bytes(cfg.model.dtype)
    n = min(end - start, max(1, STAGE_WEIGHT_BYTES // per_layer_bytes))
    start, end = (end - n, end) if end == arch.num_layers else (start, start + n)
    model = random_stage_model(arch, start, end, dtype=dtype, device=device, seed=start)
    kv = model.new_kv_cache(blocks, cfg.cache.block_size)
    with torch.no_grad():
        kv.k.normal_()
        kv.v.normal_()
    return StageExecutor(model, kv, Sampler(cfg.sampling) if model.is_last else None)


def _l3_bytes() -> int:
    """Bytes of the last-level cache (what a flush has to evict)."""
    try:
        txt = Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip().upper()
        mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(txt[-1], 1)
        return int(txt.rstrip("KMG")) * mult
    except Exception:
        return 32 << 20


class Bench:
    """The stages and measurement points of a profile; built identically in the profiling
    process and in every co-running process, so that both can run point ``i``."""

    def __init__(self, cfg: RunConfig, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.arch = arch = ModelArch.from_config(cfg.model)
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
        self.points: list[Point] = []
        self.stage_shapes = stage_shapes(cfg.scheduler.chunk_size, per_batch, max_dec, max_tokens, max_ctx)
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
            kind: stage_executor(cfg, arch, device, start, end,
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
            add(Point("linear", {"tokens": t, "layers": nl}, lambda t=t: linear_setup(t), per=nl,
                       rounds=1 if t > WHOLE_PROMPT_TOKENS else 0))
        # ---- embedding, LM head and sampling ----------------------------------------------
        embed_model = first.model
        for t in [t for t in tokens if t in (1, 8, 32, 128, 512, 2048, 8192, cfg.scheduler.chunk_size)]:
            add(Point("embed", {"tokens": t}, lambda t=t: (
                lambda ids=torch.randint(0, arch.vocab_size, (t,), device=device): embed_model.embed_tokens(ids)),
                flush=True))
        head = last.model
        sampler = Sampler(cfg.sampling)
        for n in [n for n in ROWS_GRID if n <= max(self.per_batch, 8) * 2]:
            add(Point("lm_head", {"tokens": n}, lambda n=n: (
                lambda x=rand(n, h): head.lm_head(head.norm(x)).float()), flush=True))
            add(Point("sample", {"tokens": n}, lambda n=n: (
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
            return [PartSpec(k, c, contiguous_tables([k + c], bs)[0], False)]

        def decode_specs(b, ctx):
            return [PartSpec(ctx - 1, 1, t, True) for t in contiguous_tables([ctx] * b, bs)]

        for c in [c for c in CHUNK_GRID if c <= self.max_tokens]:
            for k in [k for k in CACHED_GRID if k + c <= self.max_ctx]:
                add(Point("attn_prefill", {"chunk": c, "cached": k, "tokens": c, "layers": nl},
                           lambda c=c, k=k: attn_setup(prefill_specs(c, k), c), per=nl))
        for b in self.dec_grid:
            for ctx in [x for x in CONTEXT_GRID if x <= self.max_ctx]:
                add(Point("attn_decode", {"batch": b, "context": ctx, "tokens": b, "layers": nl},
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
                specs = mixed_specs(chunk, 1, 0, parts - (1 if chunk else 0), ctx, True, bs)
                if specs:
                    add(Point("overhead", {"batch": len(specs), "tokens": sum(x.num_tokens for x in specs)},
                               lambda specs=specs: overhead_setup(specs)))

        # ---- whole stage steps (the runtime's StageExecutor.step) -------------------------
        def stage_setup(ex: StageExecutor, c, p, k, b, ctx):
            parts = mixed_parts(c, p, k, b, ctx, bs)
            hidden = None if ex.is_first else rand(sum(x.num_tokens for x in parts), h)
            return lambda: ex.step(parts, hidden)

        for kind, ex in self.stages.items():
            n = len(ex.model.layers)
            for c, p, k, b, ctx in self.stage_shapes:
                big = c * p + b > WHOLE_PROMPT_TOKENS
                add(Point("stage", {"stage": kind, "layers": n, "chunk": c, "prefills": p, "cached": k,
                                     "batch": b, "context": ctx, "tokens": c * p + b},
                           lambda ex=ex, c=c, p=p, k=k, b=b, ctx=ctx: stage_setup(ex, c, p, k, b, ctx),
                           calls=1 if big else 2, settle=not big))
