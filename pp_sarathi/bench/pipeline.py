"""A pipeline run timed with CUDA events, for GPU hosts that have only PyTorch (no hydra).

One stage per GPU over NCCL on the embedded default model and the README workload; every stage
stamps receive, compute and send with CUDA events that are resolved after the run. Writes
results.json (with per-stage compute, receive-wait, send and bubble causes) and trace.json.

    python -m pp_sarathi.bench.pipeline --out DIR [--pp 2] [--scheduler sarathi] [--dtype bfloat16]
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from ..config import RunConfig
from ..metrics.records import RunOutcome
from ..metrics.summary import summarize
from ..metrics.trace import write_trace


def write_results(outcome: RunOutcome, out: str) -> None:
    """finalize hook: runs in rank 0 once the run is over."""
    d = Path(out)
    d.mkdir(parents=True, exist_ok=True)
    (d / "results.json").write_text(json.dumps(summarize(outcome), indent=2))
    write_trace(outcome, d / "trace.json")


def main(argv: list[str] | None = None) -> int:
    import torch

    from ..runtime.launch import launch
    from ..runtime.prepare import prepare

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pp", type=int, default=2)
    ap.add_argument("--scheduler", default="sarathi")
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args(argv)
    if torch.cuda.device_count() < a.pp:
        print(f"[pipeline] needs {a.pp} GPUs, found {torch.cuda.device_count()}: skipped", file=sys.stderr)
        return 0
    cfg = RunConfig()
    cfg.parallel.pp, cfg.parallel.backend, cfg.device = a.pp, "nccl", "cuda"
    cfg.scheduler.name, cfg.model.dtype = a.scheduler, a.dtype
    cfg.logging.progress = False
    launch(prepare(cfg), functools.partial(write_results, out=a.out))
    res = json.loads((Path(a.out) / "results.json").read_text())
    for s in res["stages"]:
        print(f"stage {s['stage']}: compute {s['compute_s']:.3f} s, recv-wait {s['recv_wait_s']:.3f} s, "
              f"send {s['send_s']:.3f} s, bubble {s['bubble_fraction']:.1%} {s['bubble_causes_s']}")
    print(f"throughput {res['throughput']['tokens_per_s']:.0f} tok/s, driver busy {res['driver']['busy_s']:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
