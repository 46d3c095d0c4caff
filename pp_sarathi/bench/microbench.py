"""``pp-sarathi microbench``: the paper's Table 2 on this device for the configured model.

For each prefill chunk size C and decode batch size B, three batches are timed through the
real StageModel / KVCache / build_attention_metadata path, interleaved round-robin so load
changes on a shared machine hit all three alike:

* S1 prefill-only: one fresh request, a chunk of C tokens;
* S2 decode-only: B requests, each with ``context_len`` cached tokens;
* S3 hybrid: the same chunk and the same B decodes in one batch (linear layers run once).

Reported per (C, B): medians of S1, S2, S3, S1+S2, the marginal decode cost S3-S1 (total and
per decode token) and the piggyback speedup S2 / (S3-S1) (decode-only cost per token over
piggybacked cost per token), plus each batch's roofline bound and the achieved fraction; also
the minima, the spread (max/min) and a paired marginal (median over rounds of S3_r - S1_r),
which resist load changes on a shared machine better than the difference of two medians.
A timed call is forward + greedy pick of the sampled rows (a host sync, as in a real
iteration); building the attention metadata (the per-step host work of the step path) is timed
apart (``meta_s3_ms``). For S3 the linear layers are also timed inside the forward and against
the same shapes standalone: torch's ``F.linear`` (``s3_linear_frac``) and the model's own
layers (``s3_linear_own_frac``), bench/linear_rate.py.
On the CPU the matmul peak of the roofline is the better of ``torch.mm`` and the oneDNN-packed
linear the model uses (model/cpu_linear.py), so the roofline is the machine's, not one BLAS's.
"""
from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import torch

from ..config import RunConfig
from ..metrics.timing import StageClock
from ..model.llama import StageModel
from .device import DevicePeaks, device_info, measure_peaks, median, time_interleaved
from .hybrid import HybridBench
from .linear_rate import measure_linear_rate
from .roofline import batch_flops_bytes

log = logging.getLogger("pp_sarathi")

CSV_FIELDS = [
    "device", "dtype", "chunk", "decode_batch", "context_len",
    "s1_ms", "s2_ms", "s3_ms", "s1_plus_s2_ms", "hybrid_saving",
    "marginal_decode_ms", "marginal_per_decode_ms", "decode_only_per_token_ms", "prefill_per_token_ms",
    "piggyback_speedup",
    "s1_bound_ms", "s2_bound_ms", "s3_bound_ms", "s1_frac", "s2_frac", "s3_frac",
    "s1_limiter", "s2_limiter", "s3_limiter", "s1_gflop", "s2_gflop", "s3_gflop", "s1_mb", "s2_mb", "s3_mb",
    "meta_s3_ms", "s3_linear_ms", "s3_linear_torch_ms", "s3_linear_frac", "s3_linear_own_ms", "s3_linear_own_frac", "s3_linear_share", "s3_linear_gflops",
    "s1_min_ms", "s2_min_ms", "s3_min_ms", "max_spread", "marginal_paired_ms", "piggyback_speedup_paired",
]
NOISY_SPREAD = 1.5  # max/min of a batch's samples above this: the machine was not quiet


def _load_model(cfg: RunConfig) -> StageModel:
    # Lazy: the loader needs safetensors, which bare GPU machines may lack.
    from ..model.loader import load_stage
    from ..runtime.stage import pick_device, resolve_model

    path, arch = resolve_model(cfg.model)
    return load_stage(path, 0, arch.num_layers, dtype=cfg.model.dtype, device=pick_device(cfg), arch=arch)


