"""Bad input fails early with a clear message, or ends just the offending request."""
from __future__ import annotations

import pytest

from conftest import make_requests, random_prompts, run_engine
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


def test_bad_config_values_rejected_before_running(llama_ckpt, workload_file, run_config):
    wl = workload_file(make_requests([[5, 6, 7]], 2))
    cfg = run_config(llama_ckpt, wl, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        prepare(cfg)
    cfg = run_config(llama_ckpt, wl, dtype="float8")
    with pytest.raises(ValueError, match="float8"):
        prepare(cfg)
    cfg = run_config(llama_ckpt, wl, temperature=-1.0)
    with pytest.raises(ValueError, match="temperature"):
        prepare(cfg)
