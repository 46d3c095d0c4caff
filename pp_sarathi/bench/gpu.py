"""GPU benchmark bundle for issue #7: ``python -m pp_sarathi.bench.gpu --out DIR``.

Runs on a machine with one GPU and nothing but PyTorch (no hydra/wandb/deepspeed, no
safetensors needed, no network), in a few minutes, on a LLaMA-13B-shaped model with random
bf16 weights built in place on the GPU:

1. measured device peaks (bf16 matmul, copy bandwidth) for the roofline columns;
2. numerics: bf16 hybrid-batch logits vs a float32 reference of the same weights;
3. KV capacity B = (M_G - M_S) / (L * m_kv) from the GPU memory;
4. paper Table 2: prefill-only 1024, decode-only batch 4 at seq 1024, hybrid 1021 + 3
   (plus prefill-only 1021 and decode-only 3, which the marginal decode cost needs);
5. paper Table 4 first row (seq 1K, batch 6, P:D 50, chunk 256): the real engine loop
   (scheduler -> executor -> sampler, pp=1) under orca, vllm and sarathi (tile 128) on six
   requests of 1004 prompt + 20 output tokens; decode time per token as in the paper
   (baseline: decode-only iteration time / batch; SARATHI: (hybrid time - prefill-only time of
   the same chunk) / decodes, the prefill-only time replayed right after the run) and the
   end-to-end speedup.

Writes ``gpu_bench.md`` and ``gpu_bench.json`` to ``--out`` (markdown also on stdout), with
the paper's numbers beside. ``--small`` shrinks every shape so the same path runs on a CPU in
seconds (tests/test_gpu.py does that).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import SamplingConfig, SchedulerConfig
from ..cost.shape import BatchShape
from ..metrics.timing import StageClock
from ..model.arch import ModelArch
from ..model.kv_cache import KVCache
from ..model.loader import DTYPES
from ..model.random_weights import param_bytes, random_stage_model
from ..model.shapes import kv_bytes_per_token
from ..runtime.driver import drive
from ..runtime.executor import StageExecutor
from ..runtime.driver import LocalPipeline
from ..runtime.sampler import Sampler
from ..scheduler import BlockManager, make_scheduler
from ..workload.request import Request
from .device import device_info, measure_peaks, median, synchronize, time_interleaved
from .hybrid import HybridBench
from .numerics import hybrid_logits_check
from .roofline import roofline

# The paper's numbers (LLaMA-13B on one A6000), to print beside ours.
PAPER_TABLE2_MS = {"prefill_1024": 234.8, "decode_4": 49.96, "hybrid_1021_3": 238.4}
PAPER_TABLE2_PER_TOKEN_MS = {"prefill": 0.229, "decode": 12.49, "piggybacked_decode": 1.2}
PAPER_TABLE4_ROW1 = {"decode_speedup": 5.45, "e2e_speedup": 1.33}
# LLaMA-13B as in the paper (40 layers, 40 heads, hidden 5120), conf/model/llama-13b.yaml.
LLAMA_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_layers=40,
                 num_heads=40, num_kv_heads=40, max_position_embeddings=4096)


@dataclass
class Shapes:
    model: dict
    prefill: int  # Table 2 prefill-only tokens (1024)
    decode_batch: int  # Table 2 decode-only batch (4)
    decode_ctx: int  # KV length of those decodes (1024)
    hybrid_decodes: int  # Table 2 hybrid: (prefill - hybrid_decodes) + hybrid_decodes (1021 + 3)
    t4_batch: int  # Table 4: requests (6)
    t4_prompt: int  # prompt tokens (1004)
    t4_output: int  # output tokens (20)
    t4_chunk: int  # sarathi chunk / token budget (256)
    t4_tile: int  # sarathi tile (128)
    vllm_budget: int  # vllm token budget of a prefill-only batch
    block_size: int = 16
    peaks: dict = field(default_factory=dict)  # measure_peaks overrides


LARGE = Shapes(model=LLAMA_13B, prefill=1024, decode_batch=4, decode_ctx=1024, hybrid_decodes=3,
               t4_batch=6, t4_prompt=1004, t4_output=20, t4_chunk=256, t4_tile=128, vllm_budget=4096)
SMALL = Shapes(model=dict(vocab_size=512, hidden_size=128, intermediate_size=344, num_layers=2,
                          num_heads=4, num_kv_heads=4, max_position_embeddings=256),
               prefill=64, decode_batch=4, decode_ctx=64, hybrid_decodes=3,
               t4_batch=6, t4_prompt=60, t4_output=4, t4_chunk=32, t4_tile=8, vllm_budget=256,
               block_size=8, peaks=dict(matmul_n=512, copy_mib=32))


def kv_capacity(model, seq_lens: list[int]) -> dict:
    """Max batch from memory, the paper's B = floor((M_G - M_S) / (L * m_kv)), for each L."""
    arch = model.arch
    dev = next(model.parameters()).device
    elem = next(model.parameters()).element_size()
    m_kv = kv_bytes_per_token(arch, elem, arch.num_layers)
    m_s = param_bytes(model)
    if dev.type == "cuda":
        free, total = torch.cuda.mem_get_info(dev)
        source = "torch.cuda.mem_get_info"
    else:
        mem = {}
        with open("/proc/meminfo") as f:
            for line in f:
                k, v = line.split(":", 1)
                mem[k] = int(v.split()[0]) * 1024
        total, free = mem["MemTotal"], mem.get("MemAvailable", mem["MemFree"])
        source = "/proc/meminfo"
    out = {"M_G_bytes": total, "M_S_bytes": m_s, "m_kv_bytes_per_token": m_kv, "free_after_load_bytes": free,
           "elem_bytes": elem, "source": source, "by_seq_len": {}}
    for L in seq_lens:
        out["by_seq_len"][L] = {"B_formula": int((total - m_s) // (L * m_kv)),
                                "B_free_now": int(free // (L * m_kv))}
    return out


def table2(model, shapes: Shapes, peaks, warmup: int, repeats: int) -> dict:
    s = shapes
    chunk = s.prefill - s.hybrid_decodes
    bench = HybridBench(model, s.prefill, max(s.decode_batch, s.hybrid_decodes), s.decode_ctx, s.block_size)
    batches = [bench.batch(f"prefill_{s.prefill}", prefill=s.prefill),
               bench.batch(f"prefill_{chunk}", prefill=chunk),
               bench.batch(f"decode_{s.decode_batch}", decodes=s.decode_batch),
               bench.batch(f"decode_{s.hybrid_decodes}", decodes=s.hybrid_decodes),
               bench.batch(f"hybrid_{chunk}_{s.hybrid_decodes}", prefill=chunk, decodes=s.hybrid_decodes)]
    dev = bench.device
    clock = StageClock(dev)
    samples = time_interleaved(clock, {b.name: b.run for b in batches}, warmup, repeats)
    arch, elem = model.arch, next(model.parameters()).element_size()
    rows = {}
    for b in batches:
        t = median(samples[b.name])
        rl = roofline(arch, b.shape, elem, peaks.matmul_flops, peaks.copy_bytes_per_s)
        rows[b.name] = {"ms": t * 1e3, "min_ms": min(samples[b.name]) * 1e3, "max_ms": max(samples[b.name]) * 1e3,
                        "tokens": b.shape.num_tokens, "bound_ms": rl.bound_s * 1e3,
                        "roofline_frac": rl.fraction(t), "limiter": rl.limiter}
    p_full, p_chunk = rows[f"prefill_{s.prefill}"]["ms"], rows[f"prefill_{chunk}"]["ms"]
    d_full, d_h = rows[f"decode_{s.decode_batch}"]["ms"], rows[f"decode_{s.hybrid_decodes}"]["ms"]
    hyb = rows[f"hybrid_{chunk}_{s.hybrid_decodes}"]["ms"]
    marg = hyb - p_chunk
    derived = {"prefill_per_token_ms": p_full / s.prefill,
               "decode_per_token_ms": d_full / s.decode_batch,
               "piggybacked_decode_per_token_ms": marg / s.hybrid_decodes,
               "piggybacked_decode_per_token_vs_full_prefill_ms": (hyb - p_full) / s.hybrid_decodes,
               "piggyback_speedup": (d_h / s.hybrid_decodes) / (marg / s.hybrid_decodes) if marg > 0 else None,
               "hybrid_vs_separate": (p_chunk + d_h) / hyb}
    del bench
    _free(dev)
    return {"rows": rows, "derived": derived, "chunk": chunk}


def _free(dev) -> None:
    if torch.device(dev).type == "cuda":
        torch.cuda.empty_cache()


class RecordingPipeline(LocalPipeline):
    """LocalPipeline that keeps each plan, to replay parts of it afterwards."""

    def __init__(self, executor, clock):
        super().__init__(executor, clock)
        self.plans = {}

    def submit(self, plan) -> None:
        self.plans[plan.id] = plan
        super().submit(plan)


def _shape_of(parts) -> BatchShape:
    chunks = [(p.num_tokens, p.start) for p in parts if p.num_tokens > 1]
    decodes = [p.start + 1 for p in parts if p.num_tokens == 1]
    return BatchShape.of(chunks, decodes, num_sampled=sum(1 for p in parts if p.sample))


def engine_run(model, kv: KVCache, shapes: Shapes, policy: str, requests: list[Request]) -> dict:
    """One pass of the real engine loop (pp=1) over ``requests``; per-batch times from StageClock."""
    s = shapes
    budget = s.vllm_budget if policy == "vllm" else s.t4_chunk
    cfg = SchedulerConfig(name=policy, chunk_size=budget, max_batch_size=s.t4_batch,
                          tile_size=s.t4_tile if policy == "sarathi" else 1)
    blocks = BlockManager(kv.num_blocks, kv.block_size)
    sched = make_scheduler(cfg, blocks, model.arch.max_position_embeddings, 1, model.arch.eos_token_ids,
                           ignore_eos=True)
    sched.add_requests([Request(r.id, list(r.prompt_token_ids), r.max_tokens, 0.0, r.index) for r in requests],
                       model.arch.vocab_size)
    dev = next(model.parameters()).device
    executor = StageExecutor(model, kv, Sampler(SamplingConfig(temperature=0.0, ignore_eos=True)))
    clock = StageClock(dev)
    pipe = RecordingPipeline(executor, clock)
    synchronize(dev)
    t0 = time.perf_counter()
    batches = drive(sched, pipe, clock)
    synchronize(dev)
    wall = time.perf_counter() - t0
    times = {r.batch_id: r.compute_end - r.compute_start for r in pipe.timeline.records()}
    bad = [q.finish_reason for q in sched.seqs.values() if q.finish_reason != "length"]
    if bad:
        raise RuntimeError(f"{policy}: requests did not finish normally: {bad}")
    return {"wall_s": wall, "batches": batches, "times": times, "plans": pipe.plans, "executor": executor,
            "outputs": [sched.seqs[r.index].output_token_ids for r in requests]}


def replay_prefill_only(run: dict, device, warmup: int, repeats: int) -> dict[int, float]:
    """Prefill-only time of each hybrid batch's chunk(s), replayed alone (same positions, same
    blocks, same host path: executor.step + sync, as the engine timed the hybrid)."""
    ex: StageExecutor = run["executor"]
    fns = {}
    for b in run["batches"]:
        if b.kind != "hybrid":
            continue
        parts = [p for p in run["plans"][b.batch_id].parts if p.is_prefill]
        fns[b.batch_id] = (lambda parts=parts: (ex.step(parts), synchronize(device)))
    if not fns:
        return {}
    samples = time_interleaved(StageClock(device), fns, warmup, repeats)
    return {bid: median(v) for bid, v in samples.items()}


def table4(model, shapes: Shapes, peaks, runs: int, warmup: int, repeats: int,
           policies=("orca", "vllm", "sarathi"), log=print) -> dict:
    s = shapes
    arch = model.arch
    dev = next(model.parameters()).device
    elem = next(model.parameters()).element_size()
    gen = torch.Generator().manual_seed(7)
    requests = [Request(f"r{i}", torch.randint(3, arch.vocab_size, (s.t4_prompt,), generator=gen).tolist(),
                        s.t4_output, 0.0, i) for i in range(s.t4_batch)]
    per_req = -(-(s.t4_prompt + s.t4_output) // s.block_size)
    kv = model.new_kv_cache(s.t4_batch * per_req + 2, s.block_size)
    out = {}
    for policy in policies:
        engine_run(model, kv, s, policy, requests)  # warm-up pass (allocator, kernels)
        passes = []
        for _ in range(runs):
            passes.append(engine_run(model, kv, s, policy, requests))
        walls = [p["wall_s"] for p in passes]
        best = sorted(passes, key=lambda p: p["wall_s"])[len(passes) // 2]  # the median pass
        batches, times = best["batches"], best["times"]
        dec = [(times[b.batch_id], b.num_decode_tokens) for b in batches if b.kind == "decode"]
        hyb = [b for b in batches if b.kind == "hybrid"]
        res = {"wall_s_median": median(walls), "wall_s_all": walls,
               "num_batches": len(batches), "by_kind": {}, "outputs_equal_across_passes":
               all(p["outputs"] == passes[0]["outputs"] for p in passes)}
        for kind in ("prefill", "decode", "hybrid"):
            ks = [b for b in batches if b.kind == kind]
            res["by_kind"][kind] = {"count": len(ks), "time_s": sum(times[b.batch_id] for b in ks)}
        bound = sum(roofline(arch, _shape_of(best["plans"][b.batch_id].parts), elem, peaks.matmul_flops,
                             peaks.copy_bytes_per_s).bound_s for b in batches)
        res["compute_s"] = sum(times.values())
        res["roofline_frac"] = bound / res["compute_s"]
        # Paper: baseline decode time per token = decode-iteration time / batch.
        res["decode_only_per_token_ms"] = (median([t / n for t, n in dec]) * 1e3) if dec else None
        if hyb:
            pre = replay_prefill_only(best, dev, warmup, repeats)
            marg = sum(times[b.batch_id] - pre[b.batch_id] for b in hyb)
            ndec = sum(b.num_decode_tokens for b in hyb)
            res["piggybacked_decode_per_token_ms"] = marg / ndec * 1e3 if ndec else None
            res["hybrid_batches"] = [{"batch_id": b.batch_id, "prefill_tokens": b.num_prefill_tokens,
                                      "decodes": b.num_decode_tokens, "hybrid_ms": times[b.batch_id] * 1e3,
                                      "prefill_only_ms": pre[b.batch_id] * 1e3} for b in hyb]
            all_dec = sum(b.num_decode_tokens for b in batches)
            res["all_decode_per_token_ms"] = (marg + sum(t for t, _ in dec)) / all_dec * 1e3
        out[policy] = res
        log(f"  {policy}: wall {res['wall_s_median'] * 1e3:.1f} ms over {len(batches)} batches "
            + "(" + ", ".join(f"{k} {v['count']}" for k, v in res["by_kind"].items()) + ")")
    del kv
    _free(dev)
    sar = out.get("sarathi", {})
    for base in [p for p in policies if p != "sarathi"]:
        b = out[base]
        ratio = {}
        if b.get("decode_only_per_token_ms") and sar.get("piggybacked_decode_per_token_ms"):
            if sar["piggybacked_decode_per_token_ms"] > 0:
                ratio["decode_speedup"] = b["decode_only_per_token_ms"] / sar["piggybacked_decode_per_token_ms"]
        if sar:
            ratio["e2e_speedup"] = b["wall_s_median"] / sar["wall_s_median"]
        out.setdefault("speedups_vs", {})[base] = ratio
    return out


def _f(x, fmt="{:.2f}", suffix="") -> str:
    return "n/a" if x is None else fmt.format(x) + suffix


def _params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def render(report: dict) -> str:
    info, sh = report["info"], report["shapes"]
    m = sh["model"]
    lines = [f"# pp_sarathi GPU benchmark (issue 7){' - SMALL shapes (smoke test)' if report['small'] else ''}", "",
             f"- date: {report['date']}", f"- device: {info['device']}; torch {info['torch']}"
             + (f", CUDA {info.get('cuda')}" if info.get("cuda") else ""),
             f"- model: LLaMA-shaped, random init on the device, {m['num_layers']} layers, hidden {m['hidden_size']}, "
             f"{m['num_heads']} heads, intermediate {m['intermediate_size']}, vocab {m['vocab_size']}, "
             f"{_params(report['params'])} params, {info['dtype']}",
             f"- measured peaks: matmul {report['peaks']['matmul_tflops']:.1f} TFLOP/s ({report['peaks']['dtype']}, "
             f"n={report['peaks']['matmul_n']}), copy {report['peaks']['copy_gb_per_s']:.0f} GB/s (read+write); "
             "roofline = max(FLOPs/peak, bytes/bandwidth), fraction = bound / measured", ""]
    num = report.get("numerics")
    if num:
        c = num["low_vs_ref_hybrid"]
        lines += ["## Numerics", "",
                  f"{num['dtype']} hybrid batch ({num['rows']} sampled rows: decodes + a second prefill chunk) vs a "
                  f"float32 reference of the same weights on {num['device']}: rel L2 {c['rel_l2_err']:.2e}, "
                  f"rel max {c['rel_max_err']:.2e}, min cosine {c['min_cosine']:.6f}, top-1 agree "
                  f"{c['top1_agree']:.0%}; hybrid vs parts run separately: {num['dtype']} rel L2 "
                  f"{num['low_hybrid_vs_low_separate']['rel_l2_err']:.1e}, float32 rel L2 "
                  f"{num['ref_hybrid_vs_ref_separate']['rel_l2_err']:.1e}.", ""]
    kv = report["kv_capacity"]
    lines += ["## KV capacity", "",
              f"B = (M_G - M_S) / (L * m_kv): M_G {kv['M_G_bytes'] / 2**30:.1f} GiB ({kv['source']}), "
              f"M_S {kv['M_S_bytes'] / 2**30:.2f} GiB, m_kv {kv['m_kv_bytes_per_token'] / 2**10:.0f} KiB/token; "
              f"free after load {kv['free_after_load_bytes'] / 2**30:.1f} GiB", "",
              "| L (seq) | B (formula) | B (free now) |", "|---|---|---|"]
    for L, v in kv["by_seq_len"].items():
        lines.append(f"| {L} | {v['B_formula']} | {v['B_free_now']} |")
    t2 = report["table2"]
    s_p, s_d, s_h = sh["prefill"], sh["decode_batch"], sh["hybrid_decodes"]
    paper = {f"prefill_{s_p}": PAPER_TABLE2_MS["prefill_1024"], f"decode_{s_d}": PAPER_TABLE2_MS["decode_4"],
             f"hybrid_{t2['chunk']}_{s_h}": PAPER_TABLE2_MS["hybrid_1021_3"]}
    lines += ["", f"## Table 2 (decode context {sh['decode_ctx']}; median of {report['repeats']})", "",
              "| batch | tokens | ms | min..max ms | roofline ms | achieved | limiter | paper (A6000) ms |",
              "|---|---|---|---|---|---|---|---|"]
    for name, r in t2["rows"].items():
        pv = paper.get(name) if not report["small"] else None
        lines.append(f"| {name} | {r['tokens']} | {r['ms']:.2f} | {r['min_ms']:.2f}..{r['max_ms']:.2f} | "
                     f"{r['bound_ms']:.2f} | {r['roofline_frac']:.0%} | {r['limiter']} | {_f(pv)} |")
    d = t2["derived"]
    lines += ["", "| per token | ours ms | paper ms |", "|---|---|---|",
              f"| prefill ({s_p}) | {d['prefill_per_token_ms']:.4f} | {PAPER_TABLE2_PER_TOKEN_MS['prefill']} |",
              f"| decode-only (batch {s_d}) | {d['decode_per_token_ms']:.3f} | {PAPER_TABLE2_PER_TOKEN_MS['decode']} |",
              f"| piggybacked decode ((hybrid - prefill {t2['chunk']}) / {s_h}) | {d['piggybacked_decode_per_token_ms']:.3f}"
              f" | ~{PAPER_TABLE2_PER_TOKEN_MS['piggybacked_decode']} |",
              f"| piggybacked decode ((hybrid - prefill {s_p}) / {s_h}, the paper's reading) | "
              f"{d['piggybacked_decode_per_token_vs_full_prefill_ms']:.3f} | ~{PAPER_TABLE2_PER_TOKEN_MS['piggybacked_decode']} |",
              "", f"Piggyback speedup (decode-only {s_h} per token / piggybacked per token): "
              f"{_f(d['piggyback_speedup'], suffix='x')}; (prefill {t2['chunk']} + decode {s_h}) / hybrid = "
              f"{d['hybrid_vs_separate']:.2f}x."]
    t4 = report.get("table4")
    if t4:
        lines += ["", f"## Table 4 row 1 (seq {sh['t4_prompt'] + sh['t4_output']}, batch {sh['t4_batch']}, prompt "
                  f"{sh['t4_prompt']} + output {sh['t4_output']} (P:D {sh['t4_prompt'] / sh['t4_output']:.0f}), "
                  f"chunk {sh['t4_chunk']}, tile {sh['t4_tile']}; vllm budget {sh['vllm_budget']}; "
                  f"real engine loop pp=1, median of {report['runs']} passes)", "",
                  "| policy | wall ms | batches (prefill/decode/hybrid) | decode ms/token | all decodes ms/token "
                  "| roofline achieved |", "|---|---|---|---|---|---|"]
        for pol, r in t4.items():
            if pol == "speedups_vs":
                continue
            k = r["by_kind"]
            dec = r.get("piggybacked_decode_per_token_ms") if pol == "sarathi" else r.get("decode_only_per_token_ms")
            lines.append(f"| {pol} | {r['wall_s_median'] * 1e3:.1f} | {k['prefill']['count']}/{k['decode']['count']}/"
                         f"{k['hybrid']['count']} | {_f(dec, '{:.3f}')} | {_f(r.get('all_decode_per_token_ms'), '{:.3f}')}"
                         f" | {r['roofline_frac']:.0%} |")
        lines += ["", "| SARATHI vs | decode speedup | E2E speedup | paper decode | paper E2E |", "|---|---|---|---|---|"]
        for base, v in t4.get("speedups_vs", {}).items():
            lines.append(f"| {base} | {_f(v.get('decode_speedup'), suffix='x')} | {_f(v.get('e2e_speedup'), suffix='x')} | "
                         f"{PAPER_TABLE4_ROW1['decode_speedup']}x | {PAPER_TABLE4_ROW1['e2e_speedup']}x |")
        lines += ["", "Decode ms/token: baselines = decode-only iteration time / decodes (median over iterations); "
                  "sarathi = sum over hybrid batches of (hybrid - prefill-only replay of the same chunk) / decodes. "
                  "'all decodes' also charges sarathi's decode-only tail iterations. E2E = wall time to finish all "
                  "requests."]
    lines += ["", f"Total time {report['elapsed_s']:.0f} s."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pp_sarathi.bench.gpu", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="directory for gpu_bench.md / gpu_bench.json (stdout only if unset)")
    ap.add_argument("--small", action="store_true", default=os.environ.get("PP_SARATHI_BENCH_SMALL") == "1",
                    help="tiny shapes (runs on CPU in seconds; env PP_SARATHI_BENCH_SMALL=1)")
    ap.add_argument("--device", default="auto", help="auto (cuda if present), cuda, cpu")
    ap.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--runs", type=int, default=None, help="engine passes per policy (after one warm-up pass)")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    ap.add_argument("--skip-table4", action="store_true")
    ap.add_argument("--skip-numerics", action="store_true")
    args = ap.parse_args(argv)
    t_start = time.perf_counter()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cpu" and not args.small:
        print("no CUDA device: the LLaMA-13B shapes need a GPU (pass --small for a CPU smoke test)",
              file=sys.stderr)
        return 2
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    shapes = SMALL if args.small else LARGE
    warmup = args.warmup if args.warmup is not None else (1 if args.small else 3)
    repeats = args.repeats if args.repeats is not None else (3 if args.small else 10)
    runs = args.runs if args.runs is not None else (1 if args.small else 3)
    dtype = DTYPES[args.dtype]
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731

    info = device_info(device, dtype)
    log(f"[gpu-bench] {info['device']}, {info['dtype']}, torch {info['torch']}")
    peaks = measure_peaks(device, dtype, **shapes.peaks)
    log(f"[gpu-bench] peaks: {peaks.matmul_flops / 1e12:.2f} TFLOP/s, {peaks.copy_bytes_per_s / 1e9:.0f} GB/s")
    numerics = None
    if not args.skip_numerics and dtype != torch.float32:
        numerics = hybrid_logits_check(device, dtype)
        log(f"[gpu-bench] numerics vs float32: rel L2 {numerics['low_vs_ref_hybrid']['rel_l2_err']:.2e}")
    arch = ModelArch.from_shape(**shapes.model, dtype=args.dtype)
    t = time.perf_counter()
    model = random_stage_model(arch, dtype=dtype, device=device)
    synchronize(device)
    log(f"[gpu-bench] built {arch.num_params() / 1e9:.2f}B-param model in place in {time.perf_counter() - t:.1f} s")
    kv = kv_capacity(model, sorted({shapes.decode_ctx, shapes.t4_prompt + shapes.t4_output,
                                            arch.max_position_embeddings}))
    log("[gpu-bench] Table 2 ...")
    t2 = table2(model, shapes, peaks, warmup, repeats)
    t4 = None
    if not args.skip_table4:
        log("[gpu-bench] Table 4 row 1 ...")
        t4 = table4(model, shapes, peaks, runs, max(1, warmup - 1), max(3, repeats // 2), log=log)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "small": args.small, "info": info,
              "peaks": peaks.to_dict(), "params": arch.num_params(),
              "shapes": {k: v for k, v in shapes.__dict__.items() if k != "peaks"},
              "warmup": warmup, "repeats": repeats, "runs": runs, "numerics": numerics,
              "kv_capacity": kv, "table2": t2, "table4": t4,
              "paper": {"table2_ms": PAPER_TABLE2_MS, "table2_per_token_ms": PAPER_TABLE2_PER_TOKEN_MS,
                        "table4_row1": PAPER_TABLE4_ROW1}}
    report["elapsed_s"] = time.perf_counter() - t_start
    md = render(report)
    print(md)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu_bench.md").write_text(md)
        (out / "gpu_bench.json").write_text(json.dumps(report, indent=2, default=_jsonable))
        log(f"[gpu-bench] wrote {out}/gpu_bench.md and gpu_bench.json")
    return 0


def _jsonable(x):
    if hasattr(x, "__dict__"):
        return {k: v for k, v in x.__dict__.items() if not k.startswith("_")}
    return str(x)


if __name__ == "__main__":
    sys.exit(main())
