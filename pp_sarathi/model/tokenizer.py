"""Text <-> token ids: the engine's thin wrapper over a ``tokenizers`` tokenizer. Where one
comes from (tokenizer.json, a GGUF vocabulary) is :mod:`.text_support`'s business.

The ``tokenizers`` package is imported lazily: token-id workloads run without it.
"""
from __future__ import annotations


class TokenizerError(ValueError):
    """No tokenizer is available where text needs one, or it cannot be built."""


class Tokenizer:
    """A thin wrapper over ``tokenizers.Tokenizer`` with the two calls the engine makes.

    Picklable (``tokenizers`` objects pickle as their JSON), so it travels to the stage
    processes with the rest of the prepared run.
    """

    def __init__(self, backend, source: str):
        self.backend = backend
        self.source = source  # where it came from, for messages

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` with the checkpoint's own special tokens (BOS if it adds one)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a string, not {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=True).ids

    def decode(self, ids: list[int]) -> str:
        """Text of ``ids``; special tokens (EOS, chat markers) are left out."""
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.source!r})"


def tokenizers_module():
    try:
        import tokenizers
    except ImportError:
        raise TokenizerError("text needs the 'tokenizers' package: pip install tokenizers") from None
    return tokenizers
