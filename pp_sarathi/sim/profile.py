"""Measure per-operation costs of the configured model shape on this device -> CSV.

The operations are the runtime's own modules and functions with random weights
(pp_sarathi/model/llama.py ``DecoderLayer`` and ``StageModel``, kv_cache.py
``build_attention_metadata``, runtime/sampler.py ``Sampler``), so the profile measures what
a stage executes:

=================  ==========================  =====================================
op                 swept over                  what runs
=================  ==========================  =====================================
linear_qkv/o/      tokens                      ``layer.qkv_proj`` ... ``layer.down_proj``
gate_up/down
attn_prefill       chunk, cached               ``layer._attention`` for one chunk over cached KV
attn_decode        batch, context              ``layer._attention`` for ``batch`` decodes
embed              tokens                      ``model.embed_tokens``
lm_head            tokens (= sampled rows)     ``model.lm_head(model.norm(x)).float()``
sample             tokens (= sampled rows)     ``Sampler(cfg.sampling)``
overhead           batch (= parts), tokens     ``build_attention_metadata`` + rotary gather
layer              chunk, cached, batch,       a whole ``DecoderLayer.forward`` on a mixed
                   context                     batch (validates the additive model)
p2p                bytes                       gloo send/recv between two local processes
                                               (ping-pong / 2), as the transport sends
=================  ==========================  =====================================

Every row also carries device, dtype, threads and the model shape.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..model.kv_cache import PartSpec, build_attention_metadata
from ..model.llama import StageModel
from ..model.loader import parse_dtype
from ..runtime.sampler import Sampler
from ..runtime.setup import pick_device
from .costmodel import holdout_errors, write_profile

log = logging.getLogger("pp_sarathi")

TOKEN_GRID = [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 160, 192, 256, 320, 384, 512, 640, 768, 1024,
              1536, 2048, 3072, 4096, 6144, 8192]
CHUNK_GRID = [8, 16, 32, 64, 128, 256, 384, 512, 768, 1024, 2048]
CACHED_GRID = [0, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096, 8192]
DECODE_BATCH_GRID = [1, 2, 4, 8, 16, 32, 64]
CONTEXT_GRID = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
ROWS_GRID = [1, 2, 4, 8, 16, 32, 64, 128]
P2P_BYTES = [16, 256, 4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]


class _Timer:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def _sync(self):
        if self.cuda:
            torch.cuda.synchronize()

    def _once(self, fn) -> float:
        self._sync()
        t0 = time.perf_counter()
        fn()
        self._sync()
        return time.perf_counter() - t0

    def sample(self, fn, budget_s: float = 0.01, max_calls: int = 25) -> list[float]:
        """Seconds of one call of ``fn``, or of as many calls as fit ``budget_s`` (up to ``max_calls``)."""
        first = self._once(fn)
        n = min(max_calls, int(budget_s / max(first, 1e-7)))
        return [first] + [self._once(fn) for _ in range(n)]


def _random_stage(arch, dtype: torch.dtype, device: torch.device) -> StageModel:
    """A one-layer first+last stage of ``arch``'s shape, random weights, built on ``device``."""
    one = dataclasses.replace(arch, num_layers=1)
    with torch.device("meta"):
        model = StageModel(one, 0, 1)
    model = model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=gen)
    model = model.to(dtype)
    model.reset_rope()
    return model.eval()


