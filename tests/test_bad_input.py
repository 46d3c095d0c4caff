"""Bad input fails early with a clear message, or ends just the offending request."""
from __future__ import annotations

import copy

import pytest

from conftest import make_requests, random_prompts, run_engine
from pp_sarathi.config import (CompareConfig, ModelConfig, ParallelConfig, RunConfig, SamplingConfig,
                               SchedulerConfig, SimConfig, WorkloadConfig)
from pp_sarathi.runtime.prepare import prepare
from pp_sarathi.workload.files import WorkloadFileError


def test_missing_model_path(tmp_path, workload_file, run_config):
    wl = workload_file(make_requests([[5, 6, 7]], 2))
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError) as info:
        prepare(run_config(missing, wl))
    msg = str(info.value)
    assert str(missing) in msg and "model.path" in msg


def test_model_dir_without_config(tmp_path, workload_file, run_config):
    wl = workload_file(make_requests([[5, 6, 7]], 2))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        prepare(run_config(tmp_path / "empty", wl))


def test_missing_workload_file(tmp_path, llama_ckpt, run_config):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(WorkloadFileError, match="nope.jsonl"):
        prepare(run_config(llama_ckpt, missing))


@pytest.mark.parametrize("line, why", [
    ("{not json", "not valid JSON"),
    ('{"id": "a", "max_tokens": 3}', "prompt_token_ids"),
    ('{"id": "a", "prompt_token_ids": [], "max_tokens": 3}', "prompt_token_ids"),
    ('{"id": "a", "prompt_token_ids": [1, -2], "max_tokens": 3}', "prompt_token_ids"),
    ('{"id": "a", "prompt_token_ids": [1, 2], "max_tokens": 0}', "max_tokens"),
])
def test_malformed_workload_line(line, why, tmp_path, llama_ckpt, run_config):
    path = tmp_path / "w.jsonl"
    path.write_text('{"id": "ok", "prompt_token_ids": [4, 5], "max_tokens": 2}\n' + line + "\n")
    with pytest.raises(WorkloadFileError, match=why) as info:
        prepare(run_config(llama_ckpt, path))
    assert "w.jsonl:2" in str(info.value)  # names file and line


def test_too_long_prompt_ends_only_that_request(llama_ckpt, llama_hf, workload_file, run_config):
    max_pos = llama_hf.config.max_position_embeddings  # 128
    vocab = llama_hf.config.vocab_size
    prompts = random_prompts([10, max_pos + 20, 17, max_pos], vocab, seed=5)
    wl = workload_file(make_requests(prompts, 5))
    out = run_engine(run_config(llama_ckpt, wl))
    reasons = [s.finish_reason for s in out.sequences]
    assert [s.request.id for s in out.sequences] == ["r0", "r1", "r2", "r3"]
    for i in (1, 3):
        assert reasons[i].startswith("error:"), reasons
        assert str(len(prompts[i])) in reasons[i], reasons[i]  # says how long it was
        assert out.sequences[i].output_token_ids == []
    for i in (0, 2):
        assert reasons[i] == "length", reasons
        assert len(out.sequences[i].output_token_ids) == 5


def test_generation_stops_at_context_limit(llama_ckpt, llama_hf, workload_file, run_config):
    """A prompt that fits but leaves room for fewer than max_tokens stops at the context end."""
    max_pos = llama_hf.config.max_position_embeddings
    prompts = random_prompts([max_pos - 3, 6], llama_hf.config.vocab_size, seed=6)
    out = run_engine(run_config(llama_ckpt, workload_file(make_requests(prompts, 10))))
    long, short = out.sequences
    assert long.finish_reason == "length"
    assert len(long.request.prompt_token_ids) + len(long.output_token_ids) == max_pos
    assert short.finish_reason == "length" and len(short.output_token_ids) == 10


def test_token_id_outside_vocab_ends_only_that_request(llama_ckpt, llama_hf, workload_file, run_config):
    vocab = llama_hf.config.vocab_size
    out = run_engine(run_config(llama_ckpt, workload_file(make_requests([[3, 4, vocab + 1], [7, 8, 9]], 3))))
    bad, good = out.sequences
    assert bad.finish_reason.startswith("error:") and str(vocab + 1) in bad.finish_reason
    assert good.finish_reason == "length" and len(good.output_token_ids) == 3


@pytest.mark.parametrize("build, needle", [
    (lambda: SchedulerConfig(chunk_size=0), "scheduler.chunk_size must be >= 1"),
    (lambda: SchedulerConfig(name="round_robin"), "unknown scheduler.name 'round_robin': choose orca, vllm"),
    (lambda: ModelConfig(dtype="float8"), "unknown model.dtype 'float8': choose float32, bfloat16 or float16"),
    (lambda: SamplingConfig(temperature=-1.0), "sampling.temperature must be >= 0"),
    (lambda: SamplingConfig(top_p=0.0), "sampling.top_p must be in (0, 1]"),
    (lambda: WorkloadConfig(min_len=10, max_len=5), "workload.min_len <= workload.max_len"),
    (lambda: WorkloadConfig(arrival="poisson", qps=0.0), "workload.qps must be > 0"),
    (lambda: ParallelConfig(pp=2, partition=[4]), "parallel.partition must be a list of 2 positive"),
    (lambda: CompareConfig(schedulers=["sarathi", "vllm"]), "include compare.baseline=orca"),
    (lambda: SimConfig(validate_against="runs/x"), "sim.validate_against needs sim.profile"),
    (lambda: RunConfig(device="gpu"), "device must be auto, cpu, cuda or cuda:N"),
])
def test_bad_config_values_rejected_when_the_config_is_built(build, needle):
    with pytest.raises(ValueError) as info:
        build()
    assert needle in str(info.value)


def test_config_assigned_after_building_is_checked_again(llama_ckpt, workload_file, run_config):
    cfg = run_config(llama_ckpt, workload_file(make_requests([[5, 6, 7]], 2)))
    cfg.check()
    assert cfg.model.dtype == "float32" and cfg.scheduler.name == "sarathi"  # plain strings became choices
    for group, key, value, needle in [("scheduler", "chunk_size", 0, "chunk_size"),
                                      ("model", "dtype", "float8", "float8"),
                                      ("sampling", "temperature", -1.0, "temperature")]:
        bad = copy.deepcopy(cfg)
        setattr(getattr(bad, group), key, value)
        with pytest.raises(ValueError, match=needle):
            bad.check()


def test_synthetic_rules_do_not_bind_file_workloads():
    WorkloadConfig(name="jsonl", num_requests=0, min_len=0)  # the synthetic knobs are unused there
