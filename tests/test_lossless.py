"""Scheduling is lossless on the real model (pp=1): every policy, and a KV cache far too small
for the workload (preemption + recompute), give the same greedy tokens."""
from __future__ import annotations

import pytest

from conftest import make_requests, random_prompts, run_engine

LENGTHS = [5, 23, 12, 40, 9, 31, 17, 3]
MAX_TOKENS = [9, 4, 12, 6, 10, 3, 8, 11]


@pytest.fixture(scope="module")
def workload(tmp_path_factory, llama_ckpt):
    from conftest import write_jsonl
    prompts = random_prompts(LENGTHS, 300, seed=7)
    path = write_jsonl(tmp_path_factory.mktemp("lossless") / "w.jsonl", make_requests(prompts, MAX_TOKENS))
    return llama_ckpt, path


def _tokens(out):
    return [s.output_token_ids for s in out.sequences]


def test_all_five_policies_give_identical_greedy_outputs(workload, run_config):
    ckpt, path = workload
    outputs = {}
    for name in ("orca", "vllm", "ft", "sarathi", "sarathi_serve"):
        out = run_engine(run_config(ckpt, path, scheduler=name, chunk_size=8, max_batch_size=4))
        assert [s.finish_reason for s in out.sequences] == ["length"] * len(LENGTHS), name
        assert [len(t) for t in _tokens(out)] == MAX_TOKENS, name
        outputs[name] = _tokens(out)
    reference = outputs.pop("sarathi")
    for name, toks in outputs.items():
        assert toks == reference, f"{name} differs from sarathi"


@pytest.mark.parametrize("scheduler", ["sarathi", "sarathi_serve", "vllm"])
def test_tiny_kv_cache_preempts_and_still_matches(workload, run_config, scheduler):
    ckpt, path = workload
    roomy = run_engine(run_config(ckpt, path, scheduler=scheduler, chunk_size=8, max_batch_size=8))
    # 16 blocks of 4 tokens: the longest request (40 + 6) needs 12, all eight together ~90.
    tight = run_engine(run_config(ckpt, path, scheduler=scheduler, chunk_size=8, max_batch_size=8,
                                  num_blocks=16))
    assert sum(s.num_preemptions for s in tight.sequences) > 0, "the cache was not tight enough"
    assert [s.finish_reason for s in tight.sequences] == ["length"] * len(LENGTHS)
    assert _tokens(tight) == _tokens(roomy)
