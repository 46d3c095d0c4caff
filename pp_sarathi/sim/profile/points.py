"""What a profile measures: the sweeps' grids, a measurement point, and the micro-batch shapes
of the whole-stage steps."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ...model.kv_cache import PartSpec
from ...scheduler.batch import ScheduledPart

# Token counts of the linear sweep: every count up to 48 (small GEMMs are not monotonic in the
# row count on CPUs: 3 rows can cost more than 4), then a step of 5 (so that interpolation
# averages over the row-blocking residues), then coarser.
TOKEN_GRID = (list(range(1, 49)) + list(range(53, 161, 5))
              + [177, 206, 256, 320, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192])
CHUNK_GRID = [8, 32, 64, 128, 256, 512, 1024, 2048]
CACHED_GRID = [0, 128, 256, 512, 1024, 2048, 4096, 8192]
DECODE_BATCH_GRID = [1, 2, 4, 8, 16, 32, 64]
CONTEXT_GRID = [16, 64, 128, 256, 512, 1024, 2048, 4096, 8192]
ROWS_GRID = [1, 2, 4, 8, 16, 32, 64, 128]
P2P_BYTES = [16, 256, 4096, 65536, 262144, 1 << 20, 4 << 20, 16 << 20]
# Micro-batches above this many tokens (whole prompts) take seconds a step: they are timed in
# fewer calls, and without waiting for the co-runners (see Point.settle).
WHOLE_PROMPT_TOKENS = 1024


@dataclass
class Point:
    """One measurement: an op at one shape, its CSV columns and how to time it."""

    op: str
    cols: dict
    setup: Callable[[], Callable[[], object]]  # builds the inputs, returns the call to time
    per: int = 1  # the call covers this many layers: seconds are per layer
    flush: bool = False  # evict the CPU caches before each call (weights come from memory)
    calls: int = 1  # consecutive calls per round at least (their spread is the step-to-step jitter)
    rounds: int = 0  # timed in this many rounds only (0: every round); for the slowest points
    # Start timing only once every co-runner runs this very point: a stage step timed next to
    # co-runners still finishing the previous point sees less contention than in a pipeline
    # (docs/simulator.md). Whole-prompt steps, seconds long and compute-bound, skip the wait.
    settle: bool = False


def contiguous_tables(lengths: list[int], block_size: int) -> list[list[int]]:
    """Block tables packed from block 0, as the block manager hands out low ids first."""
    tables, nxt = [], 0
    for n in lengths:
        nb = -(-n // block_size)
        tables.append(list(range(nxt, nxt + nb)))
        nxt += nb
    return tables


def mixed_specs(chunk, prefills, cached, decodes, ctx, logits, bs) -> list[PartSpec]:
    """``prefills`` chunks of ``chunk`` tokens over ``cached`` ones, then ``decodes`` decodes at ``ctx``."""
    np_ = prefills if chunk else 0
    tables = contiguous_tables([cached + chunk] * np_ + [ctx] * decodes, bs)
    return ([PartSpec(cached, chunk, tables[i], logits) for i in range(np_)]
            + [PartSpec(ctx - 1, 1, t, logits) for t in tables[np_:]])


def mixed_parts(chunk, prefills, cached, decodes, ctx, bs) -> list[ScheduledPart]:
    """The same batch as the scheduler hands it to a stage (every part samples)."""
    specs = mixed_specs(chunk, prefills, cached, decodes, ctx, True, bs)
    return [ScheduledPart(seq_index=i, start=s.start, token_ids=[1] * s.num_tokens, block_table=s.block_table,
                          is_prefill=s.num_tokens > 1, sample=True, output_index=0) for i, s in enumerate(specs)]

def stage_shapes(chunk: int, per_batch: int, max_dec: int, max_tokens: int, max_ctx: int
                  ) -> list[tuple[int, int, int, int, int]]:
    """(chunk, prefill parts, cached, decodes, decode context) of the whole-stage measurements:
    decode-only, prefill-only (one or several prompts) and hybrid micro-batches around the
    configured chunk size and batch size, and the shapes of schedulers that do not chunk
    (Orca, vLLM, FasterTransformer): whole prompts, a micro-batch full of them, a whole prompt
    next to the other requests' decodes."""
    d = max(1, min(per_batch, max_dec))
    whole = max(16, min(256, max_ctx // 4))  # a typical whole prompt
    cand = [(0, 0, 0, 1, 128), (0, 0, 0, 3, 384), (0, 0, 0, max(2, d // 2), 256), (0, 0, 0, d, 128),
            (0, 0, 0, d, 512), (0, 0, 0, min(max_dec, 2 * d), 320),
            (chunk, 1, 0, 0, 0), (chunk, 1, 256, 0, 0), (max(8, chunk // 4), 1, 384, 0, 0),
            (chunk, 4, 0, 0, 0), (2 * chunk, 2, 0, 0, 0),
            (chunk - d + 1, 1, 256, d - 1, 384), (chunk, 1, 128, 3, 256), (max(8, chunk // 4), 1, 512, d - 2, 256),
            (max(8, chunk // 2), 1, 0, d // 2, 448), (max(8, chunk - 2), 1, 640, 2, 200), (chunk, 1, 0, d, 160),
            (2 * chunk, 1, 0, d, 300), (chunk, 2, 64, 6, 256),
            (whole, per_batch, 0, 0, 0), (whole, max(2, per_batch // 2), 0, 0, 0),
            (7 * whole // 4, 1, 0, d - 1, 2 * whole), (whole, 4, 0, d - 4, 5 * whole // 4)]
    out = []
    for c, p, k, b, ctx in cand:
        b = max(0, min(b, max_dec))
        if c == 0 and b == 0:
            continue
        if c * p + b > max_tokens or k + c > max_ctx or ctx > max_ctx or (p and (c < 2 or p > per_batch)):
            continue
        if (c, p, k, b, ctx) not in out:
            out.append((c, p, k, b, ctx))
    return out