def table2_row(bench: HybridBench, clock: StageClock, chunk: int, batch: int, warmup: int,
               repeats: int) -> tuple[dict, dict]:
    """Time S1/S2/S3 for one (chunk, batch); returns the row (roofline columns still to fill,
    see :func:`apply_roofline`) and its raw samples (ms)."""
    model = bench.model
    arch, elem = model.arch, next(model.parameters()).element_size()
    b1 = bench.batch("s1", prefill=chunk)
    b2 = bench.batch("s2", decodes=batch)
    b3 = bench.batch("s3", prefill=chunk, decodes=batch)
    samples = time_interleaved(clock, {b.name: b.run for b in (b1, b2, b3)}, warmup, repeats)
    meta_s = [_wall(b3.build_meta) for _ in range(max(3, min(repeats, 7)))]
    s1, s2, s3 = (median(samples[k]) for k in ("s1", "s2", "s3"))
    marg = s3 - s1
    row = {"device": "", "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
           "chunk": chunk, "decode_batch": batch, "context_len": bench.context_len,
           "s1_ms": s1 * 1e3, "s2_ms": s2 * 1e3, "s3_ms": s3 * 1e3, "s1_plus_s2_ms": (s1 + s2) * 1e3,
           "hybrid_saving": (s1 + s2) / s3,
           "marginal_decode_ms": marg * 1e3, "marginal_per_decode_ms": marg / batch * 1e3,
           "decode_only_per_token_ms": s2 / batch * 1e3, "prefill_per_token_ms": s1 / chunk * 1e3,
           # S3 <= S1 happens within noise when decodes are nearly free: no finite speedup.
           "piggyback_speedup": s2 / marg if marg > 0 else None}
    for key, b in (("s1", b1), ("s2", b2), ("s3", b3)):
        flops, nbytes = batch_flops_bytes(arch, b.shape, elem)
        row[f"{key}_gflop"], row[f"{key}_mb"] = flops / 1e9, nbytes / 1e6
    row["meta_s3_ms"] = median(meta_s) * 1e3
    lin = measure_linear_rate(model, b3.run, clock, rounds=max(3, min(repeats, 5)))
    row.update(s3_linear_ms=lin.forward_ms, s3_linear_torch_ms=lin.torch_ms, s3_linear_frac=lin.fraction,
               s3_linear_own_ms=lin.own_ms, s3_linear_own_frac=lin.own_fraction,
               s3_linear_share=lin.share, s3_linear_gflops=lin.gflops)
    for k in ("s1", "s2", "s3"):
        row[f"{k}_min_ms"] = min(samples[k]) * 1e3
    row["max_spread"] = max(max(v) / min(v) for v in samples.values())
    # S3 - S1 is a small difference of two large, noisy numbers; S1 and S3 of one round run back
    # to back, so the median of the per-round differences is more robust on a busy machine.
    paired = median([c - a for a, c in zip(samples["s1"], samples["s3"])])
    row["marginal_paired_ms"] = paired * 1e3
    row["piggyback_speedup_paired"] = s2 / paired if paired > 0 else None
    return row, {k: [x * 1e3 for x in v] for k, v in samples.items()}


def apply_roofline(rows: list[dict], peaks: DevicePeaks) -> None:
    """Fill the bound / achieved-fraction / limiter columns from each row's FLOPs and bytes."""
    for r in rows:
        for k in ("s1", "s2", "s3"):
            c = r[f"{k}_gflop"] * 1e9 / peaks.matmul_flops
            m = r[f"{k}_mb"] * 1e6 / peaks.copy_bytes_per_s
            r[f"{k}_bound_ms"] = max(c, m) * 1e3
            r[f"{k}_frac"] = r[f"{k}_bound_ms"] / r[f"{k}_ms"]
            r[f"{k}_limiter"] = "compute" if c >= m else "memory"


def machine_peaks(device, dtype) -> DevicePeaks:
    """Measured peaks; on the CPU the matmul peak is the better of ``torch.mm`` and the packed
    oneDNN linear the model's layers use (same square shape)."""
    peaks = measure_peaks(device, dtype)
    if torch.device(device).type == "cpu":
        from ..model.cpu_linear import PackedLinear

        n = peaks.matmul_n
        lin = PackedLinear(n, n, bias=False).to(dtype)
        x = torch.randn(n, n).to(dtype)
        if lin.packed_weight() is not None:
            with torch.inference_mode():
                times = [_wall(lambda: lin(x)) for _ in range(4)]
            peaks.matmul_flops = max(peaks.matmul_flops, 2.0 * n ** 3 / min(times[1:]))
    return peaks


