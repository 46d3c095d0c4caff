"""``pp-sarathi microbench`` (paper Table 2) on the tiny model: files, fields, sane values."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pp_sarathi.bench.microbench import CSV_FIELDS, run_microbench
from pp_sarathi.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(name="tiny", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4, num_heads=4,
            num_kv_heads=2, max_position_embeddings=512)  # conf/model/tiny.yaml


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("PP_SARATHI_CACHE", str(tmp_path / "cache"))
    # Small peak probes keep the test fast (the CLI test below runs the full-size ones).
    from pp_sarathi.bench import device, microbench

    monkeypatch.setattr(microbench, "measure_peaks",
                        lambda dev, dt: device.measure_peaks(dev, dt, matmul_n=256, copy_mib=8, repeats=2))
    cfg = RunConfig(command="microbench", device="cpu")
    for k, v in TINY.items():
        setattr(cfg.model, k, v)
    cfg.parallel.pp = 1
    cfg.parallel.threads_per_stage = 1  # tiny kernels: 1 thread is fastest on a shared 2-core box
    mb = cfg.microbench
    mb.chunk_sizes, mb.decode_batch_sizes, mb.context_len, mb.warmup, mb.repeats = [16, 32], [2, 4], 24, 1, 2
    n = torch.get_num_threads()
    yield cfg
    torch.set_num_threads(n)


def test_microbench_tiny(tiny_cfg, tmp_path, capsys):
    rows = run_microbench(tiny_cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "device: CPU" in out and "dtype: float32" in out and "measured peaks" in out
    assert [(r["chunk"], r["decode_batch"]) for r in rows] == [(16, 2), (16, 4), (32, 2), (32, 4)]
    with open(tmp_path / "run" / "microbench.csv") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_FIELDS
        csv_rows = list(reader)
    assert len(csv_rows) == 4
    for r, c in zip(rows, csv_rows):
        for k in ("s1_ms", "s2_ms", "s3_ms"):
            assert r[k] > 0 and float(c[k]) == pytest.approx(r[k])
        assert r["s1_plus_s2_ms"] == pytest.approx(r["s1_ms"] + r["s2_ms"])
        assert r["marginal_decode_ms"] == pytest.approx(r["s3_ms"] - r["s1_ms"])
        assert r["marginal_per_decode_ms"] == pytest.approx(r["marginal_decode_ms"] / r["decode_batch"])
        assert r["decode_only_per_token_ms"] == pytest.approx(r["s2_ms"] / r["decode_batch"])
        if r["marginal_decode_ms"] > 0:
            assert r["piggyback_speedup"] == pytest.approx(r["s2_ms"] / r["marginal_decode_ms"])
        else:
            assert r["piggyback_speedup"] is None and c["piggyback_speedup"] == ""
        for k in ("s1", "s2", "s3"):
            assert r[f"{k}_bound_ms"] > 0 and r[f"{k}_frac"] > 0 and r[f"{k}_limiter"] in ("compute", "memory")
        assert r["context_len"] == 24 and r["dtype"] == "float32" and r["device"].startswith("CPU")
        assert r["meta_s3_ms"] > 0
        assert r["s3_linear_own_ms"] > 0
        assert r["s3_linear_own_frac"] == pytest.approx(r["s3_linear_own_ms"] / r["s3_linear_ms"])
        assert r["s3_min_ms"] <= r["s3_ms"] and r["max_spread"] >= 1.0
        if r["marginal_paired_ms"] > 0:
            assert r["piggyback_speedup_paired"] == pytest.approx(r["s2_ms"] / r["marginal_paired_ms"])
    data = json.loads((tmp_path / "run" / "microbench.json").read_text())
    assert data["info"]["device_type"] == "cpu" and data["info"]["dtype"] == "float32"
    assert data["peaks"]["matmul_flops"] > 0 and data["peaks"]["copy_bytes_per_s"] > 0
    # The roofline uses the better of the start and end peak measurements.
    assert data["peaks"]["matmul_flops"] == max(data["peaks_start"]["matmul_flops"],
                                                data["peaks_end"]["matmul_flops"])
    for r in rows:
        for k in ("s1", "s2", "s3"):
            c = r[f"{k}_gflop"] * 1e9 / data["peaks"]["matmul_flops"]
            m = r[f"{k}_mb"] * 1e6 / data["peaks"]["copy_bytes_per_s"]
            assert r[f"{k}_bound_ms"] == pytest.approx(max(c, m) * 1e3)
            assert r[f"{k}_frac"] == pytest.approx(r[f"{k}_bound_ms"] / r[f"{k}_ms"])
    assert data["rows"] == json.loads(json.dumps(rows))
    assert data["model"]["hidden_size"] == 64 and data["microbench"]["repeats"] == 2
    assert all(len(r["samples_ms"]["s3"]) == 2 for r in data["raw"])
    rows = {(r["chunk"], r["decode_batch"]): r for r in rows}
    # Roofline bounds are from shapes, not timings: deterministic and monotone in the work.
    assert rows[(32, 2)]["s1_bound_ms"] > rows[(16, 2)]["s1_bound_ms"]
    assert rows[(16, 4)]["s2_bound_ms"] > rows[(16, 2)]["s2_bound_ms"]
    for r in rows.values():
        assert r["s3_bound_ms"] >= max(r["s1_bound_ms"], r["s2_bound_ms"]) * 0.999
        assert r["s3_gflop"] > 0 and r["s3_mb"] > 0


def test_microbench_rejects_bad_sizes(tiny_cfg, tmp_path):
    tiny_cfg.microbench.decode_batch_sizes = []
    with pytest.raises(ValueError):
        run_microbench(tiny_cfg, tmp_path)
    tiny_cfg.microbench.decode_batch_sizes = [2]
    tiny_cfg.microbench.context_len = 4096  # beyond the tiny model's 512 positions
    with pytest.raises(ValueError, match="context"):
        run_microbench(tiny_cfg, tmp_path)


def test_microbench_cli(tmp_path):
    """The command-line contract: ``pp-sarathi microbench`` writes both files in hydra.run.dir."""
    exe = Path(sys.executable).with_name("pp-sarathi")
    if not exe.exists():
        pytest.skip("pp-sarathi entry point not installed")
    env = dict(os.environ, PP_SARATHI_CACHE=str(tmp_path / "cache"))
    run_dir = tmp_path / "run"
    proc = subprocess.run([str(exe), "microbench", "model=tiny", "device=cpu", "parallel.threads_per_stage=1",
                           "microbench.chunk_sizes=[16]", "microbench.decode_batch_sizes=[2]",
                           "microbench.context_len=16", "microbench.warmup=0", "microbench.repeats=1",
                           "logging.wandb.mode=disabled", f"hydra.run.dir={run_dir}"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "S1 ms" in proc.stdout
    assert (run_dir / "microbench.csv").is_file() and (run_dir / "microbench.json").is_file()
