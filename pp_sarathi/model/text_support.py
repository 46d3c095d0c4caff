"""Which tokenizer a checkpoint has (``tokenizer.json`` of an HF dir, or the vocabulary a GGUF
file embeds), and the errors that say what is missing when text needs one and there is none."""
from __future__ import annotations

from pathlib import Path

from .tokenizer import Tokenizer, TokenizerError, tokenizers_module


def load_tokenizer(path: str | Path) -> Tokenizer | None:
    """The tokenizer of a checkpoint dir or ``.gguf`` file; ``None`` when it has none."""
    path = Path(path)
    if path.suffix == ".gguf":
        from .gguf_tokenizer import tokenizer_from_gguf
        return tokenizer_from_gguf(path)
    file = path / "tokenizer.json"
    if not file.is_file():
        return None
    tokenizers = tokenizers_module()
    return Tokenizer(tokenizers.Tokenizer.from_file(str(file)), str(file))


def require_tokenizer(tokenizer: Tokenizer | None, model_path: str | Path, embedded: bool, why: str,
                      load_error: str | None = None) -> Tokenizer:
    """``tokenizer`` or a :class:`TokenizerError` naming what is missing for ``why``."""
    if tokenizer is not None:
        return tokenizer
    if load_error:
        where = load_error
    elif embedded:
        where = ("the embedded random-init model has no tokenizer; set model.path to a checkpoint "
                 "with tokenizer.json or a .gguf file, or use model=smollm2")
    elif Path(model_path).suffix == ".gguf":
        where = f"the GGUF file {str(model_path)!r} embeds no tokenizer"
    else:
        where = f"model.path {str(model_path)!r} has no tokenizer.json"
    raise TokenizerError(f"{why} need(s) a tokenizer: {where}")


class TextSupport:
    """The checkpoint's tokenizer if it has one, and why not otherwise (said only when text is
    actually used, so token-id workloads run without tokenizer files or packages)."""

    def __init__(self, model_path: str | Path, embedded: bool):
        self.model_path, self.embedded = Path(model_path), embedded
        self.load_error: str | None = None
        self.tokenizer: Tokenizer | None = None
        if not embedded:
            try:
                self.tokenizer = load_tokenizer(model_path)
            except TokenizerError as exc:
                self.load_error = str(exc)

    def require(self, why: str) -> Tokenizer:
        return require_tokenizer(self.tokenizer, self.model_path, self.embedded, why, self.load_error)

    def encode(self, text: str) -> list[int]:
        """Encode a prompt, or raise the reason no tokenizer is available."""
        return self.require("text prompts").encode(text)
