"""The Python API: ``LLM(...).generate(...)`` on stage processes that start once, serve several
calls, and stop on close / with-exit / interpreter exit; failures are errors, never hangs."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("tokenizers", reason="text prompts need the tokenizers package")

from conftest import run_engine  # noqa: E402
from test_text import PROMPTS, text_requests, word_tokenizer  # noqa: E402

from pp_sarathi import LLM, SamplingParams  # noqa: E402
from pp_sarathi.model.tokenizer import TokenizerError  # noqa: E402
from pp_sarathi.runtime.session import StageFailure  # noqa: E402

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def wait_gone(pids, timeout=15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return [p for p in pids if alive(p)]


@pytest.fixture(scope="module")
def api_ckpt(llama_ckpt, llama_hf, tmp_path_factory):
    d = tmp_path_factory.mktemp("api_ckpt") / "llama"
    shutil.copytree(llama_ckpt, d)
    word_tokenizer(llama_hf.config.vocab_size).save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(scope="module")
def llm(api_ckpt):
    with LLM(model=str(api_ckpt), pp=2, scheduler="sarathi", chunk_size=8, max_batch_size=8,
             block_size=4) as engine:
        yield engine


def test_generate_twice_on_the_same_stages(llm, api_ckpt, workload_file, run_config):
    pids = llm.stage_pids
    assert len(pids) == 2 and all(alive(p) for p in pids)
    # Call 1: text prompts, greedy; the reference is the one-shot engine on the same prompts.
    ref = run_engine(run_config(api_ckpt, workload_file(text_requests(max_tokens=6)), ignore_eos=False))
    out = llm.generate(PROMPTS, SamplingParams(max_tokens=6, temperature=0))
    assert [o.index for o in out] == [0, 1, 2] and [o.prompt for o in out] == PROMPTS
    for o, seq in zip(out, ref.sequences):
        assert o.prompt_token_ids == seq.request.prompt_token_ids
        assert o.token_ids == seq.output_token_ids
        assert o.text == seq.text == llm.tokenizer.decode(o.token_ids)
        assert o.finish_reason == seq.finish_reason and o.logprobs is None
    m = out.metrics
    assert m["throughput"]["tokens_per_s"] > 0 and len(m["stages"]) == 2
    assert "bubble_s" in m["stages"][0] and "total_s" in m["bubble"] and m["latency"]["ttft_ms"]["p50"]
    # Call 2 on the same processes: token-id prompt, logprobs, and a stop string.
    free = llm.generate([[5, 6, 7, 8, 9]], SamplingParams(max_tokens=8, ignore_eos=True))[0]
    stop = llm.tokenizer.decode(free.token_ids[2:3])
    out2 = llm.generate([[5, 6, 7, 8, 9], "a dog ran"],
                        SamplingParams(max_tokens=8, ignore_eos=True, logprobs=3, stop=[stop]))
    first = next(j for j in range(1, 9) if stop in llm.tokenizer.decode(free.token_ids[:j]))
    assert out2[0].finish_reason == "stop" and out2[0].token_ids == free.token_ids[:first]
    assert len(out2[0].logprobs) == first and all(len(lp) >= 3 for lp in out2[0].logprobs)
    assert out2[0].token_ids[-1] in out2[0].logprobs[-1]
    assert llm.stage_pids == pids and all(alive(p) for p in pids)  # no restart


def test_text_prompt_without_tokenizer_is_refused_in_the_caller():
    with LLM(model="tiny", pp=1, chunk_size=8) as engine:
        with pytest.raises(TokenizerError, match="embedded random-init model has no tokenizer"):
            engine.generate(["hello"])
        with pytest.raises(TokenizerError, match="SamplingParams.stop need"):
            engine.generate([[5, 6]], SamplingParams(stop=["x"]))
        out = engine.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))  # still serving
        assert len(out[0].token_ids) == 3 and out[0].text is None
        pids = engine.stage_pids
    assert engine.closed and wait_gone(pids) == []  # the with block closed it


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(no_such_option=1), TypeError, "unknown option 'no_such_option'"),
    ({"scheduler.no_such_key": 1}, TypeError, "unknown option 'scheduler.no_such_key'"),
    (dict(scheduler="fifo"), ValueError, "unknown scheduler preset 'fifo'"),
    (dict(pp=0), ValueError, "pp must be a positive integer"),
    (dict(model="/no/such/ckpt"), FileNotFoundError, "/no/such/ckpt"),
])
def test_bad_options_fail_before_any_stage_starts(kwargs, error, match):
    kwargs = {"model": "tiny", **kwargs}
    with pytest.raises(error, match=match):
        LLM(**kwargs)


def test_bad_sampling_params():
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)


def test_dead_stage_raises_instead_of_hanging(api_ckpt):
    engine = LLM(model=str(api_ckpt), pp=2, chunk_size=8, timeout_s=20)
    pids = engine.stage_pids
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(StageFailure, match="stage 1"):
        engine.generate(["the cat sat"], SamplingParams(max_tokens=4))
    assert time.monotonic() - t0 < 30
    assert engine.closed and wait_gone(pids) == []
    with pytest.raises(StageFailure, match="closed"):
        engine.generate(["the cat sat"])


def test_stages_stop_at_interpreter_exit(tmp_path):
    script = tmp_path / "leave_open.py"
    script.write_text(textwrap.dedent("""
        from pp_sarathi import LLM, SamplingParams
        if __name__ == "__main__":
            llm = LLM(model="tiny", pp=2, chunk_size=8)
            llm.generate([[5, 6, 7]], SamplingParams(max_tokens=2))
            print("PIDS", *llm.stage_pids, flush=True)
            # no close(): the interpreter exits with the stages still up
    """))
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=180, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    pids = [int(p) for p in r.stdout.split("PIDS", 1)[1].split()]
    assert len(pids) == 2 and wait_gone(pids) == []