def _contiguous_tables(lengths: list[int], block_size: int) -> list[list[int]]:
    tables, nxt = [], 0
    for n in lengths:
        nb = -(-n // block_size)
        tables.append(list(range(nxt, nxt + nb)))
        nxt += nb
    return tables


def run_profile(cfg: RunConfig, out_csv: Path | str) -> Path:
    """Profile ``cfg.model``'s shape on ``cfg.device`` and write ``out_csv``; returns its path."""
    from .simulate import sim_arch

    out_csv = Path(out_csv)
    arch = sim_arch(cfg)
    device = pick_device(cfg)
    dtype = parse_dtype(cfg.model.dtype)
    sc = cfg.sim
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = sc.profile_threads or max(1, cores // max(1, cfg.parallel.pp))
    corunners = sc.profile_corunners
    if corunners < 0:  # auto: the other stages of a pipeline on this host compute at the same time
        corunners = min(cfg.parallel.pp, max(1, cores // threads)) - 1 if device.type == "cpu" else 0
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    t_start = time.perf_counter()
    max_tokens = max(sc.profile_max_tokens, cfg.scheduler.chunk_size + 1)
    max_ctx = min(sc.profile_max_context, arch.max_position_embeddings)
    per_batch = max(1, -(-cfg.scheduler.max_batch_size // max(1, cfg.parallel.pp)))
    common = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else
              f"cpu x{threads}" + (f" +{corunners} co-running stages" if corunners else ""),
              "dtype": cfg.model.dtype, "threads": threads, "hidden_size": arch.hidden_size,
              "intermediate_size": arch.intermediate_size, "num_heads": arch.num_heads,
              "num_kv_heads": arch.num_kv_heads, "head_dim": arch.head_dim, "vocab_size": arch.vocab_size,
              "torch": torch.__version__}
    rows: list[dict] = []
    # (op, columns, setup): setup() builds the inputs and returns the call to time.
    points: list[tuple[str, dict, object]] = []

    def add(op, seconds, calls, seconds_min=None, **kw):
        row = {"op": op, "tokens": 0, "chunk": 0, "cached": 0, "batch": 0, "context": 0, "bytes": 0,
               "seconds": f"{seconds:.9g}", "seconds_min": f"{(seconds if seconds_min is None else seconds_min):.9g}",
               "repeats": calls, **common}
        row.update(kw)
        rows.append(row)

    rounds = max(1, sc.profile_repeats)
    co: list = []
    try:
        co = start_corunners(cfg, corunners, threads)
        with torch.inference_mode():
            model = _random_stage(arch, dtype, device)
            layer = model.layers[0]
            h = arch.hidden_size
            bs = cfg.cache.block_size
            max_dec_batch = max(b for b in DECODE_BATCH_GRID if b <= max(per_batch, 4) * 2)
            layer_pts = _layer_points(max_tokens, max_ctx, per_batch)
            slots = max([max_ctx + max_tokens, max_dec_batch * (max_ctx + bs)]
                        + [(k + c + bs) + b * (ctx + bs) for c, k, b, ctx in layer_pts]) + 4 * bs
            kv = model.new_kv_cache(-(-slots // bs), bs)
            k_pool, v_pool = kv.k[0], kv.v[0]
            k_pool.normal_()
            v_pool.normal_()

            def rand(*shape):
                return torch.randn(*shape, device=device, dtype=dtype)

            # ---- linear ops, embedding ------------------------------------------------
            tokens = sorted({t for t in TOKEN_GRID if t <= max_tokens} | {cfg.scheduler.chunk_size,
                                                                          cfg.scheduler.chunk_size + 1})
            for t in tokens:
                for op, mod, width in (("linear_qkv", layer.qkv_proj, h), ("linear_o", layer.o_proj, arch.q_size),
                                       ("linear_gate_up", layer.gate_up_proj, h),
                                       ("linear_down", layer.down_proj, arch.intermediate_size)):
                    points.append((op, {"tokens": t},
                                   lambda mod=mod, t=t, width=width: (lambda x=rand(t, width): mod(x))))
                points.append(("embed", {"tokens": t}, lambda t=t: (
                    lambda ids=torch.randint(0, arch.vocab_size, (t,), device=device): model.embed_tokens(ids))))
            # ---- LM head and sampling -------------------------------------------------
            sampler = Sampler(cfg.sampling)
            for n in [n for n in ROWS_GRID if n <= max(per_batch, 8) * 2]:
                points.append(("lm_head", {"tokens": n},
                               lambda n=n: (lambda x=rand(n, h): model.lm_head(model.norm(x)).float())))
                points.append(("sample", {"tokens": n}, lambda n=n: (
                    lambda lg=model.lm_head(model.norm(rand(n, h))).float(), keys=[(i, 0) for i in range(n)]:
                    sampler(lg, keys))))
            # ---- attention --------------------------------------------------------------

            def prefill_setup(c, k):
                meta = build_attention_metadata([PartSpec(k, c, _contiguous_tables([k + c], bs)[0], False)], bs,
                                                device, arch.sliding_window)
                q = rand(c, arch.num_heads, arch.head_dim)
                return lambda: layer._attention(q, meta, k_pool, v_pool)

            def decode_setup(b, ctx):
                tables = _contiguous_tables([ctx] * b, bs)
                meta = build_attention_metadata([PartSpec(ctx - 1, 1, t, True) for t in tables], bs, device,
                                                arch.sliding_window)
                q = rand(b, arch.num_heads, arch.head_dim)
                return lambda: layer._attention(q, meta, k_pool, v_pool)

            for c in [c for c in CHUNK_GRID if c <= max_tokens]:
                for k in [k for k in CACHED_GRID if k + c <= max_ctx]:
                    points.append(("attn_prefill", {"chunk": c, "cached": k, "tokens": c},
                                   lambda c=c, k=k: prefill_setup(c, k)))
            for b in [b for b in DECODE_BATCH_GRID if b <= max_dec_batch]:
                for ctx in [x for x in CONTEXT_GRID if x <= max_ctx]:
                    points.append(("attn_decode", {"batch": b, "context": ctx, "tokens": b},
                                   lambda b=b, ctx=ctx: decode_setup(b, ctx)))

            # ---- per-batch overhead: metadata + rotary gather ---------------------------
            def mixed_specs(chunk, cached, decodes, ctx, logits):
                lens = ([cached + chunk] if chunk else []) + [ctx] * decodes
                tables = _contiguous_tables(lens, bs)
                return ([PartSpec(cached, chunk, tables[0], logits)] if chunk else []) + [
                    PartSpec(ctx - 1, 1, t, logits) for t in tables[1 if chunk else 0:]]

            def overhead_setup(specs):
                def step():
                    m = build_attention_metadata(specs, bs, device, arch.sliding_window)
                    model.rope_cos[m.positions].to(dtype)
                    model.rope_sin[m.positions].to(dtype)
                return step

            for parts in [p for p in [1, 2, 4, 8, 16, 32, 64] if p <= max(per_batch, 4) * 2]:
                for chunk in sorted({0, min(128, max_tokens), min(512, max_tokens)}):
                    ctx = min(256, max_ctx - chunk) if max_ctx > chunk else 1
                    specs = mixed_specs(chunk, 0, parts - (1 if chunk else 0), ctx, True)
                    if specs:
                        points.append(("overhead", {"batch": len(specs), "tokens": sum(x.num_tokens for x in specs)},
                                       lambda specs=specs: overhead_setup(specs)))

            # ---- whole layers on mixed batches (checks the additive composition) ----------
            def layer_setup(c, k, b, ctx):
                meta = build_attention_metadata(mixed_specs(c, k, b, ctx, False), bs, device, arch.sliding_window)
                x = rand(c + b, h)
                cos = model.rope_cos[meta.positions].to(dtype)[:, None, :]
                sin = model.rope_sin[meta.positions].to(dtype)[:, None, :]
                return lambda: layer(x, cos, sin, meta, k_pool, v_pool)

            for c, k, b, ctx in layer_pts:
                points.append(("layer", {"chunk": c, "cached": k, "batch": b, "context": ctx, "tokens": c + b},
                               lambda c=c, k=k, b=b, ctx=ctx: layer_setup(c, k, b, ctx)))

            # ---- measure: whole sweeps in rounds, so that a burst of background load hits
            # one round of every point rather than every repeat of a few points.
            timer = _Timer(device)
            samples: list[list[float]] = [[] for _ in points]
            for rnd in range(rounds):
                for i, (_, _, setup) in enumerate(points):
                    fn = setup()
                    if rnd == 0:
                        fn()  # warm-up
                    samples[i].extend(timer.sample(fn))
                    del fn
            for (op, kw, _), ts in zip(points, samples):
                add(op, statistics.fmean(ts), len(ts), min(ts), **kw)
            del kv, model
    finally:
        torch.set_num_threads(old_threads)
        stop_corunners(co)
    if sc.profile_p2p:
        try:
            for nbytes, secs, secs_min in measure_p2p(P2P_BYTES, max(3, sc.profile_repeats)):
                add("p2p", secs, max(3, sc.profile_repeats), secs_min, bytes=nbytes,
                    device="cpu gloo (2 local processes)")
        except Exception as exc:  # pragma: no cover - environment specific
            log.warning("p2p profile skipped: %s", exc)
    write_profile(rows, out_csv)
    log.info("profiled %d points in %.1f s -> %s", len(rows), time.perf_counter() - t_start, out_csv)
    try:  # the cost model's error on held-out points, next to the CSV
        errs = holdout_errors(out_csv)
        err_path = out_csv.with_name(out_csv.stem + "_errors.json")
        err_path.write_text(json.dumps(errs, indent=2))
        log.info("cost model held-out error: median %.1f%%, mean %.1f%% over %d points -> %s",
                 100 * errs["all"]["median_abs_rel_err"], 100 * errs["all"]["mean_abs_rel_err"],
                 errs["all"]["held_out"], err_path)
    except Exception as exc:  # pragma: no cover - a partial profile still is a profile
        log.warning("could not evaluate the cost model on held-out points: %s", exc)
    return out_csv


def _layer_points(max_tokens: int, max_ctx: int, per_batch: int) -> list[tuple[int, int, int, int]]:
    """(chunk, cached, decodes, decode context) of whole-layer measurements."""
    pts = []
    for c in (32, 128, 256, 512):
        if c <= max_tokens and c <= max_ctx:
            pts.append((c, 0, 0, 0))
    for b in (1, 4, 16, 32):
        if b <= max(per_batch, 4) * 2:
            for ctx in (128, 512):
                if ctx <= max_ctx:
                    pts.append((0, 0, b, ctx))
    for c, k, b, ctx in ((128, 128, 4, 256), (96, 256, 32, 256), (256, 0, 8, 512), (256, 512, 16, 384),
                         (64, 512, 8, 128), (500, 0, 12, 256), (192, 1024, 24, 1024), (120, 64, 8, 64)):
        if c + b <= max_tokens and k + c <= max_ctx and ctx <= max_ctx and b <= max(per_batch, 4) * 2:
            pts.append((c, k, b, ctx))
    return pts


# ---- co-running stages -------------------------------------------------------------------


def _corunner_main(a: dict) -> None:
    """Loop a decoder layer of the profiled shape on a mixed batch until killed (a busy stage)."""
    from ..config import ModelConfig
    from .simulate import sim_arch

    torch.set_num_threads(a["threads"])
    cfg = RunConfig()
    cfg.model = ModelConfig(**a["model"])
    arch = sim_arch(cfg)
    dtype = parse_dtype(cfg.model.dtype)
    with torch.inference_mode():
        model = _random_stage(arch, dtype, torch.device("cpu"))
        layer = model.layers[0]
        bs = 16
        lens = [256] + [256] * 8
        tables = _contiguous_tables(lens, bs)
        specs = [PartSpec(128, 128, tables[0], False)] + [PartSpec(255, 1, t, False) for t in tables[1:]]
        kv = model.new_kv_cache(sum(len(t) for t in tables) + 1, bs)
        meta = build_attention_metadata(specs, bs, "cpu", arch.sliding_window)
        x = torch.randn(136, arch.hidden_size, dtype=dtype)
        cos = model.rope_cos[meta.positions].to(dtype)[:, None, :]
        sin = model.rope_sin[meta.positions].to(dtype)[:, None, :]
        print("ready", flush=True)
        while True:
            layer(x, cos, sin, meta, kv.k[0], kv.v[0])


def start_corunners(cfg: RunConfig, n: int, threads: int) -> list:
    """``n`` processes that keep a stage of this model busy while the profile is taken, so the
    measured costs include the sharing of cores, caches and memory bandwidth with the other
    stages of a pipeline on the same host (how `run` places stages on a CPU machine)."""
    import json
    import subprocess
    import sys

    if n <= 0:
        return []
    arg = json.dumps({"threads": threads, "model": dataclasses.asdict(cfg.model)})
    procs = [subprocess.Popen([sys.executable, "-m", "pp_sarathi.sim.profile", "corunner", arg],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) for _ in range(n)]
    for p in procs:
        p.stdout.readline()  # "ready" once its layer is built
    return procs


def stop_corunners(procs: list) -> None:
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


# ---- point-to-point over gloo -----------------------------------------------------------


def _p2p_worker(rank: int, init_file: str, sizes: list[int], repeats: int) -> list[tuple[int, float, float]]:
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
                out.append((n, statistics.fmean(rtts) / 2, min(rtts) / 2))
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return out


def measure_p2p(sizes: list[int], repeats: int = 5, timeout_s: float = 120.0) -> list[tuple[int, float, float]]:
    """(bytes, mean, min) one-way gloo message time between two fresh local processes (ping-pong / 2).

    The workers are plain ``python -m pp_sarathi.sim.profile`` subprocesses, so this works
    whatever the caller's main module is."""
    import json
    import subprocess
    import sys

    with tempfile.TemporaryDirectory() as d:
        init_file = str(Path(d) / "pg")
        arg = json.dumps({"init_file": init_file, "sizes": sizes, "repeats": repeats})
        procs = [subprocess.Popen([sys.executable, "-m", "pp_sarathi.sim.profile", "p2p-worker", str(r), arg],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for r in range(2)]
        outs = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=timeout_s)
                if p.returncode != 0:
                    raise RuntimeError(f"p2p worker failed: {err.strip()[-500:]}")
                outs.append(out)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
    return [tuple(x) for x in json.loads(outs[0].strip().splitlines()[-1])]


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "p2p-worker":
        a = json.loads(sys.argv[3])
        res = _p2p_worker(int(sys.argv[2]), a["init_file"], a["sizes"], a["repeats"])
        print(json.dumps(res))
    elif len(sys.argv) == 3 and sys.argv[1] == "corunner":
        _corunner_main(json.loads(sys.argv[2]))
    else:
        sys.exit("usage: python -m pp_sarathi.sim.profile p2p-worker RANK JSON | corunner JSON")
