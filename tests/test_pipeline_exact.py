"""Real pipelines (gloo, one process per stage) against transformers, every policy, and the
stage records they produce: consistent, and with micro-batches overlapping across stages."""
from __future__ import annotations

import pytest

from conftest import make_requests, random_prompts, run_pipeline
from test_model_reference import MAX_TOKENS, PROMPT_LENS, assert_run_matches_hf

K = 3


def check_records(out) -> None:
    """Every stage record is ordered (receive <= compute <= send), stage s computes a micro-batch
    only after stage s-1 finished it, and every stage ran every micro-batch."""
    eps = 1e-9
    end = {(r.stage, r.batch_id): r.compute_end for r in out.stage_records}
    for r in out.stage_records:
        assert r.recv_start <= r.recv_end + eps <= r.compute_start + 2 * eps, r
        assert r.compute_start <= r.compute_end <= r.send_start + eps <= r.send_end + 2 * eps, r
        if r.stage > 0:
            assert r.compute_start >= end[(r.stage - 1, r.batch_id)] - eps, r
    stages = {r.stage for r in out.stage_records}
    assert stages == set(range(out.num_stages))
    for s in stages:
        assert {r.batch_id for r in out.stage_records if r.stage == s} == {b.batch_id for b in out.batches}


def overlapping_pairs(out) -> list[tuple[int, int]]:
    """(batch on stage s, batch on a later stage) pairs whose compute overlaps in time."""
    return [(a.batch_id, b.batch_id) for a in out.stage_records for b in out.stage_records
            if a.stage < b.stage and a.batch_id != b.batch_id
            and a.compute_start < b.compute_end and b.compute_start < a.compute_end]


@pytest.mark.slow
@pytest.mark.parametrize("pp", [2, 3])
@pytest.mark.parametrize("scheduler", ["orca", "vllm", "ft", "sarathi", "sarathi_serve"])
def test_pipeline_matches_hf(pp, scheduler, hf_checkpoint, workload_file, run_config, tmp_path):
    path, hf_model = hf_checkpoint("llama")  # init range 0.4: outputs depend on the context
    prompts = random_prompts(PROMPT_LENS, hf_model.config.vocab_size, seed=1234)
    cfg = run_config(path, workload_file(make_requests(prompts, MAX_TOKENS)), scheduler=scheduler,
                     chunk_size=8, logprobs=K)
    out = run_pipeline(cfg, pp, tmp_path)
    assert out.error is None
    assert_run_matches_hf(out, hf_model, prompts, MAX_TOKENS, K)
    check_records(out)


@pytest.mark.slow
@pytest.mark.parametrize("pp", [2, 3])
def test_micro_batches_overlap_across_stages(pp, run_config, tmp_path):
    """Stages compute different micro-batches at the same time (the point of a pipeline), on a
    model whose stage steps take longer than a hop between processes."""
    from pp_sarathi.metrics.summary import summarize
    from pp_sarathi.runtime.prepare import prepare

    cfg = run_config("unused", "unused")
    cfg.model.path = None
    cfg.model.name = "tiny"
    cfg.model.hidden_size, cfg.model.intermediate_size, cfg.model.num_layers = 512, 1536, 6
    cfg.workload.name = "synthetic"
    cfg.workload.num_requests, cfg.workload.min_len, cfg.workload.max_len = 12, 64, 160
    cfg.scheduler.chunk_size, cfg.scheduler.max_batch_size = 32, 12
    prepare(cfg)  # writes the checkpoint once, before the stage processes start
    out = run_pipeline(cfg, pp, tmp_path)
    assert out.error is None
    check_records(out)
    assert len(overlapping_pairs(out)) >= 3, "micro-batches did not overlap across stages"
    res = summarize(out)
    for st in res["stages"]:
        causes = st["bubble_causes_s"]
        assert sum(causes.values()) == pytest.approx(st["bubble_s"], abs=1e-6), st
    assert res["driver"]["busy_s"] > 0 and res["driver"]["schedule_ms"]["count"] == len(out.batches)
