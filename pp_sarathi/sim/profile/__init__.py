"""Measure the costs of the configured model on this device, the way a pipeline stage runs it -> CSV.

Everything runs the runtime's own code with random weights: the pipeline's stages are built
as real :class:`~pp_sarathi.model.llama.StageModel` s with the stage's real layer count (the
``parallel.pp`` / ``parallel.partition`` split) and a KV cache laid out as the block manager
lays it out, on ``cfg.device`` with the thread count a stage gets (``cores / parallel.pp``).
On a CPU host ``pp - 1`` co-running processes (``sim.profile_corunners=-1``; at most one per
further core) execute the very same measurement at the same time, as the other stages of a
pipeline on the same host do.

=================  ==========================  ==========================================
op                 swept over                  what runs (per call)
=================  ==========================  ==========================================
linear             tokens                      the 4 fused linear layers of every layer of
                                               the first stage, in execution order (seconds
                                               per layer: weights stream from memory as in
                                               a stage step)
attn_prefill       chunk, cached               ``DecoderLayer._attention`` of every layer of
                                               the stage over its own KV pool (per layer)
attn_decode        batch, context              the same for ``batch`` decodes
embed              tokens                      ``embed_tokens`` (cache flushed first)
lm_head            tokens (= sampled rows)     ``lm_head(norm(x)).float()`` (cache flushed)
sample             tokens (= sampled rows)     ``Sampler(cfg.sampling)``
overhead           batch (= parts), tokens     ``build_attention_metadata`` + rotary gather
stage              chunk x prefills, cached,   a whole ``StageExecutor.step`` of the first /
                   batch (decodes), context    middle / last stage (``stage``, ``layers``)
p2p                bytes                       gloo send/recv between two local processes
                                               (ping-pong / 2), as the transport sends
=================  ==========================  ==========================================

The ``stage`` rows are what a pipeline stage really costs; the cost model composes the ops
and fits the per-layer remainder (norms, rotary, KV writes, activation, residuals, Python)
to them (pp_sarathi/cost/measured.py). Every row also carries device, dtype, threads and the
model shape.

    points.py     the sweeps' grids, a measurement point, whole-stage micro-batch shapes
    bench.py      the stages (random weights, real layer counts) and their points; the timer
    corunners.py  the co-running stage processes
    run.py        run_profile: the rounds, the CSV, the held-out error
    link.py       the runtime's transport and driver loop between real stages (link_* rows)
    p2p.py        gloo point-to-point message times (p2p rows)
    workers.py    the helper-process protocol (``python -m pp_sarathi.sim.profile ...``)
"""
from .link import measure_link
from .p2p import measure_p2p
from .points import WHOLE_PROMPT_TOKENS
from .run import run_profile

__all__ = ["WHOLE_PROMPT_TOKENS", "measure_link", "measure_p2p", "run_profile"]
