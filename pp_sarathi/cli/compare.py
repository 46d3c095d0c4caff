"""What ``compare`` and ``simulate sim.compare=true`` leave behind: one sub-dir per scheduler,
compare.json, compare_timeline.png and the table on the terminal.

The loop itself is :func:`pp_sarathi.metrics.compare.run_compare`; the caller says how one
scheduler runs (a real pipeline or a simulation).
"""
from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Callable

from ..config import RunConfig
from ..metrics.compare import run_compare
from ..metrics.records import RunOutcome

log = logging.getLogger("pp_sarathi")

# run_one(cfg of one scheduler, its resolved config dict, its run dir) -> (results, outcome as shown)
RunOne = Callable[[RunConfig, dict, str], "tuple[dict, RunOutcome]"]


def scheduler_config_dict(cfg_dict: dict, name: str, sub_dir: str, run_dir: str) -> dict:
    """The resolved config one scheduler's run records: its name, its dir, and a wandb run named
    after it in one group per compare."""
    sub = copy.deepcopy(cfg_dict)
    sub.setdefault("scheduler", {})["name"] = name
    sub["output_dir"] = sub_dir
    wandb_cfg = sub.setdefault("logging", {}).setdefault("wandb", {})
    base = cfg_dict.get("logging", {}).get("wandb", {})
    wandb_cfg["name"] = f"{base['name']}/{name}" if base.get("name") else name
    wandb_cfg["group"] = base.get("group") or Path(run_dir).resolve().name
    return sub


def compare_command(cfg: RunConfig, cfg_dict: dict, run_dir: str, run_one: RunOne) -> dict:
    """Run every scheduler of ``compare.schedulers`` into ``run_dir/<name>``, then write
    compare.json and the side-by-side timeline and print the table; returns compare.json's content."""
    from .table import print_compare

    shown: dict[str, RunOutcome] = {}

    def one(name: str, sub: RunConfig) -> dict:
        sub_dir = str(Path(run_dir) / name)
        log.info("=== %s ===", name)
        results, shown[name] = run_one(sub, scheduler_config_dict(cfg_dict, name, sub_dir, run_dir), sub_dir)
        return results

    summary = run_compare(cfg, one)
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    (Path(run_dir) / "compare.json").write_text(json.dumps(summary, indent=2))
    if cfg.logging.timeline:
        from .plots import write_side_by_side
        write_side_by_side(shown, Path(run_dir) / "compare_timeline.png")
    print_compare(summary)
    log.info("wrote %s/compare.json", run_dir)
    return summary
