"""wandb: one offline run per experiment from rank 0 with per-iteration stage timings, summary
metrics, the timeline image and the trace file, all inside the run dir; `disabled` writes no
wandb dir. Offline runs are read back from wandb's own .wandb file (a LevelDB-style log of
protobuf records)."""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from pp_sarathi.cli.wandb_log import iteration_rows
from pp_sarathi.metrics.summary import summarize
from pp_sarathi.metrics.records import StageRecord
from pp_sarathi.metrics.records import BatchRecord
from pp_sarathi.metrics.records import RunOutcome

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["model=tiny", "workload.num_requests=4", "workload.min_len=12", "workload.max_len=32",
        "workload.pd_ratio=3", "sampling.ignore_eos=true", "scheduler.chunk_size=16", "logging.progress=false"]


def cli(args, tmp_path: Path, timeout=240):
    """Run with a private HOME and cwd so that anything wandb writes outside the run dir shows."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir(exist_ok=True)
    cwd.mkdir(exist_ok=True)
    real_home = Path.home()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "XDG_"))}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1",
               PP_SARATHI_CACHE=os.environ.get("PP_SARATHI_CACHE", str(real_home / ".cache" / "pp_sarathi")),
               MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR", str(real_home / ".config" / "matplotlib")))
    return subprocess.run([str(BIN / "pp-sarathi"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


def assert_nothing_outside(tmp_path: Path) -> None:
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    leaked = [p for p in home.rglob("*") if "wandb" in p.name.lower()]
    leaked += [p for p in cwd.iterdir() if p.name in ("wandb", "artifacts")]
    assert not leaked, leaked


def wandb_records(path: Path) -> list:
    """Records of a .wandb file: 7-byte header, then 32 KiB blocks of chunks
    (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, payloads = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            payloads.append(chunk)
        elif kind == 2:
            buf = chunk
        elif kind == 3:
            buf += chunk
        elif kind == 4:
            payloads.append(buf + chunk)
    records = []
    for p in payloads:
        rec = pb.Record()
        rec.ParseFromString(p)
        records.append(rec)
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_offline_run(run_dir: Path) -> dict:
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    files = list(runs[0].glob("run-*.wandb"))
    assert len(files) == 1
    history, summary, run = [], {}, None
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof("record_type")
        if kind == "history":
            history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update})
        elif kind == "run":
            run = rec.run
    return {"dir": runs[0], "history": history, "summary": summary, "run": run}


