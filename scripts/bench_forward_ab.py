#!/usr/bin/env python
"""Whole forward passes of the embedded default model with one switch of the model on and off:

* ``--switch attention``: the in-place paged CPU attention kernels (model/cpu_attention.py:
  decodes and prefill chunks) against the gather + SDPA path;
* ``--switch last_layer``: the last layer carried on for the sampled rows alone (model/llama.py,
  a stage holding the whole model) against every row through it. Each case with prefill chunks
  is timed once with them sampled (final chunks) and once not (middle chunks).

Each case is one batch through the real StageModel / KVCache / build_attention_metadata path,
timed with the switch on and off in alternating order, round after round, in one process (load
changes hit both alike); figures are medians. The first forward of each case checks that both
ways give the same greedy tokens and prints the largest logit difference.

    .venv/bin/python scripts/bench_forward_ab.py                 # attention, 1 thread
    .venv/bin/python scripts/bench_forward_ab.py --threads 2 --rounds 9
    .venv/bin/python scripts/bench_forward_ab.py --switch last_layer --threads 1
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from pp_sarathi.bench.runs import machine_note
from pp_sarathi.config import ModelConfig
from pp_sarathi.model import cpu_attention
from pp_sarathi.model.kv_cache import PartSpec, build_attention_metadata
from pp_sarathi.model.loader import load_stage
from pp_sarathi.model.source import resolve_checkpoint

BLOCK = 16
# (name, prefill chunks as (cached tokens, chunk tokens), decode contexts)
CASES = [
    ("chunk 128 @0", [(0, 128)], []),
    ("chunk 128 @384", [(384, 128)], []),
    ("chunk 128 @1920", [(1920, 128)], []),
    ("chunks 64 @0 + 64 @200", [(0, 64), (200, 64)], []),
    ("chunk 128 @384 + 16 decodes @512", [(384, 128)], [512] * 16),
    ("chunk 100 @384 + 28 decodes @512", [(384, 100)], [512] * 28),
    ("chunk 128 @1920 + 16 decodes @2000", [(1920, 128)], [2000] * 16),
    ("16 decodes @512", [], [512] * 16),
    ("28 decodes @400", [], [400] * 28),
    ("16 decodes @2000", [], [2000] * 16),
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--switch", choices=["attention", "last_layer"], default="attention")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if not cpu_attention.applies(torch.zeros(1, 16, 64), torch.zeros(16, 4, 64)):
        raise SystemExit("the CPU attention kernels cannot be built here (no C compiler?)")
    labels = {"attention": ("gather + SDPA", "in-place kernel"), "last_layer": ("every row", "sampled rows")}[args.switch]
    src = resolve_checkpoint(ModelConfig())
    arch = src.arch
    model = load_stage(src.path, 0, arch.num_layers, arch=arch)
    model.prepare_kernels()
    kv = model.new_kv_cache(8192, BLOCK)
    gen = torch.Generator().manual_seed(0)
    kv.k.normal_(generator=gen)
    kv.v.normal_(generator=gen)
    next_block = 0

    def table(tokens: int) -> list[int]:
        nonlocal next_block
        t = list(range(next_block, next_block + -(-tokens // BLOCK)))
        next_block += len(t)
        return t

    def switch(on: bool) -> None:
        if args.switch == "attention":
            cpu_attention.ENABLED = on
        else:
            model.prune_last_layer = on

    batches = []
    finals = (True,) if args.switch == "attention" else (True, False)
    for name, chunks, decodes in CASES:
        tables = [table(start + n) for start, n in chunks] + [table(ctx) for ctx in decodes]
        for final in finals if chunks else (True,):  # both variants write the same slots
            parts = [PartSpec(start, n, t, final) for (start, n), t in zip(chunks, tables)]
            parts += [PartSpec(ctx - 1, 1, t, True) for ctx, t in zip(decodes, tables[len(chunks):])]
            meta = build_attention_metadata(parts, BLOCK, "cpu")
            ids = torch.randint(0, arch.vocab_size, (meta.num_tokens,), generator=gen)
            label = name if len(finals) == 1 or not chunks else f"{name}, {'final' if final else 'middle'} chunk"
            batches.append((label, ids, meta))

    print(machine_note(), f"torch {torch.__version__}, {args.threads} thread(s)", flush=True)
    times: dict[tuple[str, bool], list[float]] = {}
    with torch.inference_mode():
        for name, ids, meta in batches:
            out = {}
            for on in (True, False):
                switch(on)
                out[on] = model(ids, meta, kv)
            if out[True].numel():
                same = bool((out[True].argmax(-1) == out[False].argmax(-1)).all())
                diff = (out[True] - out[False]).abs().max().item()
                print(f"{name}: greedy tokens {'identical' if same else 'DIFFER'}, max |logit diff| {diff:.1e}")
        for r in range(args.rounds):
            for on in ((True, False) if r % 2 == 0 else (False, True)):
                switch(on)
                for name, ids, meta in batches:
                    t0 = time.perf_counter()
                    model(ids, meta, kv)
                    times.setdefault((name, on), []).append(time.perf_counter() - t0)
    switch(True)
    print(f"\n{args.switch}: median of {args.rounds} forwards, load average now {os.getloadavg()[0]:.2f}\n")
    print(f"| batch | {labels[0]} ms | {labels[1]} ms | speedup |")
    print("|---|---|---|---|")
    for name, _, _ in batches:
        off = statistics.median(times[(name, False)]) * 1e3
        on = statistics.median(times[(name, True)]) * 1e3
        print(f"| {name} | {off:.1f} | {on:.1f} | {off / on:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
