"""The architecture of any supported checkpoint: an HF dir or a llama-architecture ``.gguf``."""
from __future__ import annotations

from pathlib import Path

from .arch import ModelArch


def is_gguf(path: str | Path) -> bool:
    return Path(path).suffix == ".gguf"


def checkpoint_arch(path: str | Path) -> ModelArch:
    """ModelArch from config.json (+ generation_config.json) or from the GGUF metadata."""
    if is_gguf(path):
        from .gguf_loader import gguf_checkpoint
        return gguf_checkpoint(path).arch()
    return ModelArch.from_pretrained(path)
