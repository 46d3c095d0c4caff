"""Multirun bookkeeping: which keys are swept, wandb group/name per point, failed points, and
the report written when the sweep ends."""
from __future__ import annotations

import os
import sys
from pathlib import Path


def swept_keys(overrides: list[str]) -> set[str]:
    """Keys the command line sweeps over (``a=1,2``, ``range(...)``, ...)."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser
        return {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides)
                if o.is_sweep_override()}
    except Exception:  # noqa: BLE001 - naming only
        return set()


class Sweep:
    """State of one multirun in this process (hydra's basic launcher runs points in turn)."""

    def __init__(self) -> None:
        self.argv: list[str] = []
        self.dir: str | None = None
        self.command: str | None = None
        self.jobs = 0
        self.failed = 0

    def point_started(self, hc, command: str) -> None:
        self.dir = self.dir or str(hc.sweep.dir)
        self.command = self.command or command
        self.jobs += 1

    def name_wandb_run(self, cfg_dict: dict, hc) -> None:
        """One wandb group per sweep; each run named by its swept values."""
        wandb_cfg = cfg_dict.setdefault("logging", {}).setdefault("wandb", {})
        if not wandb_cfg.get("group"):
            wandb_cfg["group"] = Path(str(hc.sweep.dir)).name
        if not wandb_cfg.get("name"):
            swept = swept_keys(self.argv)
            parts = [o for o in hc.overrides.task if o.split("=", 1)[0].lstrip("+~") in swept]
            wandb_cfg["name"] = ",".join(p.rsplit(".", 1)[-1] if "." in p.split("=", 1)[0] else p
                                         for p in parts) or f"job{hc.job.num}"

    def finish(self) -> None:
        """Summarise every point of a run/compare sweep into sweep.csv and plots."""
        if not self.dir or int(os.environ.get("RANK", "0")) != 0:
            return
        print(f"pp-sarathi: sweep finished: {self.jobs} points, {self.failed} failed, in {self.dir}",
              flush=True)
        if self.command in ("run", "compare"):
            from .report import report_main
            try:
                report_main([self.dir])
            except Exception as exc:  # noqa: BLE001 - the sweep itself is done
                print(f"pp-sarathi: report failed ({exc}); rerun: pp-sarathi report {self.dir}",
                      file=sys.stderr)


SWEEP = Sweep()
