"""Run ``pp-sarathi run`` as a subprocess (a fresh process per run, as a user would) and read
its results; shared by scripts/bench_policies.py and scripts/bench_vs_hf.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

# Quiet, artifact-light runs: no wandb, no progress bar, no timeline picture.
QUIET = ["logging.wandb.mode=disabled", "logging.progress=false", "logging.timeline=false"]


def cli_exe() -> list[str]:
    """The pp-sarathi entry point next to this interpreter (the venv's), else on PATH."""
    here = Path(sys.executable).with_name("pp-sarathi")
    if here.exists():
        return [str(here)]
    found = shutil.which("pp-sarathi")
    if found:
        return [found]
    return [sys.executable, "-m", "pp_sarathi"]


def run_cli(command: str, overrides: list[str], run_dir: Path, timeout: float = 3600, results: bool = True) -> dict:
    """``pp-sarathi COMMAND overrides... hydra.run.dir=run_dir``; returns results.json (+ wall),
    or only the wall and command with ``results=False`` (commands that write other files)."""
    run_dir = Path(run_dir)
    cmd = cli_exe() + [command, *overrides, *QUIET, f"hydra.run.dir={run_dir}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    elapsed = time.perf_counter() - t0
    (run_dir.mkdir(parents=True, exist_ok=True))
    (run_dir / "stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    out = json.loads((run_dir / "results.json").read_text()) if results else {}
    out["_process_s"] = elapsed
    out["_command"] = cmd
    return out


def read_outputs(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "outputs.jsonl") as f:
        return [json.loads(line) for line in f if line.strip()]


def md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def machine_note() -> str:
    """CPU model, cores, load average now: what a reader needs to judge a CPU timing."""
    from .device import cpu_model

    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU {cpu_model()}, {cores} cores, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f} (1/5/15 min)"


def parse_script_args(parser, argv: list[str] | None) -> tuple:
    """Parse a benchmark script's own options; everything after ``--`` is passed on to
    ``pp-sarathi`` as hydra overrides."""
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    return parser.parse_args(argv), extra
