"""The ``pp-sarathi`` command line: run/compare artifacts (DESIGN.md §3) and bad input."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
QUIET = ["logging.wandb.mode=disabled", "logging.progress=false"]
TINY = ["model=tiny", "workload.num_requests=4", "workload.min_len=12", "workload.max_len=32",
        "workload.pd_ratio=3", "sampling.ignore_eos=true", "scheduler.chunk_size=16", *QUIET]


def cli(args, cwd=REPO, timeout=240):
    return subprocess.run([str(BIN / "pp-sarathi"), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def get(d: dict, dotted: str):
    for part in dotted.split("."):
        assert isinstance(d, dict) and part in d, f"missing {dotted} (at {part})"
        d = d[part]
    return d


@pytest.fixture(scope="module")
def jsonl_run(tmp_path_factory):
    """pp=1 run of a 3-request jsonl workload; the first request is the longest, so it
    finishes last and outputs.jsonl must still list it first."""
    tmp = tmp_path_factory.mktemp("cli_run")
    reqs = [{"id": "long", "prompt_token_ids": list(range(3, 43)), "max_tokens": 6},
            {"id": "short", "prompt_token_ids": [5, 6, 7], "max_tokens": 2},
            {"id": "mid", "prompt_token_ids": list(range(10, 22)), "max_tokens": 4}]
    wl = tmp / "in.jsonl"
    wl.write_text("".join(json.dumps(r) + "\n" for r in reqs))
    d = tmp / "run"
    r = cli(["run", "parallel.pp=1", "model=tiny", "workload=jsonl", f"workload.path={wl}",
             "sampling.ignore_eos=true", "scheduler.chunk_size=16", *QUIET, f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return d, reqs, r


def test_run_writes_outputs_in_input_order(jsonl_run):
    d, reqs, _ = jsonl_run
    outs = [json.loads(line) for line in (d / "outputs.jsonl").read_text().splitlines()]
    assert [o["id"] for o in outs] == [r["id"] for r in reqs]
    for o, r in zip(outs, reqs):
        assert o["prompt_token_ids"] == r["prompt_token_ids"]
        assert o["finish_reason"] in ("length", "stop")
        assert len(o["output_token_ids"]) == r["max_tokens"]  # ignore_eos: always the full length


def test_run_results_json_has_the_contract_keys(jsonl_run):
    d, _, _ = jsonl_run
    res = json.loads((d / "results.json").read_text())
    for key in ("throughput.tokens_per_s", "throughput.decode_tokens_per_s",
                "latency.ttft_ms.p50", "latency.ttft_ms.p99", "latency.tbt_ms.p50", "latency.tbt_ms.p99",
                "latency.e2e_ms.p50", "latency.e2e_ms.p99", "bubble.total_s",
                "bubble.per_request_ms.p50", "bubble.per_request_ms.p99"):
        assert isinstance(get(res, key), (int, float)), key
    assert get(res, "throughput.decode_tokens_per_s") > 0
    assert len(res["stages"]) == 1
    for st in res["stages"]:
        for key in ("stage", "compute_s", "recv_wait_s", "send_s", "bubble_s", "bubble_fraction"):
            assert isinstance(st[key], (int, float)), key
    assert res["config"]["workload"]["name"] == "jsonl"
    assert res["config"]["parallel"]["pp"] == 1


def test_run_writes_trace_and_timeline(jsonl_run):
    d, _, r = jsonl_run
    trace = json.loads((d / "trace.json").read_text())
    slices = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    stage = [e for e in slices if e["cat"] != "driver"]
    driver = [e for e in slices if e["cat"] == "driver"]
    assert stage and {e["tid"] for e in stage} == {0}  # pp=1: one stage track
    assert {e["cat"] for e in stage} >= {"compute"}
    assert not {e["tid"] for e in driver} & {0}  # the driver's time is its own track, never the stage's
    assert (d / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "throughput" in r.stdout  # the results table


def test_compare_writes_ratios(tmp_path):
    d = tmp_path / "cmp"
    r = cli(["compare", *TINY, f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    comp = json.loads((d / "compare.json").read_text())
    assert set(comp["schedulers"]) == {"orca", "sarathi", "sarathi_uniform"}
    for key in ("bubble_total", "bubble_per_request_p50", "throughput"):
        assert isinstance(comp["ratios"][key], (int, float)) and comp["ratios"][key] > 0, key
        for name in ("sarathi", "sarathi_uniform"):
            assert comp["ratios_by_scheduler"][name][key] > 0, (name, key)
    assert comp["ratios_by_scheduler"]["sarathi"] == comp["ratios"]
    for name in ("orca", "sarathi", "sarathi_uniform"):
        assert comp["schedulers"][name]["num_stages"] == 2
        assert (d / name / "results.json").exists() and (d / name / "outputs.jsonl").exists()
    assert (d / "compare_timeline.png").exists()
    assert "bubble_total" in r.stdout and "sarathi_uniform" in r.stdout


def _one_line_error(r, needle):
    assert r.returncode == 2, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("pp-sarathi: error:") and needle in lines[0], lines[0]


def test_missing_model_path_is_a_clean_error(tmp_path):
    r = cli(["run", "parallel.pp=1", "model=tiny", f"model.path={tmp_path / 'no_such_ckpt'}", *QUIET,
             f"hydra.run.dir={tmp_path / 'run'}"])
    _one_line_error(r, "model.path")
    assert not (tmp_path / "run" / "outputs.jsonl").exists()


def test_missing_workload_file_is_a_clean_error(tmp_path):
    missing = tmp_path / "nope.jsonl"
    r = cli(["run", "parallel.pp=2", "model=tiny", "workload=jsonl", f"workload.path={missing}", *QUIET,
             f"hydra.run.dir={tmp_path / 'run'}"])
    _one_line_error(r, str(missing))
    assert json.loads((tmp_path / "run" / "failed.json").read_text())["error"]


def test_jsonl_workload_without_path_is_a_clean_error(tmp_path):
    r = cli(["run", "parallel.pp=1", "model=tiny", "workload=jsonl", *QUIET, f"hydra.run.dir={tmp_path / 'run'}"])
    _one_line_error(r, "workload.path")


def test_report_on_a_missing_dir_is_a_clean_error(tmp_path):
    r = cli(["report", tmp_path / "nowhere"])
    _one_line_error_report(r)


def _one_line_error_report(r):
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if line.strip()] == [
        line for line in r.stderr.splitlines() if line.startswith("pp-sarathi report: error:")]


def test_unknown_command_and_help():
    r = cli(["frobnicate"])
    assert r.returncode == 2 and "unknown command" in r.stderr
    r = cli(["--help"])
    assert r.returncode == 0 and "report SWEEP_DIR" in r.stdout


def test_guide_documents_every_config_key_and_preset():
    """docs/guide.md's configuration reference must match pp_sarathi/config.py and conf/."""
    import dataclasses

    from pp_sarathi.config import RunConfig

    guide = (REPO / "docs" / "guide.md").read_text()

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    missing = [k for k in keys(RunConfig()) if f"`{k}`" not in guide]
    assert not missing, f"config keys not in docs/guide.md: {missing}"
    for group in ("model", "scheduler", "workload", "hardware", "experiment"):
        for preset in sorted((REPO / "conf" / group).glob("*.yaml")):
            name = preset.stem
            assert f"{group}={name}" in guide or f"`{name}`" in guide, f"{group}={name} not in docs/guide.md"
    for img in ("img/timeline_orca_vs_sarathi.png", "img/heatmap_bubble_reduction.png"):
        assert f"]({img})" in guide
        assert (REPO / "docs" / img).stat().st_size < 200_000


