"""The simulator (the same scheduler and driver code as the runtime) on a workload built to be
imbalanced: whole-prompt micro-batches next to decode-only ones must leave Orca with more
stage bubble than SARATHI's token-budgeted hybrid batches."""
from __future__ import annotations

import pytest

from pp_sarathi.config import RunConfig
from pp_sarathi.metrics.summary import summarize
from pp_sarathi.sim.simulate import run_simulation


def imbalanced(scheduler: str, pp: int) -> RunConfig:
    cfg = RunConfig()
    cfg.scheduler.name = scheduler
    cfg.scheduler.chunk_size = 128
    cfg.scheduler.max_batch_size = 8 * pp
    cfg.parallel.pp = pp
    w = cfg.workload
    # prompts of 400-1500 tokens that each decode for a while: Orca's batches alternate between
    # a whole prompt (long) and decodes only (short)
    w.num_requests, w.min_len, w.max_len, w.pd_ratio, w.length_dist = 48, 440, 1650, 10.0, "uniform"
    cfg.model.max_position_embeddings = 2048
    cfg.sim.jitter = 0.0
    return cfg


@pytest.mark.parametrize("pp", [2, 4])
def test_sarathi_has_less_stage_bubble_than_orca_on_an_imbalanced_workload(pp):
    res = {name: summarize(run_simulation(imbalanced(name, pp))) for name in ("orca", "sarathi")}
    frac = {name: max(s["bubble_fraction"] for s in r["stages"]) for name, r in res.items()}
    assert frac["orca"] > 0.10, frac  # the workload is imbalanced for Orca
    assert frac["sarathi"] < 0.75 * frac["orca"], frac
    assert res["sarathi"]["wall_s"] < 0.9 * res["orca"]["wall_s"]
    # same requests, same tokens
    assert res["orca"]["throughput"]["decode_tokens"] == res["sarathi"]["throughput"]["decode_tokens"]