def test_offline_run_pp2_has_stage_timings_summary_image_and_trace(tmp_path):
    d = tmp_path / "run"
    r = cli(["run", "parallel.pp=2", *TINY, "logging.wandb.mode=offline", f"hydra.run.dir={d}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((d / "results.json").read_text())
    wb = read_offline_run(d)  # exactly one run: rank 0 only
    assert wb["run"].display_name == "sarathi" and wb["run"].project == "pp_sarathi"
    assert json.loads(wb["run"].config.update[0].value_json) is not None
    steps = [h for h in wb["history"] if "iteration" in h]
    assert len(steps) == res["batches"]["count"]
    for s in (0, 1):
        for key in ("compute_ms", "recv_wait_ms", "send_ms", "bubble_ms"):
            assert all(f"stage{s}/{key}" in h for h in steps), key
        total = sum(h[f"stage{s}/bubble_ms"] for h in steps) / 1e3
        assert total == pytest.approx(res["stages"][s]["bubble_s"], rel=1e-6, abs=1e-9)
        compute = sum(h[f"stage{s}/compute_ms"] for h in steps) / 1e3
        assert compute == pytest.approx(res["stages"][s]["compute_s"], rel=1e-6)
    assert sum(h["iteration/prefill_tokens"] for h in steps) == res["throughput"]["prompt_tokens"]
    summ = wb["summary"]
    assert summ["throughput/tokens_per_s"] == pytest.approx(res["throughput"]["tokens_per_s"])
    assert summ["bubble/total_s"] == pytest.approx(res["bubble"]["total_s"])
    assert summ["bubble/per_request_p50_ms"] == pytest.approx(res["bubble"]["per_request_ms"]["p50"])
    assert summ["latency/tbt_p99_ms"] == pytest.approx(res["latency"]["tbt_ms"]["p99"])
    assert summ["stage1/bubble_fraction"] == pytest.approx(res["stages"][1]["bubble_fraction"])
    images = [h for h in wb["history"] if h.get("timeline/_type") == "image-file"]
    assert len(images) == 1 and images[0]["timeline/path"].startswith("media/images/timeline")
    assert list((wb["dir"] / "files" / "media" / "images").glob("timeline*.png"))
    assert json.loads((wb["dir"] / "files" / "trace.json").read_text())["traceEvents"]
    assert_nothing_outside(tmp_path)


def test_disabled_writes_no_wandb_dir(tmp_path):
    d = tmp_path / "run"
    r = cli(["run", "parallel.pp=1", *TINY, "logging.wandb.mode=disabled", f"hydra.run.dir={d}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (d / "results.json").exists()
    assert not [p for p in d.rglob("*") if "wandb" in p.name]
    assert_nothing_outside(tmp_path)


def test_sweep_points_share_a_group_named_after_the_sweep(tmp_path):
    sweep = tmp_path / "sweep-abc"
    r = cli(["compare", "-m", *TINY, "scheduler.max_batch_size=4,8", "parallel.pp=1", "logging.timeline=false",
             "logging.trace=false", "logging.wandb.mode=offline", f"hydra.sweep.dir={sweep}"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    names = set()
    for job in ("0", "1"):
        for sched in ("orca", "sarathi"):
            run = read_offline_run(sweep / job / sched)["run"]
            assert run.run_group == "sweep-abc"
            assert run.job_type == "compare"
            names.add(run.display_name)
    assert names == {"max_batch_size=4/orca", "max_batch_size=4/sarathi", "max_batch_size=8/orca",
                     "max_batch_size=8/sarathi"}
    assert_nothing_outside(tmp_path)


def test_iteration_rows_split_the_stage_bubble_by_micro_batch():
    # Two stages, three micro-batches; stage 1 idles 1 s before batch 1 and 2 s before batch 2.
    batches = [BatchRecord(i, "hybrid", 1, 4, 1, float(i), 10.0, [i]) for i in range(3)]
    recs = [StageRecord(0, 0, 0, 0, 0, 1, 1, 1), StageRecord(1, 0, 1, 1, 1, 2, 2, 2),
            StageRecord(0, 1, 1, 1, 1, 2, 2, 2), StageRecord(1, 1, 2, 3, 3, 4, 4, 4),
            StageRecord(0, 2, 2, 2, 2, 3, 3, 3), StageRecord(1, 2, 4, 6, 6, 7, 7, 7)]
    out = RunOutcome([], batches, recs, 2, 7.0, [(0, 1), (1, 2)])
    rows = iteration_rows(out)
    assert [r["iteration/batch_id"] for r in rows] == [0, 1, 2]
    assert [r["stage1/bubble_ms"] for r in rows] == [0.0, 1000.0, 2000.0]
    assert [r["stage0/bubble_ms"] for r in rows] == [0.0, 0.0, 0.0]
    assert [r["stage1/recv_wait_ms"] for r in rows] == [0.0, 1000.0, 2000.0]
    res = summarize(out)
    assert res["stages"][1]["bubble_s"] == pytest.approx(3.0)
    # batch 2 also waited 1 s (3..4) while stage 1 computed batch 1 (metrics/bubbles.py, part b)
    assert [r["iteration/bubble_ms"] for r in rows] == pytest.approx([0.0, 1000.0, 3000.0])
    assert [r["iteration/tokens"] for r in rows] == [5, 5, 5]
