"""One workload under several schedulers: the loop shared by ``compare`` and ``simulate``, and
compare.json's content.

Which schedulers run, in which order, and which one is the baseline are config
(``compare.schedulers``, ``compare.baseline``); every other scheduler is a target, measured
against the baseline. The first target is the headline one: its ratios are compare.json's
``ratios`` (the keys DESIGN.md §3 names); ``ratios_by_scheduler`` holds every target's.
"""
from __future__ import annotations

import copy
from typing import Callable

from ..config import RunConfig


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def targets(names, baseline: str) -> list[str]:
    """The schedulers measured against ``baseline``, in their order."""
    return [str(n) for n in names if n != baseline]


def compare_ratios(results_by_name: dict[str, dict], baseline: str, target: str | None = None) -> dict:
    """Bubble ratios are baseline / target (higher = target has fewer bubbles); the throughput
    ratio is target / baseline (higher = target is faster). ``target`` defaults to the first
    scheduler other than the baseline."""
    if target is None:
        target = (targets(results_by_name, baseline) or [baseline])[0]
    b, t = results_by_name[baseline], results_by_name[target]
    return {
        "bubble_total": _ratio(b["bubble"]["total_s"], t["bubble"]["total_s"]),
        "bubble_per_request_p50": _ratio(b["bubble"]["per_request_ms"]["p50"], t["bubble"]["per_request_ms"]["p50"]),
        "throughput": _ratio(t["throughput"]["tokens_per_s"], b["throughput"]["tokens_per_s"]),
    }


def compare_summary(results_by_name: dict[str, dict], baseline: str) -> dict:
    """compare.json: ``schedulers`` (results per name), ``ratios`` (the headline target's),
    ``baseline``, ``target`` and ``ratios_by_scheduler`` (every target's)."""
    by_target = {name: compare_ratios(results_by_name, baseline, name)
                 for name in targets(results_by_name, baseline)}
    headline = next(iter(by_target), baseline)
    return {"schedulers": results_by_name,
            "ratios": by_target.get(headline) or compare_ratios(results_by_name, baseline, baseline),
            "baseline": baseline, "target": headline, "ratios_by_scheduler": by_target}


def scheduler_configs(cfg: RunConfig) -> list[tuple[str, RunConfig]]:
    """(name, a copy of ``cfg`` running that scheduler) per ``compare.schedulers`` entry."""
    out = []
    for name in cfg.compare.schedulers:
        sub = copy.deepcopy(cfg)
        sub.scheduler.name = name
        out.append((str(name), sub))
    return out


def run_compare(cfg: RunConfig, run_one: Callable[[str, RunConfig], dict]) -> dict:
    """``run_one(name, cfg_of_that_scheduler) -> results`` for every scheduler of
    ``compare.schedulers`` in turn (same workload, same seed); returns compare.json's content."""
    results = {name: run_one(name, sub) for name, sub in scheduler_configs(cfg)}
    return compare_summary(results, str(cfg.compare.baseline))
