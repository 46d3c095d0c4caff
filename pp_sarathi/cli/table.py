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
        if any(s < len(r["stages"]) and r["stages"][s].get("cpu_user_s") is not None
               for r in results.values()):  # measured in real runs only
            rows.append((f"stage {s} CPU user / sys (s)", lambda r, s=s: (
                f"{_fmt(r['stages'][s].get('cpu_user_s'), 2)} / {_fmt(r['stages'][s].get('cpu_sys_s'), 2)}"
                if s < len(r["stages"]) else "-")))
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


def print_compare(summary: dict) -> None:
    """compare.json on the terminal: every scheduler's results, then each target's ratios
    against the baseline (greater than 1 = the target is better)."""
    print_results(summary["schedulers"])
    base = summary["baseline"]
    for name, ratios in summary["ratios_by_scheduler"].items():
        print()
        for key, value in ratios.items():
            num, den = (base, name) if "bubble" in key else (name, base)
            print(f"{key} ({num} / {den}): {_fmt(value, 2)}x")


def print_texts(outputs_path, limit: int = 4) -> None:
    """The first generated texts of a run (when the model has a tokenizer)."""
    import json
    from pathlib import Path

    p = Path(outputs_path)
    if not p.is_file():
        return
    recs = [json.loads(line) for line in p.read_text().splitlines()[:limit]]
    for rec in recs:
        if "text" in rec:
            print(f"[{rec['id']}] ({rec['finish_reason']}) {rec['text']!r}")
