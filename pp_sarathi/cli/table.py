"""Plain-text tables of results for the terminal."""
from __future__ import annotations


def _fmt(v, digits=1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def print_results(results: dict[str, dict]) -> None:
    names = list(results)
    rows = [
        ("device", lambda r: str(r["device"])),
        ("wall time (s)", lambda r: _fmt(r["wall_s"], 2)),
        ("throughput (tok/s)", lambda r: _fmt(r["throughput"]["tokens_per_s"])),
        ("decode throughput (tok/s)", lambda r: _fmt(r["throughput"]["decode_tokens_per_s"])),
        ("TTFT p50 / p99 (ms)", lambda r: f"{_fmt(r['latency']['ttft_ms']['p50'], 0)} / {_fmt(r['latency']['ttft_ms']['p99'], 0)}"),
        ("TBT p50 / p99 (ms)", lambda r: f"{_fmt(r['latency']['tbt_ms']['p50'], 0)} / {_fmt(r['latency']['tbt_ms']['p99'], 0)}"),
        ("bubble total (s)", lambda r: _fmt(r["bubble"]["total_s"], 2)),
        ("bubble/request p50 / p99 (ms)", lambda r: f"{_fmt(r['bubble']['per_request_ms']['p50'], 0)} / {_fmt(r['bubble']['per_request_ms']['p99'], 0)}"),
    ]
    stages = max(len(r["stages"]) for r in results.values())
    for s in range(stages):
        rows.append((f"stage {s} bubble s (fraction)", lambda r, s=s: (
            f"{r['stages'][s]['bubble_s']:.2f} ({r['stages'][s]['bubble_fraction']:.0%})" if s < len(r["stages"]) else "-")))
        rows.append((f"stage {s} compute / recv-wait (s)", lambda r, s=s: (
            f"{r['stages'][s]['compute_s']:.2f} / {r['stages'][s]['recv_wait_s']:.2f}" if s < len(r["stages"]) else "-")))
        rows.append((f"stage {s} compute CV all / prefill", lambda r, s=s: (
            f"{_fmt(r['stages'][s].get('compute_cv'), 2)} / {_fmt(r['stages'][s].get('compute_cv_prefill'), 2)}"
            if s < len(r["stages"]) else "-")))
    rows.append(("predictor error p50 / p90", lambda r: (
        f"{_fmt(100 * r['predictor']['error']['p50'], 0)} / {_fmt(100 * r['predictor']['error']['p90'], 0)} %"
        if r.get("predictor", {}).get("error", {}).get("p50") is not None else "-")))
    width = max(len(label) for label, _ in rows) + 2
    col = max(18, *(len(n) + 2 for n in names))
    print("".ljust(width) + "".join(n.rjust(col) for n in names))
    for label, get in rows:
        print(label.ljust(width) + "".join(get(results[n]).rjust(col) for n in names))


def print_compare(results: dict[str, dict], ratios: dict, baseline: str) -> None:
    """The results side by side, then each scheduler's ratios against ``baseline``
    (``ratios``: name -> compare_ratios, or one compare_ratios dict for sarathi)."""
    print_results(results)
    print()
    if ratios and not isinstance(next(iter(ratios.values())), dict):
        ratios = {"sarathi": ratios}
    for name, rs in ratios.items():
        for key, value in rs.items():
            num, den = (baseline, name) if "bubble" in key else (name, baseline)
            print(f"{key} ({num} / {den}): {_fmt(value, 2)}x")
