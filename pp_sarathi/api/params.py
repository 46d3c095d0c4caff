"""What a caller passes to and gets back from :meth:`pp_sarathi.LLM.generate`."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import SamplingConfig


@dataclass
class SamplingParams:
    """Per-call generation settings (vLLM-style names)."""

    max_tokens: int = 16  # output tokens per prompt (fewer when EOS or a stop string ends it)
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int = 0  # per-request random generators derive from (seed, prompt index, token index)
    ignore_eos: bool = False  # generate max_tokens whatever EOS says
    logprobs: int = 0  # top-k logprobs per generated token (0 = off)
    stop: list[str] = field(default_factory=list)  # strings that end a request (needs a tokenizer)

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        self.stop = list(self.stop or [])
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be a positive integer, got {self.max_tokens!r}")

    def to_config(self) -> SamplingConfig:
        return SamplingConfig(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k, seed=self.seed,
                              ignore_eos=self.ignore_eos, logprobs=self.logprobs, stop=list(self.stop))


@dataclass
class RequestOutput:
    """One prompt's result, in the order the prompts were given."""

    index: int
    prompt: str | list[int]  # as given
    prompt_token_ids: list[int]
    token_ids: list[int]  # generated ids (an EOS that ended it is the last one)
    text: str | None  # decoded output (None when the model has no tokenizer)
    finish_reason: str  # length, stop or "error: <why>"
    logprobs: list[dict[int, float]] | None = None  # with SamplingParams(logprobs=k)


class GenerateResult(list):
    """The :class:`RequestOutput` list of one ``generate`` call, plus ``metrics``: that call's
    results.json content (``throughput``, ``latency``, ``stages`` with per-stage bubbles,
    ``bubble``, ``batches``, ``config``)."""

    def __init__(self, outputs: list[RequestOutput], metrics: dict):
        super().__init__(outputs)
        self.metrics = metrics