def _wall(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def format_table(rows: list[dict]) -> str:
    head = ("chunk", "B", "S1 ms", "S2 ms", "S3 ms", "S1+S2", "S3-S1", "/dec", "S2/B", "speedup",
            "paired", "spd(pair)", "S1 roof", "S2 roof", "S3 roof", "meta", "lin/torch", "lin/own", "lin GF/s")
    lines = ["  ".join(f"{h:>8}" for h in head)]
    for r in rows:
        sp = r["piggyback_speedup"]
        vals = (r["chunk"], r["decode_batch"], f"{r['s1_ms']:.2f}", f"{r['s2_ms']:.2f}", f"{r['s3_ms']:.2f}",
                f"{r['s1_plus_s2_ms']:.2f}", f"{r['marginal_decode_ms']:.2f}", f"{r['marginal_per_decode_ms']:.3f}",
                f"{r['decode_only_per_token_ms']:.3f}", "n/a" if sp is None else f"{sp:.2f}x",
                f"{r['marginal_paired_ms']:.2f}",
                "n/a" if r["piggyback_speedup_paired"] is None else f"{r['piggyback_speedup_paired']:.2f}x",
                f"{r['s1_frac']:.0%}", f"{r['s2_frac']:.0%}", f"{r['s3_frac']:.0%}", f"{r['meta_s3_ms']:.2f}",
                f"{r['s3_linear_frac']:.0%}", f"{r['s3_linear_own_frac']:.0%}", f"{r['s3_linear_gflops']:.0f}")
        lines.append("  ".join(f"{v:>8}" for v in vals))
    return "\n".join(lines)


def run_microbench(cfg: RunConfig, run_dir: Path, *, model: StageModel | None = None) -> list[dict]:
    """Measure Table 2 for ``cfg.model`` (or ``model``); writes microbench.csv/json in ``run_dir``."""
    mb = cfg.microbench
    if not mb.chunk_sizes or not mb.decode_batch_sizes:
        raise ValueError("microbench.chunk_sizes and microbench.decode_batch_sizes must not be empty")
    if min(mb.chunk_sizes) < 2 or min(mb.decode_batch_sizes) < 1 or mb.repeats < 1 or mb.warmup < 0:
        raise ValueError("microbench needs chunk sizes >= 2, batch sizes >= 1, repeats >= 1, warmup >= 0")
    from ..runtime.host import prepare_host

    prepare_host(1, cfg.parallel)
    model = model if model is not None else _load_model(cfg)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    info = device_info(device, dtype)
    log.info("microbench on %s, dtype %s, torch %s", info["device"], info["dtype"], info["torch"])
    print(f"device: {info['device']}  dtype: {info['dtype']}  torch {info['torch']}  "
          f"load avg {info['load_avg']}", flush=True)
    bench = HybridBench(model, max(mb.chunk_sizes), max(mb.decode_batch_sizes), mb.context_len,
                        cfg.cache.block_size, seed=cfg.model.seed)
    peaks = machine_peaks(device, dtype)
    print(f"measured peaks: matmul {peaks.matmul_flops / 1e12:.3f} TFLOP/s ({peaks.dtype}, n={peaks.matmul_n}), "
          f"copy {peaks.copy_bytes_per_s / 1e9:.1f} GB/s (read+write)", flush=True)
    clock = StageClock(device)
    rows, raw = [], []
    for chunk in mb.chunk_sizes:
        for batch in mb.decode_batch_sizes:
            row, samples = table2_row(bench, clock, chunk, batch, mb.warmup, mb.repeats)
            row["device"] = info["device"]
            rows.append(row)
            raw.append({"chunk": chunk, "decode_batch": batch, "samples_ms": samples})
    # Peaks again at the end: on a shared machine either measurement may have hit a busy moment,
    # and a busy moment only lowers a peak, so the roofline uses the higher of the two.
    peaks_end = machine_peaks(device, dtype)
    print(f"peaks at the end: matmul {peaks_end.matmul_flops / 1e12:.3f} TFLOP/s, copy "
          f"{peaks_end.copy_bytes_per_s / 1e9:.1f} GB/s; the roofline uses the higher of each", flush=True)
    peaks_start, peaks = peaks, peaks.best(peaks_end)
    apply_roofline(rows, peaks)
    arch = model.arch
    print(f"model: {arch.num_layers} layers, hidden {arch.hidden_size}, {arch.num_params() / 1e6:.1f}M params; "
          f"decode context {mb.context_len}; median of {mb.repeats} after {mb.warmup} warm-up")
    print(format_table(rows), flush=True)
    for r in rows:
        print(f"chunk {r['chunk']} + {r['decode_batch']} decodes: {r['s3_frac']:.0%} of the roofline; linear layers "
              f"{r['s3_linear_share']:.0%} of the forward at {r['s3_linear_gflops']:.0f} GFLOP/s = "
              f"{r['s3_linear_frac']:.0%} of torch's standalone F.linear on the same shapes, "
              f"{r['s3_linear_own_frac']:.0%} of the same layers run standalone; host metadata "
              f"{r['meta_s3_ms']:.2f} ms per step ({r['meta_s3_ms'] / r['s3_ms']:.1%} of the step)")
    noisy = [r for r in rows if r["max_spread"] > NOISY_SPREAD]
    if noisy:
        print(f"warning: {len(noisy)} of {len(rows)} rows have samples spread over more than {NOISY_SPREAD}x "
              f"(max/min up to {max(r['max_spread'] for r in noisy):.1f}x): the device was busy; "
              "medians are unreliable (min columns in microbench.csv)", flush=True)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "microbench.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        w.writeheader()
        w.writerows(rows)
    (run_dir / "microbench.json").write_text(json.dumps({
        "info": info, "peaks": peaks.to_dict(), "peaks_start": peaks_start.to_dict(),
        "peaks_end": peaks_end.to_dict(),
        "model": {"name": cfg.model.name, "path": cfg.model.path, "num_layers": arch.num_layers,
                  "hidden_size": arch.hidden_size, "num_params": arch.num_params()},
        "microbench": {"chunk_sizes": list(mb.chunk_sizes), "decode_batch_sizes": list(mb.decode_batch_sizes),
                       "context_len": mb.context_len, "warmup": mb.warmup, "repeats": mb.repeats,
                       "block_size": cfg.cache.block_size},
        "rows": rows, "raw": raw}, indent=2))
    log.info("wrote %s/microbench.csv and microbench.json", run_dir)
    return rows
