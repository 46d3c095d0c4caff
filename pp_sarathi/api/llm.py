"""``LLM``: the engine as a Python object whose stage processes live as long as it does."""
from __future__ import annotations

import dataclasses
import weakref

from ..metrics.summary import summarize
from ..model.source import resolve_checkpoint
from ..model.text_support import TextSupport
from ..runtime.partition import layer_counts, layer_ranges
from ..runtime.prepare import check_devices, check_host
from ..runtime.session import SessionSpec, StageFailure, StageSession
from ..workload.request import Request
from .config import build_config
from .params import GenerateResult, RequestOutput, SamplingParams

__all__ = ["LLM", "StageFailure"]


class LLM:
    """A pipeline of ``pp`` stage processes serving :meth:`generate` calls.

    ``model``: a preset name (``default``, ``tiny``, ``smollm2``, ...; None = ``default``), an
    HF-format checkpoint dir or a llama-architecture ``.gguf`` file. ``scheduler``: orca, vllm,
    ft, sarathi or sarathi_serve. ``overrides``: config keys as ``group.key`` (pass them with
    ``**{"scheduler.chunk_size": 64}``), ``group__key=...``, or the short names ``dtype``,
    ``max_model_len``, ``chunk_size``, ``max_batch_size``, ``backend``, ``timeout_s``, ...

    The stages start here (model loaded, KV cache allocated, once) and stop on :meth:`close`,
    on leaving a ``with`` block, when the object is collected, or at interpreter exit. A stage
    that dies raises :class:`~pp_sarathi.runtime.session.StageFailure` in the caller and closes
    the object. Bad input (an unknown option, a text prompt the model has no tokenizer for)
    raises before any stage is touched.
    """

    def __init__(self, model=None, pp: int = 2, scheduler: str = "sarathi", **overrides):
        cfg = build_config(model, pp, scheduler, overrides)
        cfg.check()  # the config's own rules and choices (config.py), as the CLI applies them
        check_devices(cfg)
        check_host(cfg)
        src = resolve_checkpoint(cfg.model)
        self.cfg, self.arch = cfg, src.arch
        self._text = TextSupport(src.path, src.embedded)
        ranges = layer_ranges(layer_counts(src.arch, cfg.parallel.pp, cfg.parallel.partition))
        self._session = StageSession(SessionSpec(cfg, src.path, src.arch, ranges, self._text.tokenizer))
        # Stops the stages when the object is collected or at interpreter exit, whichever first.
        self._finalizer = weakref.finalize(self, self._session.close)

    @property
    def tokenizer(self):
        """The checkpoint's tokenizer (``encode``/``decode``), or None."""
        return self._text.tokenizer

    @property
    def stage_pids(self) -> list[int]:
        """Process ids of the stage processes (rank order)."""
        return list(self._session.pids)

    @property
    def closed(self) -> bool:
        return self._session.closed

    def generate(self, prompts, sampling_params: SamplingParams | None = None) -> GenerateResult:
        """Generate for ``prompts`` (a string, a list of token ids, or a list of either).

        Returns one :class:`RequestOutput` per prompt, in order, with ``.metrics`` holding this
        call's results (throughput, latency, per-stage and per-request bubbles).
        """
        sp = sampling_params or SamplingParams()
        if isinstance(prompts, str) or (isinstance(prompts, list) and prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("generate() needs at least one prompt")
        sampling = sp.to_config()  # SamplingConfig's rules check temperature, top_p, stop, ...
        if sampling.stop:
            self._text.require("SamplingParams.stop")
        requests = [Request(id=str(i), prompt_token_ids=self._prompt_ids(p, i), max_tokens=sp.max_tokens,
                            index=i) for i, p in enumerate(prompts)]
        outcome = self._session.run(requests, sampling)
        config = dataclasses.asdict(dataclasses.replace(self.cfg, sampling=sampling))
        outputs = [RequestOutput(index=i, prompt=p, prompt_token_ids=list(s.request.prompt_token_ids),
                                 token_ids=list(s.output_token_ids), text=s.text,
                                 finish_reason=s.finish_reason or "error: unfinished",
                                 logprobs=list(s.logprobs) if sampling.logprobs else None)
                   for i, (p, s) in enumerate(zip(prompts, outcome.sequences))]
        return GenerateResult(outputs, summarize(outcome, config))

    def _prompt_ids(self, prompt, i: int) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError(f"prompt {i} is empty")
            ids = self._text.encode(prompt)
        elif isinstance(prompt, (list, tuple)) and prompt and all(isinstance(t, int) and t >= 0 for t in prompt):
            ids = list(prompt)
        else:
            raise TypeError(f"prompt {i} must be a string or a non-empty list of token ids, got {prompt!r:.60}")
        if not ids:
            raise ValueError(f"prompt {i} encodes to no tokens")
        return ids

    def close(self) -> None:
        """Stop the stage processes (idempotent)."""
        self._finalizer()

    def __enter__(self) -> "LLM":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"stages {self.stage_pids}"
        return f"LLM(model={self.cfg.model.name!r}, pp={self.cfg.parallel.pp}, scheduler={self.cfg.scheduler.name!r}, {state})"
