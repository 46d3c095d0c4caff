"""The compute-uniform planner behind ``sarathi_uniform``: a target stage time T chosen online,
and the filling of a micro-batch with prefill tokens up to T.

The predictor is duck-typed (``pp_sarathi.cost.plan.PlanCost``: ``seconds(prefills,
decode_ctx, num_sampled)`` and ``with_decodes(decode_ctx)``); the scheduler floor does not
import the cost package. Everything is plain Python over the running requests and the first
few waiting ones, so a call stays cheap with thousands of requests queued.
"""
from __future__ import annotations

import itertools
import math

from .sequence import Sequence

# Weight of the newest raw target in the smoothed one: consecutive micro-batches share the
# pipeline's stages, so T moves over a few micro-batches instead of jumping with each.
SMOOTHING = 0.25

# Prompts are paced against the running decodes only while those hold this share of the request
# slots (``max_batch_size``). Below it, whether the queue or the KV cache keeps the decode set
# small, the queued prompts are the decodes to come, and spreading them thin leaves every
# micro-batch short of decodes. The share was chosen by a sweep (docs/benchmarks.md, eighth
# sitting): lower let decode-heavy traces stay slow, higher cost throughput on deep pipelines.
PACE_MIN_DECODE_SHARE = 0.75


class TargetRule:
    """Chooses the target stage time T of each micro-batch.

    With ``target_ms`` set, T is that. Otherwise T is the predicted time of a reference
    micro-batch: the mean number of decodes per micro-batch (running decodes / pipeline depth,
    at their mean context) plus ``p`` prefill tokens, where ``p`` is what finishes the queued
    prompt tokens within the running requests' mean remaining decode steps:

        p = queued prompt tokens / (depth * remaining decode steps)

    clamped to [one tile, the token budget ``chunk_size`` less the decodes] and rounded so that
    decodes + ``p`` is a tile multiple; the reference chunk reads the KV of half a typical
    queued prompt. Many queued prompts (high P:D) give the budget; few (low P:D) give small,
    decode-led micro-batches. Pacing needs decodes to pace against: while they hold less than
    ``PACE_MIN_DECODE_SHARE`` of the request slots the budget is used, so that prompts become
    decodes without delay. When the queue holds the last requests (none pending, all
    admissible) there is nothing left to pace and the budget is used: spreading the last
    prompts thin would only stretch the run's tail. T is re-derived once per pipeline round
    (``depth`` micro-batches) and smoothed exponentially.
    """

    def __init__(self, chunk_size: int, tile: int, depth: int, max_batch_size: int,
                 target_ms: float | None = None):
        self.chunk_size, self.tile, self.depth = chunk_size, max(1, tile), max(1, depth)
        self.max_batch_size = max_batch_size
        self.fixed = None if target_ms is None else target_ms / 1e3
        self.value: float | None = None  # the smoothed T (seconds)
        self.prefill_tokens = 0  # p of the last raw target
        self._calls = 0

    def raw(self, running: list[Sequence], waiting, cost, draining: bool = False) -> float:
        """The unsmoothed target for the current queue and decodes (seconds)."""
        # One pass of plain attribute reads: this runs for every micro-batch of a simulation.
        decodes = ctx_sum = 0
        steps_sum = 0.0
        queued = prompt_sum = prompts = 0
        for s in running:
            out = len(s.output_token_ids)
            total = s.prompt_len + out
            # Prompt tokens in flight still count as queued (num_computed, not num_scheduled):
            # with chunks_in_flight the queue would otherwise look shorter a round early.
            left = total - s.num_computed
            if out and left <= 1:
                decodes += 1
                ctx_sum += total
                steps_sum += max(1, s.request.max_tokens - out)
            else:
                queued += left
                prompt_sum += s.prompt_len
                prompts += 1
        # Only prompts that can start soon: admission is capped at max_batch_size requests.
        for s in itertools.islice(waiting, self.max_batch_size):
            queued += s.prompt_len + len(s.output_token_ids) - s.num_computed
            prompt_sum += s.prompt_len
            prompts += 1
        nd = math.ceil(decodes / self.depth)
        ctx = ctx_sum // decodes if decodes else 0
        steps = steps_sum / decodes if decodes else 0.0
        tile = self.tile
        # The token budget counts decodes and prefill together (as SARATHI's chunk does).
        hi = max(tile, self.chunk_size // tile * tile - nd)
        if queued <= 0:
            p = tile
        elif (decodes < PACE_MIN_DECODE_SHARE * self.max_batch_size  # none at all: nothing to pace against
              or (draining and len(running) + len(waiting) <= self.max_batch_size)):
            p = hi
        else:
            need = queued / (self.depth * steps)
            total = int(math.ceil((nd + need) / tile)) * tile
            p = min(hi, max(tile, total - nd))
        self.prefill_tokens = p
        # A typical chunk reads half of its prompt's earlier tokens.
        mean_prompt = prompt_sum / prompts if prompts else 0.0
        cached = max(0, int(mean_prompt / 2 - p / 2))
        return cost.seconds([(p, cached)], [ctx] * nd, nd)

    def __call__(self, running: list[Sequence], waiting, cost, draining: bool = False) -> float:
        """T for the next micro-batch; ``draining``: no request is still to arrive."""
        if self.fixed is not None:
            return self.fixed
        self._calls += 1
        if self.value is not None and self._calls % self.depth:
            return self.value  # once per pipeline round: the queue moves little in between
        t = self.raw(running, waiting, cost, draining)
        self.value = t if self.value is None else self.value + SMOOTHING * (t - self.value)
        return self.value


def decodes_to_take(sched) -> tuple[list[Sequence], list[Sequence]]:
    """The schedulable decodes a micro-batch takes, and those it holds for the next one: it
    takes all of them, except that while prompt work could join it (a prompt chunk schedulable,
    or a waiting request admissible, and a free KV block), it takes at most
    ``per_batch_cap - 1``, so that one request slot is left for a prompt chunk. Otherwise a
    pipeline slot whose requests all decode fills its cap with decodes alone, a micro-batch at a
    fraction of T in the middle of the prefill phase. The caller keeps the held decodes from
    being preempted for this micro-batch's prompt. A micro-batch still takes at least its even
    share of the decoding requests (``ceil(decoding / depth)``), so that the pipeline's slots
    together take them all."""
    decodes = sched.schedulable_decodes()
    limit = sched.per_batch_cap - 1
    if len(decodes) <= limit or sched.blocks.num_free == 0:
        return decodes, []
    admissible = sched.waiting and len(sched.running) < sched.cfg.max_batch_size
    if not (admissible or sched.schedulable_prefills()):
        return decodes, []
    decoding = sum(1 for s in sched.running if not s.is_prefill)
    k = max(limit, math.ceil(decoding / sched.max_inflight))
    return decodes[:k], decodes[k:]


def largest_fit(fits, left: int, base: int, tile: int, last_part: bool = False) -> int:
    """Largest chunk ``n <= left`` with ``fits(n)`` whose batch total ``base + n`` is a tile
    multiple, or ``n == left`` (a prompt's whole remainder, which the next prompt tops up);
    0 when none fits. ``last_part``: no other part can follow (the batch's request cap), so
    an aligned chunk is preferred to an unaligned whole remainder.

    ``fits`` is monotone (more tokens never take less time): a binary search over the
    tile-aligned chunk lengths."""
    whole = fits(left)
    if whole and (not last_part or (base + left) % tile == 0):
        return left
    first = (-base) % tile or tile  # smallest n that makes base + n a tile multiple
    if first >= left or not fits(first):
        return left if whole else 0
    lo, hi = 0, (left - 1 - first) // tile  # k: n = first + k * tile < left
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(first + mid * tile):
            lo = mid
        else:
            hi = mid - 1
    return first + lo * tile


def nearest_fit(time_of, target: float, left: int, base: int, tile: int, last_part: bool = False,
                now: float = 0.0) -> int:
    """The chunk whose batch time is nearest ``target``: :func:`largest_fit`'s, or one tile
    more when that overshoots by less than the fit falls short (on GPUs a tile more costs a
    step: ``target`` between two steps must not always round down). ``now``: the batch's time
    without this chunk (the shortfall when nothing fits)."""
    n = largest_fit(lambda k: time_of(k) <= target, left, base, tile, last_part)
    if n == left:
        return n
    up = min(left, n + tile if n else ((-base) % tile or tile))
    if last_part and up == left and (base + left) % tile:
        return n
    below = time_of(n) if n else now
    return up if time_of(up) - target < target - below else n


def fill_prefills(b, cost, target: float, tile: int) -> None:
    """Add prefill tokens to the batch ``b`` (a BatchBuilder holding its decodes) until its
    predicted stage time is nearest ``target``: partial prefills oldest first, then new requests,
    across prompt boundaries. A batch with no prefill yet takes at least one tile (or a whole
    short remainder), so prompts keep flowing even when the decodes alone reach the target."""
    sched = b.sched
    dec_ctx = [p.start + 1 for p in b.parts]
    f = cost.with_decodes(dec_ctx)
    prefills: list[tuple[int, int]] = []
    sampled = len(dec_ctx)
    partial = sched.schedulable_prefills()
    # The scheduler's parts past the request cap, to top up a prompt whose whole remainder the
    # batch took (the loop below only goes on after one): once the decodes fill the cap, that
    # short last chunk would otherwise end the batch far below T. Decodes never use them. Only
    # where the other micro-batches in flight, each past the cap as far, still leave a request
    # out, so that a free pipeline slot always finds work as it does without them.
    cfg = sched.cfg
    most = sched.per_batch_cap + sched.parts_past_cap
    spare = sched.parts_past_cap if (sched.max_inflight - 1) * most < cfg.max_batch_size else 0
    i = 0
    while True:
        if b.room <= 0:
            if not (spare and prefills):
                return
            b.extra_room, spare = b.extra_room + 1, spare - 1
        new = i >= len(partial)
        if new:
            if not sched.waiting:
                return
            seq = sched.waiting[0]
        else:
            seq, i = partial[i], i + 1
        # Whether a part may follow this one (room under the cap, or the spare part with a prompt
        # to top up with); where none can, an aligned chunk beats an unaligned whole remainder.
        admissible = len(sched.waiting) > new and len(sched.running) + new < cfg.max_batch_size
        more = b.room > 1 or bool(spare and (i < len(partial) or admissible))
        left, cached = seq.num_unscheduled, seq.num_scheduled
        base = b.num_tokens

        def time_of(n: int) -> float:
            return f(prefills + [(n, cached)], sampled + (n == left))

        n = nearest_fit(time_of, target, left, base, tile, not more, f(prefills, sampled))
        if n == 0:
            if prefills:
                return
            first = (-base) % tile or tile
            n = min(left, first)
        added = b.add_new(n) if new else b.add(seq, n)
        if added == 0:
            if new:
                return  # no room or no KV for a new request: nothing else will fit either
            continue
        prefills.append((added, cached))
        sampled += added == left
        if added < left:
            return
