"""Workloads: synthetic lengths, P:D split and arrivals; JSONL and trace-CSV parsing and errors."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pp_sarathi.config import WorkloadConfig
from pp_sarathi.workload import WorkloadFileError, load_workload
from pp_sarathi.workload.synthetic import split_pd

VOCAB = 1000
EOS = (2,)


def synth(**kw):
    cfg = WorkloadConfig(name="synthetic", **kw)
    return load_workload(cfg, VOCAB, EOS)


def lengths(reqs):
    p = np.array([len(r.prompt_token_ids) for r in reqs])
    d = np.array([r.max_tokens for r in reqs])
    return p, d


# ---- synthetic -------------------------------------------------------------------------------

@pytest.mark.parametrize("dist", ["fixed", "uniform", "zipf"])
@pytest.mark.parametrize("lo,hi", [(128, 512), (1000, 4000), (2, 10), (64, 64)])
def test_lengths_within_bounds(dist, lo, hi):
    reqs = synth(num_requests=500, length_dist=dist, min_len=lo, max_len=hi, pd_ratio=10.0)
    p, d = lengths(reqs)
    total = p + d
    assert total.min() >= lo and total.max() <= hi
    assert p.min() >= 1 and d.min() >= 1
    if dist == "fixed":
        assert len(set(total.tolist())) == 1
    elif hi - lo >= 100:
        assert len(set(total.tolist())) > 50  # actually spread out


def test_zipf_favours_short_requests():
    lo, hi = 1000, 4000
    total = sum(lengths(synth(num_requests=2000, length_dist="zipf", zipf_theta=0.8, min_len=lo, max_len=hi)))
    uniform = sum(lengths(synth(num_requests=2000, length_dist="uniform", min_len=lo, max_len=hi)))
    assert np.median(total) < np.median(uniform) - 200
    assert (total < 1500).sum() > (total > 3500).sum()


@pytest.mark.parametrize("dist", ["fixed", "uniform", "zipf"])
@pytest.mark.parametrize("pd", [0.5, 1.0, 10.0, 50.0])
def test_mean_pd_ratio_close_to_config(dist, pd):
    reqs = synth(num_requests=1000, length_dist=dist, min_len=1000, max_len=4000, pd_ratio=pd)
    p, d = lengths(reqs)
    assert abs((p / d).mean() - pd) / pd < 0.05
    assert abs(p.sum() / d.sum() - pd) / pd < 0.05


def test_split_pd():
    assert split_pd(1100, 10.0) == (1000, 100)
    assert split_pd(1020, 50.0) == (1000, 20)
    assert split_pd(2, 100.0) == (1, 1)  # never an empty prompt or output
    for total in range(2, 300):
        p, d = split_pd(total, 3.0)
        assert p + d == total and p >= 1 and d >= 1


def test_static_arrivals_are_all_zero():
    reqs = synth(num_requests=20, arrival="static")
    assert [r.arrival_time for r in reqs] == [0.0] * 20


@pytest.mark.parametrize("arrival,n", [("poisson", 1000), ("gamma", 10000)])
@pytest.mark.parametrize("qps", [0.5, 4.0, 100.0])
def test_arrival_rate_close_to_qps(arrival, n, qps):
    # Gamma inter-arrivals (cv 2) are 4x as variable as exponential ones: more samples.
    reqs = synth(num_requests=n, arrival=arrival, qps=qps, gamma_cv=2.0, min_len=4, max_len=8)
    t = np.array([r.arrival_time for r in reqs])
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert abs((n - 1) / t[-1] - qps) / qps < 0.10
    gaps = np.diff(t)
    cv = gaps.std() / gaps.mean()
    assert abs(cv - (1.0 if arrival == "poisson" else 2.0)) < 0.2


def test_bursty_needs_a_positive_rate():
    with pytest.raises(ValueError, match="qps"):
        synth(num_requests=5, arrival="poisson", qps=0.0)


def test_seeded_determinism():
    kw = dict(num_requests=50, length_dist="zipf", arrival="poisson", qps=3.0, min_len=16, max_len=200)
    a, b, c = synth(seed=7, **kw), synth(seed=7, **kw), synth(seed=8, **kw)
    assert a == b
    assert a != c
    assert [r.id for r in a] == [f"req-{i}" for i in range(50)] and [r.index for r in a] == list(range(50))


def test_prompts_in_vocab_and_free_of_eos():
    reqs = load_workload(WorkloadConfig(num_requests=100, min_len=200, max_len=400), 5, (2,))
    ids = {t for r in reqs for t in r.prompt_token_ids}
    assert ids <= {0, 1, 3, 4}


@pytest.mark.parametrize("bad", [dict(num_requests=0), dict(min_len=1), dict(min_len=10, max_len=5),
                                 dict(pd_ratio=0.0), dict(length_dist="normal"), dict(arrival="burst")])
def test_bad_synthetic_config(bad):
    with pytest.raises(ValueError):
        synth(**bad)


# ---- trace CSV -------------------------------------------------------------------------------

def trace(tmp_path, text, seed=0):
    path = tmp_path / "trace.csv"
    path.write_text(text)
    return load_workload(WorkloadConfig(name="trace", path=str(path), seed=seed), VOCAB, EOS)


def test_trace_reads_counts_and_arrivals(tmp_path):
    reqs = trace(tmp_path, "num_prefill_tokens,num_decode_tokens,arrived_at\n10,3,0.0\n7,1,0.5\n\n200,9,\n")
    assert [(len(r.prompt_token_ids), r.max_tokens, r.arrival_time) for r in reqs] == [
        (10, 3, 0.0), (7, 1, 0.5), (200, 9, 0.0)]
    assert all(2 not in r.prompt_token_ids for r in reqs)
    assert trace(tmp_path, "num_prefill_tokens,num_decode_tokens\n10,3\n", seed=1)[0].arrival_time == 0.0


def test_trace_extra_columns_are_ignored(tmp_path):
    reqs = trace(tmp_path, "arrived_at,num_prefill_tokens,num_decode_tokens,pd_ratio\n1.5,4,2,2.0\n")
    assert (len(reqs[0].prompt_token_ids), reqs[0].max_tokens, reqs[0].arrival_time) == (4, 2, 1.5)


@pytest.mark.parametrize("text,line", [
    ("num_prefill_tokens,num_decode_tokens\n10,3\n7,x\n", 3),
    ("num_prefill_tokens,num_decode_tokens\n10,3\n\n\n12\n", 5),  # blank lines still count
    ("num_prefill_tokens,num_decode_tokens\n1.5,3\n", 2),
    ("num_prefill_tokens,num_decode_tokens\n10,3\n10,3\n0,3\n", 4),
    ("num_prefill_tokens,num_decode_tokens,arrived_at\n10,3,-1\n", 2),
    ("num_prefill_tokens,num_decode_tokens,arrived_at\n10,3,soon\n", 2),
    ("num_prefill_tokens,num_decode_tokens,arrived_at\n10,3,nan\n", 2),
    ("prefill,decode\n10,3\n", 1),
])
def test_malformed_trace_names_the_line(tmp_path, text, line):
    with pytest.raises(WorkloadFileError, match=rf"trace\.csv:{line}:"):
        trace(tmp_path, text)


def test_trace_missing_or_empty(tmp_path):
    with pytest.raises(WorkloadFileError, match="not found"):
        load_workload(WorkloadConfig(name="trace", path=str(tmp_path / "nope.csv")), VOCAB)
    with pytest.raises(WorkloadFileError, match="needs workload.path"):
        load_workload(WorkloadConfig(name="trace"), VOCAB)
    with pytest.raises(WorkloadFileError, match="no requests"):
        trace(tmp_path, "num_prefill_tokens,num_decode_tokens\n")


# ---- JSONL -----------------------------------------------------------------------------------

def jsonl(tmp_path, lines, max_tokens=16):
    path = tmp_path / "w.jsonl"
    path.write_text("".join((ln if isinstance(ln, str) else json.dumps(ln)) + "\n" for ln in lines))
    return load_workload(WorkloadConfig(name="jsonl", path=str(path), max_tokens=max_tokens), VOCAB, EOS)


def test_jsonl_reads_requests_in_order(tmp_path):
    reqs = jsonl(tmp_path, [{"id": "a", "prompt_token_ids": [5, 6, 7], "max_tokens": 4},
                            "",
                            {"id": 17, "prompt_token_ids": [9], "arrived_at": 1.25},
                            {"prompt_token_ids": [3, 3]}], max_tokens=9)
    assert [(r.id, r.prompt_token_ids, r.max_tokens, r.arrival_time, r.index) for r in reqs] == [
        ("a", [5, 6, 7], 4, 0.0, 0), ("17", [9], 9, 1.25, 1), ("req-2", [3, 3], 9, 0.0, 2)]


GOOD = {"id": "ok", "prompt_token_ids": [1, 2, 3], "max_tokens": 2}


@pytest.mark.parametrize("bad,why", [
    ('{"id": "b", "prompt_token_ids": [1, 2', "not valid JSON"),
    ('[1, 2, 3]', "JSON object"),
    ({"id": "b", "max_tokens": 3}, "prompt"),
    ({"id": "ok", "prompt_token_ids": [4], "max_tokens": 3}, "duplicate id"),
    ({"id": "b", "prompt_token_ids": [], "max_tokens": 3}, "prompt_token_ids"),
    ({"id": "b", "prompt_token_ids": [1, -4], "max_tokens": 3}, "prompt_token_ids"),
    ({"id": "b", "prompt_token_ids": [1, "x"], "max_tokens": 3}, "prompt_token_ids"),
    ({"id": "b", "prompt_token_ids": "1 2 3", "max_tokens": 3}, "prompt_token_ids"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": 0}, "max_tokens"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": -2}, "max_tokens"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": "8"}, "max_tokens"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": 2.5}, "max_tokens"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": True}, "max_tokens"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": 2, "arrived_at": "soon"}, "arrived_at"),
    ({"id": "b", "prompt_token_ids": [1], "max_tokens": 2, "arrived_at": -1}, "arrived_at"),
])
def test_jsonl_errors_name_the_line(tmp_path, bad, why):
    with pytest.raises(WorkloadFileError, match=rf"w\.jsonl:3: .*{why}"):
        jsonl(tmp_path, [GOOD, "   ", bad, {"id": "later", "prompt_token_ids": [1], "max_tokens": 1}])


def test_jsonl_missing_or_empty(tmp_path):
    with pytest.raises(WorkloadFileError, match="not found"):
        load_workload(WorkloadConfig(name="jsonl", path=str(tmp_path / "nope.jsonl")), VOCAB)
    with pytest.raises(WorkloadFileError, match="no requests"):
        jsonl(tmp_path, ["", "  "])


def test_unknown_workload():
    with pytest.raises(ValueError, match="synthetic, jsonl or trace"):
        load_workload(WorkloadConfig(name="sharegpt"), VOCAB)


def test_trace_window_scale_and_clip(tmp_path):
    path = tmp_path / "trace.csv"
    path.write_text("num_prefill_tokens,num_decode_tokens,arrived_at\n10,3,0.0\n7,1,2.0\n300,50,4.0\n20,5,6.0\n")
    cfg = WorkloadConfig(name="trace", path=str(path), num_requests=2, offset=1, time_scale=0.5)
    reqs = load_workload(cfg, VOCAB, EOS, max_len=128)
    assert [(len(r.prompt_token_ids), r.max_tokens, r.arrival_time) for r in reqs] == [(7, 1, 0.0), (127, 1, 1.0)]
    cfg = WorkloadConfig(name="trace", path=str(path), num_requests=0, time_scale=0.0, clip_to_context=False)
    reqs = load_workload(cfg, VOCAB, EOS, max_len=128)
    assert len(reqs) == 4 and {r.arrival_time for r in reqs} == {0.0} and reqs[2].max_tokens == 50
