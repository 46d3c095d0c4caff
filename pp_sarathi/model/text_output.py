"""Generated text on rank 0: decoding a request's output ids and watching for stop strings."""
from __future__ import annotations

from .tokenizer import Tokenizer


class TextOutput:
    """What the scheduler asks about text: did a stop string appear, and the final text.

    The whole output is decoded at each check (not token by token) because a stop string can
    span tokens and byte-level BPE tokens need not end on a character boundary; outputs of a
    few hundred tokens keep this cheap next to a model step.
    """

    def __init__(self, tokenizer: Tokenizer, stop: list[str] | tuple[str, ...] = ()):
        # The strings themselves are checked where the config is built (config.SamplingConfig).
        self.tokenizer = tokenizer
        self.stop = tuple(stop)

    def stop_hit(self, output_ids: list[int]) -> bool:
        """True once the decoded output contains one of the stop strings."""
        if not self.stop:
            return False
        text = self.tokenizer.decode(output_ids)
        return any(s in text for s in self.stop)

    def final_text(self, output_ids: list[int], finish_reason: str | None) -> str:
        """Decoded output; a request ended by a stop string keeps the text before it."""
        text = self.tokenizer.decode(output_ids)
        if finish_reason == "stop" and self.stop:
            cuts = [text.find(s) for s in self.stop if s in text]
            if cuts:
                text = text[:min(cuts)]
        return text
