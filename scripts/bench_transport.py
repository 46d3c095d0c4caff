#!/usr/bin/env python
"""The stage-to-stage hop over gloo vs the shared-memory ring (``parallel.transport``).

1. Round trips (always): two local processes with the runtime's own StageLink, set up by the
   runtime's ``connect_rings`` for the README model (hidden 1024, float32, chunk 128, 14 requests
   per micro-batch). Rank 0 sends a hop (header + plan metadata of 14 parts + hidden states, the
   ~480 KB of a 120-token micro-batch, or the 56 KB of 14 decodes) and waits for the sampled
   tokens back; rank 1 receives and answers. Prints the median and mean round trip per
   transport, idle and with ``--corunners`` processes keeping the cores busy with matmuls (as
   computing stages do).
2. Whole runs (``--runs N``): the README job's ``sarathi_uniform`` run (``pp-sarathi run
   scheduler=sarathi_uniform``, pp=2) with ``parallel.transport`` gloo and shm interleaved, N
   rounds each: wall time, stage bubble and its ``transport`` cause per stage.

    .venv/bin/python scripts/bench_transport.py                      # round trips only
    .venv/bin/python scripts/bench_transport.py --runs 2             # + the README job, 2 rounds
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, run_cli

SHAPES = {"120 tokens (480 KB)": 120, "14 decodes (56 KB)": 14}


def _spin(stop) -> None:
    import torch
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    while not stop.is_set():
        torch.mm(a, a)


def _rank(rank: int, port: int, transport: str, rounds: int, q) -> None:
    import torch
    import torch.distributed as dist

    from pp_sarathi.config import RunConfig
    from pp_sarathi.model.arch import ModelArch
    from pp_sarathi.runtime.ring_setup import connect_rings
    from pp_sarathi.runtime.transport import StageLink
    from pp_sarathi.scheduler.batch import SampleResult, ScheduledPart

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cfg = RunConfig()
    cfg.parallel.transport = transport
    arch = ModelArch.from_config(cfg.model)
    link = StageLink(rank, 2, arch.hidden_size, torch.float32, torch.device("cpu"))
    how = connect_rings(link, cfg, arch)
    copy_out: list[float] = []  # the receiver's copy of a hop out of its slot (ShmRing.read)
    if link.ring_in is not None:
        read = link.ring_in.read

        def timed_read(*a):
            t0 = time.perf_counter()
            meta = read(*a)
            copy_out.append(time.perf_counter() - t0)
            return meta
        link.ring_in.read = timed_read
    out = {}
    for name, tokens in SHAPES.items():
        parts = [ScheduledPart(seq_index=i, start=300, token_ids=[0] * (tokens - 13 if i == 0 else 1),
                               block_table=list(range(32)), is_prefill=i == 0, sample=True, output_index=0)
                 for i in range(14 if tokens > 14 else tokens)]
        hidden = torch.randn(tokens, arch.hidden_size)
        times = []
        dist.barrier()
        for i in range(rounds):
            if rank == 0:
                t0 = time.perf_counter()
                link.send_activations(i, parts, hidden)
                link.recv_results(1)
                times.append(time.perf_counter() - t0)
            else:
                plan_id, got, h = link.recv_activations()
                link.send_results(plan_id, [SampleResult(7) for _ in got])
        link.flush()
        out[name] = times[rounds // 10:]  # the first tenth warms up
        if copy_out:
            q.put({"copy_out": name, "times": copy_out[rounds // 10:]})
            copy_out.clear()
    dist.barrier()
    if rank == 0:
        q.put({"link": how, "hop": link.describe(), "times": out})
    link.close()
    dist.destroy_process_group()


def round_trips(transport: str, rounds: int, corunners: int) -> dict:
    from pp_sarathi.runtime.launch import free_port

    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    spinners = [ctx.Process(target=_spin, args=(stop,)) for _ in range(corunners)]
    for p in spinners:
        p.start()
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, transport, rounds, q)) for r in range(2)]
    for p in procs:
        p.start()
    res, copies = None, {}
    while res is None:
        msg = q.get(timeout=600)
        if "copy_out" in msg:
            copies[msg["copy_out"]] = msg["times"]
        else:
            res = msg
    res["copy_out"] = copies
    for p in procs:
        p.join(60)
    stop.set()
    for p in spinners:
        p.join(10)
    return res


def figures(res: dict) -> dict:
    st = {s["stage"]: s for s in res["stages"]}
    out = {"wall_s": res["wall_s"], "tok_s": res["throughput"]["tokens_per_s"]}
    for i, s in st.items():
        out[f"s{i}_bubble_frac"] = s["bubble_fraction"]
        out[f"s{i}_transport_s"] = s["bubble_causes_s"]["transport"]
        out[f"s{i}_imbalance_s"] = s["bubble_causes_s"]["imbalance"]
    hops = res.get("transport", {}).get("hops", [])
    out["ring_hops"] = sum(h["ring_hops"] for h in hops)
    out["wire_hops"] = sum(h["wire_hops"] for h in hops)
    out["ring_waits"] = sum(h.get("ring_waits", 0) for h in hops)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=500, help="round trips per shape")
    ap.add_argument("--repeats", type=int, default=3, help="fresh process pairs per transport, interleaved")
    ap.add_argument("--corunners", type=int, default=1, help="busy processes in the second pass (0: skip it)")
    ap.add_argument("--runs", type=int, default=0, help="rounds of the README sarathi_uniform run per transport")
    ap.add_argument("--out", default=None)
    args, extra = parse_script_args(ap, argv)
    out = Path(args.out or f"runs/transport-{time.strftime('%Y%m%d-%H%M%S')}")
    notes = [f"start: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}"]
    cells: dict[tuple, list[dict]] = {}
    raw: dict = {"round_trips": []}
    for rep in range(args.repeats):
        for busy in ([0, args.corunners] if args.corunners else [0]):
            for transport in ("gloo", "shm"):  # interleaved, so that a drift in load hits both
                res = round_trips(transport, args.rounds, busy)
                raw["round_trips"].append({"repeat": rep, "busy": busy, "transport": transport, **res})
                for name, t in res["times"].items():
                    c = res["copy_out"].get(name)
                    cells.setdefault((busy, transport, name), []).append(
                        {"p50": statistics.median(t), "mean": statistics.mean(t),
                         "p90": sorted(t)[int(0.9 * len(t))], "copy": statistics.median(c) if c else None})
                print(f"[transport] round trips {transport}, {busy} busy, repeat {rep + 1}: done ({res['link']})",
                      file=sys.stderr, flush=True)
    rows = []
    for (busy, transport, name), reps in cells.items():
        med = {k: statistics.median(r[k] for r in reps) for k in ("p50", "mean", "p90")}
        copy = [r["copy"] for r in reps if r["copy"] is not None]
        each = " / ".join(f"{1e6 * r['p50']:.0f}" for r in reps)
        rows.append([f"{busy} busy" if busy else "idle", transport, name, f"{1e6 * med['p50']:.0f} ({each})",
                     f"{1e6 * med['mean']:.0f}", f"{1e6 * med['p90']:.0f}",
                     f"{1e6 * statistics.median(copy):.0f}" if copy else ""])
    md = (f"Round trip (hop + tokens back), µs; {args.rounds} per shape and repeat, median over "
          f"{args.repeats} repeats (p50 of each repeat in brackets):\n\n") + md_table(
        ["cores", "transport", "hop", "p50", "mean", "p90", "copy out of the slot, p50"], rows) + "\n"
    if args.runs:
        runs: dict[str, list[dict]] = {"gloo": [], "shm": []}
        for r in range(args.runs):
            for transport in ("gloo", "shm"):
                res = run_cli("run", ["scheduler=sarathi_uniform", f"parallel.transport={transport}", *extra],
                              out / f"{transport}_r{r}")
                runs[transport].append(figures(res))
                print(f"[transport] run {transport} round {r + 1}: wall {res['wall_s']:.2f} s", file=sys.stderr,
                      flush=True)
        keys = list(runs["gloo"][0])
        table = [[k] + [" / ".join(f"{rd[k]:.3g}" for rd in runs[t]) +
                        f" (median {statistics.median(rd[k] for rd in runs[t]):.3g})" for t in ("gloo", "shm")]
                 for k in keys]
        md += "\nREADME job, sarathi_uniform, pp=2 (per round, then median):\n\n" + md_table(
            ["figure", "gloo", "shm"], table) + "\n"
        raw["runs"] = runs
    notes.append(f"end: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())} · {machine_note()}")
    md = "\n".join(notes) + "\n\n" + md
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.md").write_text(md)
    (out / "transport.json").write_text(json.dumps(raw, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
