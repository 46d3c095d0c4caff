"""The planner's online target on a workload whose P:D shifts mid-run.

The first half of the requests has P:D 50 (long prompts, a few output tokens), the second
half P:D 2 (short prompts, long outputs); arrivals are Poisson so the shift happens in time.
The workload is simulated (default model, pp=2, the same scheduler code as a real run) under
sarathi and sarathi_uniform on a profile CSV (``--profile``) or the CPU roofline, and the run
is plotted over time: the target T, the micro-batches' composition, and the stage compute.

    python scripts/planner_shift.py [--profile runs/<dir>/profile.csv] [--out docs/img/planner_shift.png]
                                    [--chunks-in-flight]
"""
from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from pp_sarathi.config import RunConfig
from pp_sarathi.metrics.summary import summarize
from pp_sarathi.sim.simulate import run_simulation


def shift_workload(path: Path, n: int, qps: float, seed: int, vocab: int) -> list[dict]:
    """``n`` requests, the first half at P:D 50, the second at P:D 2; total lengths uniform
    in 256-768 tokens; Poisson arrivals at ``qps``."""
    rng = random.Random(seed)
    t, rows = 0.0, []
    for i in range(n):
        pd = 50.0 if i < n // 2 else 2.0
        total = rng.randint(256, 768)
        out = max(1, round(total / (pd + 1)))
        prompt = [rng.randrange(3, vocab) for _ in range(total - out)]
        rows.append({"id": f"r{i}", "prompt_token_ids": prompt, "max_tokens": out, "arrived_at": t})
        t += rng.expovariate(qps)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def simulate(policy: str, workload: Path, profile: str | None, pp: int, chunks_in_flight: bool = False):
    cfg = RunConfig()
    cfg.scheduler.name = policy
    cfg.scheduler.chunks_in_flight = chunks_in_flight
    cfg.parallel.pp = pp
    cfg.workload.name = "jsonl"
    cfg.workload.path = str(workload)
    cfg.sim.profile = profile
    cfg.sim.jitter = 0.0
    out = run_simulation(cfg)
    return out, summarize(out)


def plot(runs: dict, half_at: float, out_png: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(11, 9), sharex=True)
    colors = {"sarathi": "tab:orange", "sarathi_uniform": "tab:blue"}
    for name, (outcome, _) in runs.items():
        comp = {(r.stage, r.batch_id): r.compute_end - r.compute_start for r in outcome.stage_records}
        xs = [b.scheduled_at for b in outcome.batches]
        axes[2].plot(xs, [1e3 * max(comp.get((s, b.batch_id), 0.0) for s in range(outcome.num_stages))
                          for b in outcome.batches], ".", ms=2, color=colors[name], label=f"{name}: slowest stage")
        if name == "sarathi_uniform":
            axes[0].plot(xs, [1e3 * (b.target_s or 0) for b in outcome.batches], color="k", lw=1, label="target T")
            axes[0].plot(xs, [1e3 * max(b.predicted_stage_s) for b in outcome.batches], ".", ms=2,
                         color=colors[name], label="predicted (slowest stage)")
            axes[1].plot(xs, [b.num_prefill_tokens for b in outcome.batches], ".", ms=2, color="tab:green",
                         label="prefill tokens")
            axes[1].plot(xs, [b.num_decode_tokens for b in outcome.batches], ".", ms=2, color="tab:red",
                         label="decode tokens")
    axes[0].set_ylabel("ms per micro-batch")
    axes[0].set_title("sarathi_uniform: target stage time T chosen online")
    axes[1].set_ylabel("tokens per micro-batch")
    axes[1].set_title("sarathi_uniform: micro-batch composition")
    axes[2].set_ylabel("compute ms")
    axes[2].set_title("stage compute per micro-batch (simulated)")
    axes[2].set_xlabel("time (s)")
    for ax in axes:
        ax.axvline(half_at, color="gray", ls="--", lw=1)
        ax.legend(loc="upper right", fontsize=8, markerscale=4)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", help="profile CSV of the default model (else the CPU roofline)")
    ap.add_argument("--requests", type=int, default=160)
    ap.add_argument("--qps", type=float, default=2.0)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunks-in-flight", action="store_true", help="scheduler.chunks_in_flight=true")
    ap.add_argument("--out", default="docs/img/planner_shift.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wl = Path(tmp) / "shift.jsonl"
        rows = shift_workload(wl, args.requests, args.qps, args.seed, RunConfig().model.vocab_size)
        half_at = rows[args.requests // 2]["arrived_at"]
        runs = {name: simulate(name, wl, args.profile, args.pp, args.chunks_in_flight)
                for name in ("sarathi", "sarathi_uniform")}
    plot(runs, half_at, Path(args.out))
    for name, (outcome, res) in runs.items():
        first = [b for b in outcome.batches if b.scheduled_at < half_at]
        second = [b for b in outcome.batches if b.scheduled_at >= half_at]

        def mean_t(bs):
            ts = [b.target_s for b in bs if b.target_s]
            return f"{1e3 * sum(ts) / len(ts):.0f} ms" if ts else "-"
        bubbles = ", ".join(f"{s['bubble_fraction']:.1%}" for s in res["stages"])
        print(f"{name}: wall {res['wall_s']:.1f} s, {res['throughput']['tokens_per_s']:.0f} tok/s, "
              f"TBT p50 {res['latency']['tbt_ms']['p50']:.0f} ms, TTFT p50 {res['latency']['ttft_ms']['p50']:.0f} ms, "
              f"stage bubble {bubbles}, "
              f"mean T first/second half {mean_t(first)} / {mean_t(second)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
