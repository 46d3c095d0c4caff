"""The recipes in launch/ run here, on CPU with gloo: torchrun on one node, torchrun on two
"nodes" (two launchers on this machine), the DeepSpeed launcher from a hostfile, and the SLURM
batch script with faked SLURM_* variables and no srun."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
LAUNCH = REPO / "launch"
TINY = ["model=tiny", "workload.num_requests=4", "workload.min_len=12", "workload.max_len=32",
        "workload.pd_ratio=3", "sampling.ignore_eos=true", "scheduler.chunk_size=16",
        "logging.wandb.mode=disabled", "logging.progress=false", "logging.timeline=false"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def env(**extra) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "WORLD_SIZE",
                                                                   "LOCAL_RANK", "MASTER_"))}
    e.update(PATH=f"{BIN}{os.pathsep}{e.get('PATH', '')}", PYTHONUNBUFFERED="1", BACKEND="gloo",
             DEVICE="cpu")
    e.update({k: str(v) for k, v in extra.items()})
    return e


def script(name: str, env_vars: dict, args=(), timeout=240, cwd=None):
    return subprocess.run(["bash", str(LAUNCH / name), *TINY, *args], capture_output=True, text=True,
                          timeout=timeout, env=env_vars, cwd=cwd or REPO)


def check_run(run_dir: Path, stages: int = 2) -> None:
    res = json.loads((run_dir / "results.json").read_text())
    assert [s["stage"] for s in res["stages"]] == list(range(stages))
    assert all(s["compute_s"] > 0 for s in res["stages"])
    outs = [json.loads(line) for line in (run_dir / "outputs.jsonl").read_text().splitlines()]
    assert len(outs) == 4 and all(o["finish_reason"] == "length" for o in outs)


def test_scripts_are_valid_bash():
    for f in [*LAUNCH.glob("*.sh"), LAUNCH / "slurm.sbatch"]:
        r = subprocess.run(["bash", "-n", str(f)], capture_output=True, text=True)
        assert r.returncode == 0, (f.name, r.stderr)
    assert "localhost slots=2" in (LAUNCH / "hostfile").read_text()


def test_dry_runs_print_the_launcher_command():
    r = script("torchrun_single_node.sh", env(NPROC=3, DRY_RUN=1, RUN_DIR="/x"))
    assert r.returncode == 0, r.stderr
    assert "--nproc-per-node 3" in r.stderr and "parallel.pp=3" in r.stderr and "hydra.run.dir=/x" in r.stderr
    r = script("torchrun_multi_node.sh", env(NNODES=4, NODE_RANK=2, NPROC_PER_NODE=8, DRY_RUN=1))
    assert r.returncode == 0, r.stderr
    assert "--node-rank 2" in r.stderr and "parallel.pp=32" in r.stderr
    r = script("deepspeed_hostfile.sh", env(DRY_RUN=1))
    assert r.returncode == 0, r.stderr
    assert "--no_local_rank" in r.stderr and "parallel.pp=2" in r.stderr
    r = script("torchrun_multi_node.sh", env(DRY_RUN=1))  # NODE_RANK missing
    assert r.returncode != 0 and "NODE_RANK" in r.stderr


def test_torchrun_single_node(tmp_path):
    d = tmp_path / "single"
    r = script("torchrun_single_node.sh", env(NPROC=2, RUN_DIR=d))
    assert r.returncode == 0, r.stderr[-3000:]
    check_run(d)


@pytest.mark.slow
def test_torchrun_multi_node_on_localhost(tmp_path):
    d = tmp_path / "multi"
    port = free_port()
    procs = [subprocess.Popen(["bash", str(LAUNCH / "torchrun_multi_node.sh"), *TINY],
                              env=env(NNODES=2, NODE_RANK=r, NPROC_PER_NODE=1, MASTER_ADDR="127.0.0.1",
                                      MASTER_PORT=port, RUN_DIR=d),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    check_run(d)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("deepspeed", path=str(BIN)) is None, reason="deepspeed not installed")
def test_deepspeed_hostfile(tmp_path):
    d = tmp_path / "ds"
    r = script("deepspeed_hostfile.sh", env(DS_ACCELERATOR="cpu", SSH_CHECK=0, MASTER_PORT=free_port(),
                                            RUN_DIR=d))
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-3000:])
    check_run(d)


@pytest.mark.slow
def test_slurm_script_body_with_faked_slurm_env(tmp_path):
    d = tmp_path / "slurm"
    r = script("slurm.sbatch", env(SLURM_JOB_ID=4242, SLURM_NNODES=1, SLURM_JOB_NODELIST="127.0.0.1",
                                   SLURM_NODEID=0, NPROC_PER_NODE=2, SRUN="", MASTER_PORT=free_port(),
                                   RUN_DIR=d))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "job 4242: 1 node(s) x 2 stage(s)" in r.stderr
    check_run(d)


def test_slurm_script_refuses_outside_an_allocation():
    r = script("slurm.sbatch", env(SRUN=""))
    assert r.returncode != 0 and "SLURM_JOB_ID" in r.stderr
