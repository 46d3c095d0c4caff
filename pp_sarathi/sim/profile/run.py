"""A whole profile: every point of the :class:`~.bench.Bench` timed in rounds next to the
co-running stages, then the transport, written as a CSV with the cost model's held-out error
beside it."""
from __future__ import annotations

import json
import logging
import math
import statistics
import time
from pathlib import Path

import torch

from ...config import RunConfig
from ...cost import holdout_errors, write_profile
from ...model.arch import ModelArch
from ...runtime.host import prepare_host
from ...runtime.stage import pick_device
from .bench import Bench, Timer
from .corunners import Corunners, host_cores, profile_threads_and_corunners
from .link import measure_link
from .p2p import measure_p2p
from .points import P2P_BYTES

log = logging.getLogger("pp_sarathi")


def run_profile(cfg: RunConfig, out_csv: Path | str) -> Path:
    """Profile ``cfg.model``'s shape on ``cfg.device`` and write ``out_csv``; returns its path."""
    out_csv = Path(out_csv)
    arch = ModelArch.from_config(cfg.model)
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
    co = Corunners(cfg, corunners, threads)
    try:
        with torch.inference_mode():
            bench = Bench(cfg, device)
            co.wait_ready()
            log.info("profiling %d points x %d rounds (%s, %d thread(s), %d co-running stage(s)); "
                     "stages: %s", len(bench.points), rounds, device, threads, len(co.procs),
                     ", ".join(f"{k} {len(e.model.layers)} layers" for k, e in bench.stages.items()))
            # Whole sweeps in rounds, so that a burst of background load hits one round of every
            # point rather than every repeat of a few points.
            timer = Timer(device)
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
                add(pt.op, [t for ts in per_round for t in ts], jitter=f"{within_round_log_sd(per_round):.4g}",
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


def within_round_log_sd(per_round: list[list[float]]) -> float:
    """Standard deviation of ln(seconds) among the consecutive calls of one round, pooled over
    rounds: how much one step differs from the next (slow drift between rounds excluded)."""
    num, dof = 0.0, 0
    for ts in per_round:
        if len(ts) >= 2:
            logs = [math.log(max(t, 1e-12)) for t in ts]
            m = sum(logs) / len(logs)
            num += sum((x - m) ** 2 for x in logs)
            dof += len(logs) - 1
    return math.sqrt(num / dof) if dof else 0.0
