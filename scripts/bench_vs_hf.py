#!/usr/bin/env python
"""pp_sarathi (pp=1, sarathi) vs transformers' ``generate`` on the same model and workload.

Both sides get the embedded default model (the very same checkpoint directory), the same
prompts (a seeded synthetic workload written to JSONL) and the same output lengths (EOS
ignored: ``sampling.ignore_eos=true`` for us, ``min_new_tokens = max_new_tokens`` for HF),
greedy decoding, float32 by default, in one sitting on this device.

HF gets its best static batching: for each batch size (and two orders: input order, and
sorted by output then prompt length, which cuts padding and over-generation) requests are
left-padded into batches and each batch generates max(output length in the batch) tokens;
only the tokens each request asked for count as output (padding and over-generated tokens
are HF's cost). The best configuration is reported. Throughputs: output tokens/s and total
(prompt + output) tokens/s over the serving time only (model load excluded on both sides).

    .venv/bin/python scripts/bench_vs_hf.py                         # a few minutes on 2 cores
    .venv/bin/python scripts/bench_vs_hf.py --num-requests 16 --batch-sizes 1,4,8,16 -- scheduler.chunk_size=256

Writes OUT/vs_hf.md, OUT/vs_hf.json and OUT/pp_sarathi/ (the run dir); OUT defaults to
runs/bench_vs_hf-<timestamp>.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from pp_sarathi.bench.device import describe_device
from pp_sarathi.bench.runs import parse_script_args, machine_note, md_table, read_outputs, run_cli
from pp_sarathi.config import ModelConfig, WorkloadConfig
from pp_sarathi.runtime.stage import resolve_model
from pp_sarathi.workload.synthetic import synthetic_requests


def hf_generate_all(model, reqs, batch_size: int, order: str, pad_id: int, device) -> dict:
    """Run every request through HF generate in static batches; returns timing and outputs."""
    idx = list(range(len(reqs)))
    if order == "sorted":
        idx.sort(key=lambda i: (reqs[i].max_tokens, len(reqs[i].prompt_token_ids)))
    outputs: dict[int, list[int]] = {}
    generated = padded_prompt = 0
    t0 = time.perf_counter()
    for s in range(0, len(idx), batch_size):
        group = idx[s:s + batch_size]
        width = max(len(reqs[i].prompt_token_ids) for i in group)
        new = max(reqs[i].max_tokens for i in group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            p = reqs[i].prompt_token_ids
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        with torch.inference_mode():
            out = model.generate(ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                 max_new_tokens=new, min_new_tokens=new, pad_token_id=pad_id,
                                 eos_token_id=None)
        gen = out[:, width:].tolist()
        for row, i in enumerate(group):
            outputs[i] = gen[row][:reqs[i].max_tokens]
        generated += len(group) * new
        padded_prompt += len(group) * width
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "outputs": outputs, "generated_tokens": generated, "padded_prompt_tokens": padded_prompt}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--num-requests", type=int, default=8)
    ap.add_argument("--min-len", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--pd-ratio", type=float, default=8.0)
    ap.add_argument("--length-dist", default="zipf")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=128, help="pp_sarathi sarathi token budget")
    ap.add_argument("--max-batch-size", type=int, default=None, help="pp_sarathi max batch (default: all requests)")
    ap.add_argument("--batch-sizes", default=None, help="HF batch sizes to try (default 1,4,8,...,N)")
    ap.add_argument("--orders", default="input,sorted")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default="default", help="model preset name for both sides (default, tiny)")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads for both sides (0 = all cores, pp_sarathi's default)")
    args, extra = parse_script_args(ap, argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
        extra = [f"parallel.threads_per_stage={args.threads}", *extra]
    import transformers

    out = args.out or Path("runs") / f"bench_vs_hf-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    # The embedded model exactly as the CLI resolves the preset (conf/model/<name>.yaml values).
    mcfg = ModelConfig()
    if args.model == "tiny":
        for k, v in dict(name="tiny", vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=4,
                         num_heads=4, num_kv_heads=2, max_position_embeddings=512).items():
            setattr(mcfg, k, v)
    elif args.model != "default":
        ap.error("--model must be default or tiny")
    path, arch = resolve_model(mcfg)
    wcfg = WorkloadConfig(name="synthetic", num_requests=args.num_requests, min_len=args.min_len,
                          max_len=args.max_len, pd_ratio=args.pd_ratio, length_dist=args.length_dist,
                          arrival="static", seed=args.seed)
    reqs = synthetic_requests(wcfg, arch.vocab_size, arch.eos_token_ids)
    jsonl = out / "workload.jsonl"
    jsonl.write_text("".join(json.dumps({"id": r.id, "prompt_token_ids": r.prompt_token_ids,
                                         "max_tokens": r.max_tokens}) + "\n" for r in reqs))
    prompt_tokens = sum(len(r.prompt_token_ids) for r in reqs)
    output_tokens = sum(r.max_tokens for r in reqs)
    note = machine_note()
    print(f"[bench_vs_hf] {note}; model {path}; {len(reqs)} requests, {prompt_tokens} prompt + "
          f"{output_tokens} output tokens", flush=True)

    # --- pp_sarathi ------------------------------------------------------------------
    ours = run_cli("run", ["parallel.pp=1", "scheduler=sarathi", f"model.path={path}", f"model.dtype={args.dtype}",
                           "workload=jsonl", f"workload.path={jsonl.resolve()}", "sampling.ignore_eos=true",
                           "sampling.temperature=0", f"scheduler.chunk_size={args.chunk_size}",
                           f"scheduler.max_batch_size={args.max_batch_size or len(reqs)}",
                           "logging.trace=false", *extra], out / "pp_sarathi")
    our_out = {i: o["output_token_ids"] for i, o in enumerate(read_outputs(out / "pp_sarathi"))}
    assert sum(len(v) for v in our_out.values()) == output_tokens, "pp_sarathi did not produce every token"
    ours_row = {"wall_s": ours["wall_s"], "output_tok_s": output_tokens / ours["wall_s"],
                "total_tok_s": (prompt_tokens + output_tokens) / ours["wall_s"],
                "results_tokens_per_s": ours["throughput"]["tokens_per_s"]}
    print(f"[bench_vs_hf] pp_sarathi: {ours_row['output_tok_s']:.1f} output tok/s, "
          f"{ours_row['total_tok_s']:.1f} total tok/s (wall {ours['wall_s']:.2f} s, device {ours['device']})",
          flush=True)

    # --- transformers generate ---------------------------------------------------------
    device = torch.device(ours["device"])
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa")
    hf = hf.to(device).eval()
    # Ignore EOS like pp_sarathi's sampling.ignore_eos: no stop token at all, so greedy picks are not
    # altered (min_new_tokens would instead mask EOS out of the logits); min = max keeps the length.
    hf.generation_config.eos_token_id = None
    pad_id = 0
    hf_generate_all(hf, reqs[:1], 1, "input", pad_id, device)  # warm-up (first-call overheads)
    sizes = ([int(x) for x in args.batch_sizes.split(",")] if args.batch_sizes else
             sorted({b for b in (1, 4, 8, 16, 32) if b < len(reqs)} | {len(reqs)}))
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    hf_rows = []
    for b in sizes:
        for order in orders if b > 1 else ["input"]:  # order does not matter one at a time
            r = hf_generate_all(hf, reqs, b, order, pad_id, device)
            same = sum(r["outputs"][i] == our_out[i] for i in range(len(reqs)))
            row = {"batch_size": b, "order": order, "wall_s": r["wall_s"],
                   "output_tok_s": output_tokens / r["wall_s"],
                   "total_tok_s": (prompt_tokens + output_tokens) / r["wall_s"],
                   "generated_tokens": r["generated_tokens"], "padded_prompt_tokens": r["padded_prompt_tokens"],
                   "requests_identical_to_pp_sarathi": same}
            hf_rows.append(row)
            print(f"[bench_vs_hf] HF generate batch {b} ({order}): {row['output_tok_s']:.1f} output tok/s, "
                  f"{row['total_tok_s']:.1f} total tok/s (wall {r['wall_s']:.2f} s; {same}/{len(reqs)} "
                  f"requests token-identical to pp_sarathi)", flush=True)
    best = max(hf_rows, key=lambda x: x["total_tok_s"])
    note_after = machine_note()

    dev_name = describe_device(device)
    header = ["engine", "config", "wall s", "output tok/s", "total tok/s", "identical outputs"]
    rows = [["pp_sarathi (sarathi, pp=1)", f"chunk {args.chunk_size}, max batch {args.max_batch_size or len(reqs)}",
             f"{ours['wall_s']:.2f}", f"{ours_row['output_tok_s']:.1f}", f"{ours_row['total_tok_s']:.1f}", "-"]]
    for r in hf_rows:
        rows.append([("**HF generate (best)**" if r is best else "HF generate"), f"batch {r['batch_size']}, {r['order']}",
                     f"{r['wall_s']:.2f}", f"{r['output_tok_s']:.1f}", f"{r['total_tok_s']:.1f}",
                     f"{r['requests_identical_to_pp_sarathi']}/{len(reqs)}"])
    ratio_out = ours_row["output_tok_s"] / best["output_tok_s"]
    ratio_tot = ours_row["total_tok_s"] / best["total_tok_s"]
    md = "\n".join([
        f"pp_sarathi vs transformers {transformers.__version__} `generate`, measured {time.strftime('%Y-%m-%d %H:%M')} on "
        f"{dev_name}, {args.dtype}, torch threads on both sides: {torch.get_num_threads()} ({note}; after: {note_after.split('load average ')[-1]}).",
        f"Model: embedded `{args.model}` preset ({arch.num_layers} layers, hidden {arch.hidden_size}, "
        f"{arch.num_params() / 1e6:.1f}M params), the same checkpoint dir for both. Workload: {len(reqs)} requests, "
        f"synthetic {args.length_dist} lengths {args.min_len}-{args.max_len}, P:D {args.pd_ratio:g}, seed {args.seed}: "
        f"{prompt_tokens} prompt + {output_tokens} output tokens, greedy, EOS ignored. "
        f"Extra pp_sarathi overrides: {' '.join(extra) or 'none'}.",
        "Throughput counts only requested tokens over serving time (model load excluded); HF pads prompts on "
        "the left and generates max(output length) per batch. 'identical outputs': requests whose greedy "
        "tokens equal pp_sarathi's.", "",
        md_table(header, rows), "",
        f"**pp_sarathi / best HF (batch {best['batch_size']}, {best['order']}): {ratio_out:.2f}x output tokens/s, "
        f"{ratio_tot:.2f}x total tokens/s.**", ""])
    print(md)
    (out / "vs_hf.md").write_text(md)
    (out / "vs_hf.json").write_text(json.dumps({
        "device": dev_name, "machine_before": note, "machine_after": note_after, "model_path": str(path),
        "transformers": transformers.__version__, "torch": torch.__version__, "dtype": args.dtype,
        "prompt_tokens": prompt_tokens, "output_tokens": output_tokens, "pp_sarathi": ours_row, "hf": hf_rows,
        "hf_best": best, "ratio_output_tok_s": ratio_out, "ratio_total_tok_s": ratio_tot}, indent=2))
    print(f"[bench_vs_hf] wrote {out}/vs_hf.md and vs_hf.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
