"""Stage threads bound to their own cores (runtime/cores.py, ``parallel.bind_cores``): the core
assignment, and real runs whose stages report the CPUs their threads may run on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pp_sarathi.config import ParallelConfig, RunConfig
from pp_sarathi.runtime.cores import USER_OMP_ENV, assign_cores, cpulist, plan_cores, usable_cpus

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["model=tiny", "workload.num_requests=4", "workload.min_len=12", "workload.max_len=32",
        "workload.pd_ratio=3", "sampling.ignore_eos=true", "scheduler.chunk_size=16",
        "logging.wandb.mode=disabled", "logging.progress=false", "logging.trace=false",
        "logging.timeline=false"]
CPUS = usable_cpus()
needs_two_cores = pytest.mark.skipif(len(CPUS) < 2 or not hasattr(os, "sched_setaffinity"),
                                     reason=f"needs 2 usable CPUs and sched_setaffinity; this process may use {len(CPUS)}")


def cli(args, timeout=240):
    return subprocess.run([str(BIN / "pp-sarathi"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_assign_cores_takes_consecutive_blocks_of_the_sorted_cpus():
    assert assign_cores([3, 1, 2, 0], 0, 2) == [0, 1]
    assert assign_cores([3, 1, 2, 0], 1, 2) == [2, 3]
    assert assign_cores([8, 9, 12, 13], 1, 1) == [9]  # a taskset-narrowed mask: its own CPUs
    with pytest.raises(ValueError, match="local stage 2"):
        assign_cores([0, 1, 2, 3], 2, 2)


def test_plan_cores_follows_bind_cores():
    def plan(mode, stages, threads=0, device="cpu", cpus=range(4)):
        return plan_cores(ParallelConfig(pp=stages, threads_per_stage=threads, bind_cores=mode), stages, device, cpus)

    assert plan("auto", 2) == [[0, 1], [2, 3]]  # cores ÷ stages threads each
    assert plan("auto", 3) == [[0], [1], [2]]
    assert plan("auto", 2, threads=1, cpus=[6, 4, 5, 7]) == [[4], [5]]
    assert plan("auto", 5) is None  # does not fit: the threads float
    assert plan("auto", 2, threads=3) is None
    assert plan("auto", 2, device="cuda") is None
    assert plan("off", 2) is None
    assert plan("on", 2, device="cuda") == [[0, 1], [2, 3]]
    with pytest.raises(ValueError, match=r"bind_cores=on: 2 local stages x 3 threads need 6 cores, .* may use 4 \(0-3\)"):
        plan("on", 2, threads=3)


def test_cpulist():
    assert cpulist([5, 0, 1, 2, 8, 9]) == "0-2,5,8-9"
    assert cpulist([3]) == "3"


def test_bind_cores_is_a_checked_choice():
    with pytest.raises(ValueError, match="parallel.bind_cores 'always': choose auto, on or off"):
        ParallelConfig(bind_cores="always")
    with pytest.raises(ValueError, match="parallel.threads_per_stage must be >= 0"):
        ParallelConfig(threads_per_stage=-1)
    assert RunConfig().parallel.bind_cores == "auto"


def _thread_masks() -> dict[int, set[int]]:
    return {int(t): os.sched_getaffinity(int(t)) for t in os.listdir("/proc/self/task")}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs sched_setaffinity")
def test_pp1_binds_this_process_for_the_run_and_gives_the_masks_back():
    from pp_sarathi.api.config import build_config
    from pp_sarathi.runtime.launch import serve_local
    from pp_sarathi.runtime.prepare import prepare

    threads = min(2, len(CPUS))
    cfg = build_config("tiny", 1, "sarathi", {"device": "cpu", "workload.num_requests": 2, "workload.min_len": 12,
                                              "workload.max_len": 24, "threads_per_stage": threads,
                                              "parallel.bind_cores": "on", "logging.progress": False})
    before = _thread_masks()
    during = []
    outcome = serve_local(prepare(cfg), lambda seqs: during.append(os.sched_getaffinity(0)))
    report = outcome.stage_cpus[0]
    assert {k: report[k] for k in ("threads", "cores", "cores_bound")} == {"threads": threads, "cores": CPUS[:threads],
                                                                          "cores_bound": True}
    # the run's CPU, booked from the clock's origin: some, and no more than its threads could use
    assert 0 < report["cpu_user_s"] + report["cpu_sys_s"] <= outcome.wall_s * threads + 0.5, report
    if not any(k in os.environ for k in USER_OMP_ENV):
        # the driver's (and the computing) thread heads the OpenMP team: pinned to the first core
        assert during and all(mask == {CPUS[0]} for mask in during), during
    after = _thread_masks()
    assert all(after[t] == m for t, m in before.items() if t in after), (before, after)
    assert all(m == set(CPUS) for t, m in after.items() if t not in before)


@needs_two_cores
def test_pp2_stages_run_on_their_own_cores(tmp_path):
    run = tmp_path / "run"
    r = cli(["run", "parallel.pp=2", "parallel.threads_per_stage=1", "parallel.bind_cores=on", *TINY,
             f"hydra.run.dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    stages = json.loads((run / "results.json").read_text())["stages"]
    # read inside each stage process at the end of the run: every thread's mask, united
    assert [(s["cores"], s["threads"], s["cores_bound"]) for s in stages] == [([CPUS[0]], 1, True),
                                                                              ([CPUS[1]], 1, True)]
    # each stage process books its own CPU (the driver's thread runs in stage 0's): some on both
    assert all(s["cpu_user_s"] > 0 and s["cpu_sys_s"] >= 0 and s["page_faults"] >= 0 for s in stages), stages
    log = r.stdout + r.stderr
    assert f"stage 0: 1 thread bound to core {CPUS[0]}" in log and f"stage 1: 1 thread bound to core {CPUS[1]}" in log


@needs_two_cores
def test_api_stages_run_on_their_own_cores():
    from pp_sarathi import LLM, SamplingParams

    with LLM(model="tiny", pp=2, chunk_size=8, threads_per_stage=1, **{"parallel.bind_cores": "on"}) as llm:
        out = llm.generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))
    assert [s["cores"] for s in out.metrics["stages"]] == [[CPUS[0]], [CPUS[1]]]


def test_bind_cores_on_that_does_not_fit_fails_before_stages_start(tmp_path):
    run = tmp_path / "run"
    r = cli(["run", "parallel.pp=2", f"parallel.threads_per_stage={len(CPUS)}", "parallel.bind_cores=on", *TINY,
             f"hydra.run.dir={run}"])
    assert r.returncode == 2, r.stderr[-3000:]
    assert (f"parallel.bind_cores=on: 2 local stages x {len(CPUS)} threads need {2 * len(CPUS)} cores"
            in r.stderr), r.stderr[-3000:]
    assert "bound to" not in r.stdout + r.stderr and not (run / "outputs.jsonl").exists()
