"""wandb logging from rank 0 (offline by default); files stay inside the run dir."""
from __future__ import annotations

import os
from pathlib import Path

from ..runtime.outcome import RunOutcome


def log_run(outcome: RunOutcome, results: dict, config: dict, run_dir: Path) -> None:
    import wandb

    wcfg = config.get("logging", {}).get("wandb", {})
    os.environ.setdefault("WANDB_SILENT", "true")
    run = wandb.init(project=wcfg.get("project", "pp_sarathi"), group=wcfg.get("group"),
                     name=wcfg.get("name") or config.get("scheduler", {}).get("name"),
                     mode=wcfg.get("mode", "offline"), dir=str(run_dir), config=config, reinit=True)
    try:
        by_batch: dict[int, dict] = {}
        for r in outcome.stage_records:
            row = by_batch.setdefault(r.batch_id, {})
            row[f"stage{r.stage}/compute_ms"] = (r.compute_end - r.compute_start) * 1e3
            row[f"stage{r.stage}/recv_wait_ms"] = (r.recv_end - r.recv_start) * 1e3
        for step, bid in enumerate(sorted(by_batch)):
            wandb.log({"batch": bid, **by_batch[bid]}, step=step)
        summary = {
            "throughput/tokens_per_s": results["throughput"]["tokens_per_s"],
            "throughput/decode_tokens_per_s": results["throughput"]["decode_tokens_per_s"],
            "latency/ttft_p50_ms": results["latency"]["ttft_ms"]["p50"],
            "latency/tbt_p50_ms": results["latency"]["tbt_ms"]["p50"],
            "latency/tbt_p99_ms": results["latency"]["tbt_ms"]["p99"],
            "bubble/total_s": results["bubble"]["total_s"],
            "bubble/per_request_p50_ms": results["bubble"]["per_request_ms"]["p50"],
            "bubble/per_request_p99_ms": results["bubble"]["per_request_ms"]["p99"],
        }
        for st in results["stages"]:
            summary[f"stage{st['stage']}/bubble_s"] = st["bubble_s"]
            summary[f"stage{st['stage']}/bubble_fraction"] = st["bubble_fraction"]
        run.summary.update(summary)
        if (run_dir / "timeline.png").exists():
            wandb.log({"timeline": wandb.Image(str(run_dir / "timeline.png"))})
        if (run_dir / "trace.json").exists():
            run.save(str(run_dir / "trace.json"), base_path=str(run_dir), policy="now")
    finally:
        run.finish()
