"""The vs-vLLM benchmark's arithmetic: the pipeline ceiling line, from hand-made run summaries."""
import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_vs_vllm.py"


def _script():
    spec = importlib.util.spec_from_file_location("bench_vs_vllm", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(engine, pp, scheduler, threads, tok_s):
    return {"engine": engine, "pp": pp, "scheduler": scheduler, "threads": threads, "tokens_per_s": tok_s}


def test_ceiling_is_twice_our_best_one_thread_rate_over_vllm_two_threads():
    bench = _script()
    summary = [
        _row("vllm", 1, "", 1, 450.0),
        _row("pp_sarathi", 1, "sarathi", 1, 400.0),
        _row("pp_sarathi", 1, "sarathi_serve", 1, 500.0),  # the best pp=1 at one thread
        _row("vllm", 1, "", 2, 800.0),
        _row("pp_sarathi", 1, "sarathi_serve", 2, 840.0),
        _row("pp_sarathi", 2, "sarathi", 2, 640.0),
        _row("pp_sarathi", 2, "sarathi_serve", 2, 720.0),  # the best pipeline
        _row("pp_sarathi", 1, "sarathi_serve+side", 2, 960.0),
    ]
    [line] = bench.pipeline_ceilings(summary)
    assert "ceiling **1.25x**" in line  # 2 x 500 / 800
    assert "measured 0.90x (sarathi_serve)" in line  # 720 / 800
    assert "(two pp=1 copies at once) **1.20x**" in line  # 960 / 800
    assert "vLLM scales 1.78x from 1 to 2 threads" in line  # 800 / 450


def test_no_ceiling_without_a_pipeline_or_a_one_thread_run():
    bench = _script()
    pp1_only = [_row("vllm", 1, "", 2, 800.0), _row("pp_sarathi", 1, "sarathi_serve", 2, 840.0)]
    assert bench.pipeline_ceilings(pp1_only) == []
    no_one_thread = pp1_only + [_row("pp_sarathi", 2, "sarathi_serve", 2, 720.0)]
    assert bench.pipeline_ceilings(no_one_thread) == []
