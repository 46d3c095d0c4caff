"""Sweeps (hydra multirun) and ``pp-sarathi report``: one CSV row per point, failed points
recorded without stopping the sweep, unique sweep dirs, plots against chunk size x P:D."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pp_sarathi.cli import report, report_plots

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = ["model=tiny", "workload.num_requests=4", "workload.min_len=12", "workload.max_len=32",
        "sampling.ignore_eos=true", "logging.wandb.mode=disabled", "logging.progress=false",
        "logging.timeline=false", "logging.trace=false"]


def cli(args, cwd=REPO, timeout=300, env=None):
    return subprocess.run([str(BIN / "pp-sarathi"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- real sweeps ---------------------------------------------------------------------------------
def test_compare_sweep_2x2_writes_csv_and_heatmaps(tmp_path):
    sweep = tmp_path / "sweep"
    r = cli(["compare", "-m", "scheduler.chunk_size=8,16", "workload.pd_ratio=2,4", "parallel.pp=1",
             "scheduler.max_batch_size=4", *TINY, f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sweep finished: 4 points, 0 failed" in r.stdout
    rows = read_csv(sweep / "sweep.csv")
    assert len(rows) == 4
    assert {(row["scheduler.chunk_size"], row["workload.pd_ratio"]) for row in rows} == {
        ("8", "2"), ("8", "4"), ("16", "2"), ("16", "4")}
    for row in rows:
        assert row["status"] == "ok" and row["command"] == "compare"
        comp = json.loads((sweep / row["job"] / "compare.json").read_text())
        assert float(row["ratio_throughput"]) == pytest.approx(comp["ratios"]["throughput"], rel=1e-5)
        for name in ("orca", "sarathi"):
            res = comp["schedulers"][name]
            assert float(row[f"{name}.throughput_tokens_per_s"]) == pytest.approx(
                res["throughput"]["tokens_per_s"], rel=1e-5)
            assert float(row[f"{name}.tbt_p99_ms"]) == pytest.approx(res["latency"]["tbt_ms"]["p99"], rel=1e-5)
            assert row[f"{name}.bubble_total_s"] != ""
            assert row[f"{name}.bubble_per_request_p50_ms"] != ""
        assert row["error"] == ""
    for name in ("heatmap_throughput_ratio.png", "heatmap_tbt_p99.png"):
        assert (sweep / name).read_bytes()[:4] == b"\x89PNG", name
    assert f"wrote {sweep / 'sweep.csv'}" in r.stdout
    # `report` again, by hand: same CSV, and it says where files went.
    again = cli(["report", sweep])
    assert again.returncode == 0, again.stderr
    assert f"wrote {sweep / 'sweep.csv'}" in again.stdout and "heatmap_tbt_p99.png" in again.stdout
    assert read_csv(sweep / "sweep.csv") == rows


@pytest.mark.slow
def test_run_sweep_pp2_fresh_process_groups_and_a_failed_point(tmp_path):
    """Two pp=2 points run one after the other (each starts its own stage processes and
    process group); the chunk_size=0 point fails, is recorded, and the sweep goes on."""
    sweep = tmp_path / "sweep"
    r = cli(["run", "-m", "scheduler.chunk_size=0,8,16", "parallel.pp=2", "workload.pd_ratio=3", *TINY,
             f"hydra.sweep.dir={sweep}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sweep finished: 3 points, 1 failed" in r.stdout
    failed = json.loads((sweep / "0" / "failed.json").read_text())
    assert "chunk_size" in failed["error"]
    for job in ("1", "2"):
        res = json.loads((sweep / job / "results.json").read_text())
        assert [s["stage"] for s in res["stages"]] == [0, 1]
    rows = read_csv(sweep / "sweep.csv")
    assert [(row["job"], row["scheduler.chunk_size"], row["status"]) for row in rows] == [
        ("0", "0", "failed"), ("1", "8", "ok"), ("2", "16", "ok")]
    assert "chunk_size" in rows[0]["error"] and rows[0]["throughput_tokens_per_s"] == ""
    for row in rows[1:]:
        for col in ("throughput_tokens_per_s", "bubble_total_s", "stage0_bubble_s", "stage1_bubble_s",
                    "bubble_per_request_p50_ms", "tbt_p99_ms"):
            assert float(row[col]) >= 0, col
    assert (sweep / "line_tbt_p99.png").exists()  # one axis swept: line plots


def test_two_sweeps_at_once_get_their_own_dirs(tmp_path):
    """Same dir pattern, same second: the ${pp_uid:} part keeps them apart."""
    conf = yaml.safe_load((REPO / "conf" / "config.yaml").read_text())
    assert "${pp_uid:}" in conf["hydra"]["sweep"]["dir"] and "${pp_uid:}" in conf["hydra"]["run"]["dir"]
    args = [str(BIN / "pp-sarathi"), "run", "-m", "scheduler.chunk_size=0", *TINY,
            "hydra.sweep.dir=multirun/same-${pp_uid:}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    dirs = sorted((tmp_path / "multirun").iterdir())
    assert len(dirs) == 2 and all(d.name.startswith("same-") for d in dirs), dirs
    for d in dirs:
        assert (d / "0" / "failed.json").exists()
        assert read_csv(d / "sweep.csv")[0]["status"] == "failed"


def test_sweep_under_torchrun_is_refused(tmp_path):
    r = cli(["run", "-m", "scheduler.chunk_size=8,16", *TINY], cwd=tmp_path,
            env={"WORLD_SIZE": "2", "RANK": "0"})
    assert r.returncode == 2 and "not under torchrun" in r.stderr
    assert not (tmp_path / "multirun").exists()


# --- report on hand-built sweep dirs -------------------------------------------------------------
def _results(tput, bubble, req_p50, tbt_p99):
    return {"wall_s": 1.0, "throughput": {"tokens_per_s": tput, "decode_tokens_per_s": tput / 10},
            "latency": {"ttft_ms": {"p50": 1.0, "p99": 2.0}, "tbt_ms": {"p50": tbt_p99 / 2, "p99": tbt_p99},
                        "e2e_ms": {"p50": 3.0, "p99": 4.0}},
            "stages": [{"stage": 0, "bubble_s": bubble / 2}, {"stage": 1, "bubble_s": bubble / 2}],
            "bubble": {"total_s": bubble, "per_request_ms": {"p50": req_p50, "p99": req_p50 * 2}}}


def _job(root: Path, num: int, overrides: list[str], config: dict, files: dict) -> Path:
    d = root / str(num)
    (d / ".hydra").mkdir(parents=True)
    (d / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides + [f"command={config['command']}"]))
    (d / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    for name, content in files.items():
        (d / name).write_text(json.dumps(content))
    return d


def _config(command, chunk, pd, batch=9):
    return {"command": command, "scheduler": {"name": "sarathi", "chunk_size": chunk, "max_batch_size": batch},
            "workload": {"pd_ratio": pd}, "compare": {"baseline": "orca"}}


def test_report_compare_grid_with_a_failed_and_an_unfinished_point(tmp_path):
    num = 0
    for chunk in (64, 128):
        for pd in (5, 10, 20):
            ov = [f"scheduler.chunk_size={chunk}", f"workload.pd_ratio={pd}", "model=tiny"]
            if (chunk, pd) == (128, 20):
                _job(tmp_path, num, ov, _config("compare", chunk, pd), {"failed.json": {"error": "boom"}})
            elif (chunk, pd) == (64, 20):
                _job(tmp_path, num, ov, _config("compare", chunk, pd), {})
            else:
                orca, sar = _results(100, 4.0, 80, 50), _results(100 + chunk / 8 + pd, 2.0, 20, 30)
                _job(tmp_path, num, ov, _config("compare", chunk, pd), {"compare.json": {
                    "schedulers": {"orca": orca, "sarathi": sar},
                    "ratios": {"bubble_total": 2.0, "bubble_per_request_p50": 4.0,
                               "throughput": sar["throughput"]["tokens_per_s"] / 100}}})
            num += 1
    csv_path, plots, rows, info = report.report(tmp_path)
    got = read_csv(csv_path)
    assert len(got) == 6
    cols = list(got[0])
    assert cols[:5] == ["job", "command", "scheduler.chunk_size", "workload.pd_ratio", "model"]
    assert cols[5:7] == ["status", "paper_optimum_pd"] and cols[-1] == "error"
    assert float(got[0]["paper_optimum_pd"]) == 8.0 and float(got[3]["paper_optimum_pd"]) == 16.0
    assert [g["status"] for g in got] == ["ok", "ok", "incomplete", "ok", "ok", "failed"]
    assert got[5]["error"] == "boom" and got[5]["ratio_throughput"] == ""
    assert float(got[0]["ratio_bubble_total"]) == 2.0
    assert float(got[3]["sarathi.throughput_tokens_per_s"]) == pytest.approx(100 + 16 + 5)
    assert float(got[0]["orca.stage1_bubble_s"]) == 2.0
    assert float(got[0]["sarathi.tbt_p99_ms"]) == 30.0
    assert {p.name for p in plots} == {"heatmap_bubble_reduction.png", "heatmap_throughput_ratio.png",
                                        "heatmap_tbt_p99.png"}
    assert info["baseline"] == "orca"
    # The optimum the heatmaps mark: P:D* = chunk / (B - 1), B = requests per micro-batch.
    assert report._optimum_pd(64, 9) == 8.0 and report._optimum_pd(128, 9) == 16.0
    assert report.requests_per_micro_batch({"scheduler.max_batch_size": 9}) == 9
    assert report.requests_per_micro_batch({"scheduler.max_batch_size": 8, "parallel.pp": 2}) == 4
    assert report.requests_per_micro_batch({"scheduler.max_batch_size": 216, "parallel.pp": 8}) == 27
    assert report_plots.frac_index([5.0, 10.0, 20.0], 10.0) == pytest.approx(1.0)
    assert 1.0 < report_plots.frac_index([5.0, 10.0, 20.0], 16.0) < 2.0


def test_report_run_sweep_one_axis_draws_lines(tmp_path, capsys):
    for i, pd in enumerate((2, 4, 8)):
        _job(tmp_path, i, [f"workload.pd_ratio={pd}"], _config("run", 128, pd),
             {"results.json": _results(50 * pd, 1.0 / pd, 10.0, 20.0)})
    assert report.report_main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    got = read_csv(tmp_path / "sweep.csv")
    assert [g["workload.pd_ratio"] for g in got] == ["2", "4", "8"]
    assert [float(g["throughput_tokens_per_s"]) for g in got] == [100.0, 200.0, 400.0]
    assert float(got[1]["bubble_total_s"]) == 0.25 and float(got[1]["tbt_p99_ms"]) == 20.0
    assert "stage0_bubble_s" in got[0]
    for stem in ("bubble_total", "throughput", "tbt_p99", "bubble_per_request_p50"):
        assert (tmp_path / f"line_{stem}.png").exists()
        assert f"line_{stem}.png" in out
    assert "3 jobs: 3 ok" in out


def test_report_averages_seed_repeats_and_splits_other_keys(tmp_path):
    num = 0
    for sched in ("orca", "sarathi"):
        for seed in (0, 1):
            for pd in (2, 4):
                _job(tmp_path, num, [f"scheduler={sched}", f"workload.seed={seed}", f"workload.pd_ratio={pd}"],
                     _config("run", 128, pd), {"results.json": _results(100 + 10 * seed, 1.0, 1.0, 1.0)})
                num += 1
    rows, info = report.collect(tmp_path)
    groups = report_plots.series(rows, info)
    assert list(groups) == ["scheduler=orca", "scheduler=sarathi"]
    cells = report_plots.grid(groups["scheduler=orca"], "throughput_tokens_per_s", [128.0], [2.0, 4.0])
    assert cells.loc[128.0, 2.0] == 105.0 and cells.loc[128.0, 4.0] == 105.0
    assert len(read_csv(report.report(tmp_path)[0])) == 8


def test_report_with_nothing_swept_writes_csv_only(tmp_path, capsys):
    _job(tmp_path, 0, ["model=tiny"], _config("run", 128, 10), {"results.json": _results(1, 1, 1, 1)})
    assert report.report_main([str(tmp_path)]) == 0
    assert "no plots" in capsys.readouterr().out
    assert len(read_csv(tmp_path / "sweep.csv")) == 1
    assert not list(tmp_path.glob("*.png"))


def test_report_empty_dir_is_an_error(tmp_path, capsys):
    assert report.report_main([str(tmp_path)]) == 2
    assert "no jobs" in capsys.readouterr().err


def test_report_compare_of_three_schedulers_has_each_targets_ratios(tmp_path):
    """A third scheduler in compare.schedulers: its ratios get columns and panels of their own."""
    num = 0
    for chunk in (64, 128):
        for pd in (5, 10):
            res = {"orca": _results(100, 4.0, 80, 50), "sarathi": _results(120, 2.0, 20, 30),
                   "sarathi_serve": _results(110, 1.0, 40, 40)}
            by = {name: {"bubble_total": 4.0 / res[name]["bubble"]["total_s"], "bubble_per_request_p50": 1.0,
                         "throughput": res[name]["throughput"]["tokens_per_s"] / 100}
                  for name in ("sarathi", "sarathi_serve")}
            _job(tmp_path, num, [f"scheduler.chunk_size={chunk}", f"workload.pd_ratio={pd}"],
                 _config("compare", chunk, pd), {"compare.json": {
                     "schedulers": res, "ratios": by["sarathi"], "baseline": "orca", "target": "sarathi",
                     "ratios_by_scheduler": by}})
            num += 1
    csv_path, plots, _, info = report.report(tmp_path)
    got = read_csv(csv_path)
    assert info["targets"] == ["sarathi", "sarathi_serve"]
    assert float(got[0]["ratio_bubble_total"]) == 2.0 and float(got[0]["sarathi_serve.ratio_bubble_total"]) == 4.0
    assert float(got[0]["sarathi_serve.ratio_throughput"]) == pytest.approx(1.1)
    assert "sarathi.ratio_throughput" not in got[0]  # the headline target's are the plain ratio_* columns
    assert {p.name for p in plots} == {"heatmap_bubble_reduction.png", "heatmap_throughput_ratio.png",
                                        "heatmap_tbt_p99.png"}
    specs = {stem: panels for stem, _, panels, _ in report_plots.plot_specs(info)}
    assert [c for c, _ in specs["throughput_ratio"]] == ["ratio_throughput", "sarathi_serve.ratio_throughput"]
    assert len(specs["bubble_reduction"]) == 4 and len(specs["tbt_p99"]) == 3
