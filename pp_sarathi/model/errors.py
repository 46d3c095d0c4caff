"""Errors of checkpoint loading shared by the safetensors and GGUF loaders."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint lacks a tensor or holds one of the wrong shape."""
