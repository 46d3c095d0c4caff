"""Pipeline runtime with real stage processes over gloo on CPU."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["model=tiny", "workload.num_requests=5", "workload.min_len=12", "workload.max_len=40",
        "workload.pd_ratio=3", "sampling.ignore_eos=true", "scheduler.chunk_size=16",
        "logging.wandb.mode=disabled", "logging.progress=false", "logging.timeline=false"]


def cli(args, run_dir, launcher=None, timeout=240, env=None):
    cmd = (launcher or [str(BIN / "pp-sarathi")]) + args + [f"hydra.run.dir={run_dir}"]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=full_env)


def outputs(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "outputs.jsonl").read_text().splitlines()]


def tokens(run_dir) -> list[list[int]]:
    return [o["output_token_ids"] for o in outputs(run_dir)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """pp=1 greedy outputs of the tiny model on the tiny workload."""
    d = tmp_path_factory.mktemp("pp1")
    r = cli(["run", "parallel.pp=1", "scheduler=sarathi"] + TINY, d)
    assert r.returncode == 0, r.stderr
    return tokens(d)


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["orca", "vllm", "ft", "sarathi", "sarathi_serve"])
def test_pipeline_matches_pp1_for_every_scheduler(tmp_path, reference, scheduler):
    # pp 2 and 3 are checked against transformers in test_pipeline_exact.py
    for pp in (4,):
        d = tmp_path / f"pp{pp}"
        r = cli(["run", f"parallel.pp={pp}", f"scheduler={scheduler}"] + TINY, d)
        assert r.returncode == 0, r.stderr[-3000:]
        assert tokens(d) == reference, f"{scheduler} pp={pp}"
        res = json.loads((d / "results.json").read_text())
        assert [s["stage"] for s in res["stages"]] == list(range(pp))
        assert all(s["num_batches"] == res["batches"]["count"] for s in res["stages"])
        assert all(o["finish_reason"] == "length" for o in outputs(d))


def test_torchrun_launch(tmp_path, reference):
    d = tmp_path / "torchrun"
    r = cli(["run", "parallel.pp=2"] + TINY, d,
            launcher=[str(BIN / "torchrun"), "--nproc-per-node", "2", "-m", "pp_sarathi"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert tokens(d) == reference
    trace = json.loads((d / "trace.json").read_text())
    assert {e["tid"] for e in trace["traceEvents"] if e.get("ph") == "X" and e["cat"] != "driver"} == {0, 1}
    assert {e["tid"] for e in trace["traceEvents"] if e.get("ph") == "X" and e["cat"] == "driver"} == {2}


@pytest.mark.slow
def test_torchrun_two_nodes_on_localhost(tmp_path, reference):
    d = tmp_path / "nodes"
    port = 29400 + os.getpid() % 500
    common = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              f"--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", f"pp{os.getpid()}"]
    args = ["run", "parallel.pp=2"] + TINY + [f"hydra.run.dir={d}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([str(BIN / "torchrun"), *common, "-m", "pp_sarathi", *args], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [r[1][-2000:] for r in results]
    assert tokens(d) == reference


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed", path=str(BIN)) is None, reason="deepspeed not installed")
def test_deepspeed_launcher(tmp_path, reference):
    d = tmp_path / "ds"
    r = cli(["run", "parallel.pp=2"] + TINY, d, env={"DS_ACCELERATOR": "cpu"},
            launcher=[str(BIN / "deepspeed"), "--no_local_rank", "--num_gpus", "2", "--master_port",
                      str(29900 + os.getpid() % 90), "--module", "pp_sarathi"])
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    assert tokens(d) == reference


def test_invalid_settings_fail_before_processes_start(tmp_path):
    cases = {
        "parallel.pp=9": "larger than the model's 4 layers",
        "scheduler.chunk_size=0": "chunk_size",
        "parallel.partition=[1,1]": "must list 2 positive layer counts",
        "parallel.backend=nccl": "GPUs",
    }
    for override, needle in cases.items():
        start = time.monotonic()
        r = cli(["run", "parallel.pp=2"] + TINY + [override], tmp_path / override.split("=")[0])
        assert r.returncode == 2, (override, r.stderr[-2000:])
        assert needle in r.stderr + r.stdout, (override, r.stderr[-2000:])
        assert not list(Path(tmp_path).rglob("outputs.jsonl")), "no run may start"
        assert time.monotonic() - start < 60


@pytest.mark.slow
def test_killed_stage_ends_run_with_partial_outputs(tmp_path):
    psutil = pytest.importorskip("psutil")
    d = tmp_path / "kill"
    n = 16
    args = ["run", "parallel.pp=3", "parallel.timeout_s=20", f"workload.num_requests={n}",
            "workload.min_len=100", "workload.max_len=200", "scheduler.max_batch_size=2",
            "model=tiny", "model.hidden_size=256", "model.intermediate_size=768", "sampling.ignore_eos=true",
            "scheduler.chunk_size=8", "logging.wandb.mode=disabled", "logging.progress=false",
            "logging.timeline=false", f"hydra.run.dir={d}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([str(BIN / "pp-sarathi"), *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = d / "outputs.partial.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if partial.exists() and partial.read_text().count("\n") >= 2:
            break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("no request finished in time: " + proc.stderr.read()[-2000:])
    stages = [c for c in psutil.Process(proc.pid).children()
              if "resource_tracker" not in " ".join(c.cmdline())]
    stages.sort(key=lambda c: c.create_time())
    assert len(stages) == 3, [c.cmdline() for c in stages]
    stages[1].send_signal(signal.SIGKILL)
    start = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 20 + 10, "other stages did not exit within timeout_s + 10 s"
    assert proc.returncode != 0
    assert "stage 1 failed" in err, err[-3000:]
    recs = outputs(d)
    assert len(recs) == n
    done = [r for r in recs if r["finish_reason"] == "length"]
    failed = [r for r in recs if r["finish_reason"].startswith("error")]
    assert len(done) >= 2 and len(failed) >= 1 and len(done) + len(failed) == n
    # rank 0 survived the failure: the micro-batches and its own stage records up to it are kept
    res = json.loads((d / "results.json").read_text())
    assert res["error"] and res["batches"]["count"] >= len(done)
    assert res["stages"][0]["num_batches"] >= res["batches"]["count"]
    assert res["throughput"]["decode_tokens"] > 0


def _args_without(names, args):
    return [a for a in args if a.split("=")[0] not in names]


@pytest.mark.slow
def test_sparse_arrivals_do_not_kill_idle_stages(tmp_path):
    """Requests further apart than parallel.timeout_s: idle stages wait, every request finishes."""
    from pp_sarathi.config import WorkloadConfig
    from pp_sarathi.workload import load_workload

    timeout_s, qps, n = 1, 0.5, 3
    wl = WorkloadConfig(num_requests=n, arrival="poisson", qps=qps, min_len=12, max_len=40, pd_ratio=3)
    arrivals = sorted(r.arrival_time for r in load_workload(wl, 512, []))
    assert max(b - a for a, b in zip(arrivals, arrivals[1:])) > 2 * timeout_s  # the test means something
    d = tmp_path / "sparse"
    r = cli(["run", "parallel.pp=2", f"parallel.timeout_s={timeout_s}", "workload.arrival=poisson",
             f"workload.qps={qps}", f"workload.num_requests={n}"] + _args_without({"workload.num_requests"}, TINY), d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [o["finish_reason"] for o in outputs(d)] == ["length"] * n


def _stage_pids(proc, stages: int, timeout: float = 60) -> list[int]:
    psutil = pytest.importorskip("psutil")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = [c for c in psutil.Process(proc.pid).children()
                if "resource_tracker" not in " ".join(c.cmdline())]
        if len(kids) == stages:
            return [c.pid for c in kids]
        time.sleep(0.1)
    pytest.fail("stage processes did not start")


@pytest.mark.slow
@pytest.mark.parametrize("sig, to_group", [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGINT, False)],
                         ids=["sigint-to-group", "sigterm-to-launcher", "sigint-to-launcher"])
def test_signal_stops_a_run_and_keeps_what_finished(tmp_path, sig, to_group):
    """Ctrl-C (SIGINT to the process group), or SIGTERM or SIGINT to the launcher alone: stages
    gone within seconds; every request in outputs.jsonl, unfinished ones naming the signal;
    records kept."""
    psutil = pytest.importorskip("psutil")
    d = tmp_path / "sig"
    n = 200
    args = ["run", "parallel.pp=2", f"workload.num_requests={n}", "model.hidden_size=256",
            "model.intermediate_size=768"] + _args_without({"workload.num_requests"}, TINY)
    # SIGINT at its default even where this test runs as a background job (which ignores it).
    proc = subprocess.Popen([str(BIN / "pp-sarathi"), *args, f"hydra.run.dir={d}"], cwd=REPO,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stages = _stage_pids(proc, 2)
    partial = d / "outputs.partial.jsonl"
    deadline = time.monotonic() + 120
    while not (partial.exists() and partial.read_text().count("\n") >= 3):
        assert time.monotonic() < deadline and proc.poll() is None, "no request finished in time"
        time.sleep(0.05)
    start = time.monotonic()
    if to_group:
        os.killpg(proc.pid, sig)
    else:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - start < 15, err[-2000:]
    assert proc.returncode == 128 + sig.value, (proc.returncode, err[-2000:])  # as docs/guide.md says
    assert not [p for p in stages if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    outs = outputs(d)
    assert len(outs) == n
    reasons = [o["finish_reason"] for o in outs]
    assert reasons.count("length") >= 3
    assert set(reasons) <= {"length", f"error: interrupted by {sig.name}"}, set(reasons)
    assert f"error: interrupted by {sig.name}" in reasons
    res = json.loads((d / "results.json").read_text())
    assert res["batches"]["count"] > 0 and all(s["num_batches"] > 0 for s in res["stages"])
    assert (d / "trace.json").exists()