def test_guide_config_reference_is_generated_from_the_dataclasses():
    """The tables in docs/guide.md are render()'s output: editing config.py without
    `python -m pp_sarathi.cli.config_doc --write docs/guide.md` fails here."""
    from pp_sarathi.cli.config_doc import is_current, render

    assert is_current(REPO / "docs" / "guide.md"), "docs/guide.md is stale: run " \
        "python -m pp_sarathi.cli.config_doc --write docs/guide.md"
    rows = [line for line in render().splitlines() if line.startswith("| `")]
    assert len(rows) > 80
    undocumented = [row.split("|")[1].strip() for row in rows if not row.split("|")[3].strip()]
    assert not undocumented, f"config keys without a doc line: {undocumented}"


def test_bad_choice_names_the_key_and_the_choices(tmp_path):
    r = cli(["simulate", "model=tiny", "model.dtype=float8", *QUIET, f"hydra.run.dir={tmp_path / 'run'}"])
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "model.dtype" in r.stderr and "float32, bfloat16, float16" in r.stderr, r.stderr
    r = cli(["simulate", "model=tiny", "scheduler.chunk_size=0", *QUIET, f"hydra.run.dir={tmp_path / 'run2'}"])
    _one_line_error(r, "scheduler.chunk_size must be >= 1")
    r = cli(["simulate", "model=tiny", "compare.baseline=ft", *QUIET, f"hydra.run.dir={tmp_path / 'run3'}"])
    _one_line_error(r, "compare.baseline=ft")


def test_choices_given_as_overrides_reach_the_run(tmp_path):
    d = tmp_path / "run"
    r = cli(["simulate", *TINY, "scheduler=orca", "workload.arrival=poisson", "workload.qps=50",
             "model.dtype=bfloat16", f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((d / "results.json").read_text())["config"]
    assert (cfg["scheduler"]["name"], cfg["workload"]["arrival"], cfg["model"]["dtype"]) == (
        "orca", "poisson", "bfloat16")


def test_compare_of_three_schedulers_measures_each_against_the_baseline(tmp_path):
    """A third scheduler is one override: every target gets its ratios, the table its lines."""
    d = tmp_path / "cmp3"
    r = cli(["simulate", *TINY, "sim.compare=true", "compare.schedulers=[orca,sarathi,sarathi_serve]",
             f"hydra.run.dir={d}"])
    assert r.returncode == 0, r.stderr[-3000:]
    comp = json.loads((d / "compare.json").read_text())
    assert list(comp["schedulers"]) == ["orca", "sarathi", "sarathi_serve"]
    assert (comp["baseline"], comp["target"]) == ("orca", "sarathi")
    assert list(comp["ratios_by_scheduler"]) == ["sarathi", "sarathi_serve"]
    assert comp["ratios"] == comp["ratios_by_scheduler"]["sarathi"]
    for name, ratios in comp["ratios_by_scheduler"].items():
        res, base = comp["schedulers"][name], comp["schedulers"]["orca"]
        assert ratios["throughput"] == pytest.approx(
            res["throughput"]["tokens_per_s"] / base["throughput"]["tokens_per_s"])
        assert f"throughput ({name} / orca)" in r.stdout
        assert (d / name / "results.json").exists()
