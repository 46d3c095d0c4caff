"""Ratios between schedulers' results (compare.json)."""
from __future__ import annotations


def _ratio(num, den):
    if num is None or den is None or den == 0:
        return None
    return num / den


def compare_ratios(results_by_name: dict[str, dict], baseline: str, target: str = "sarathi") -> dict:
    """Bubble ratios are baseline / target (higher = target has fewer bubbles); the throughput
    ratio is target / baseline (higher = target is faster)."""
    b, t = results_by_name[baseline], results_by_name[target]
    return {
        "bubble_total": _ratio(b["bubble"]["total_s"], t["bubble"]["total_s"]),
        "bubble_per_request_p50": _ratio(b["bubble"]["per_request_ms"]["p50"], t["bubble"]["per_request_ms"]["p50"]),
        "throughput": _ratio(t["throughput"]["tokens_per_s"], b["throughput"]["tokens_per_s"]),
    }


def ratios_by_scheduler(results_by_name: dict[str, dict], baseline: str) -> dict[str, dict]:
    """:func:`compare_ratios` of every scheduler but the baseline, against the baseline."""
    return {name: compare_ratios(results_by_name, baseline, name) for name in results_by_name if name != baseline}
