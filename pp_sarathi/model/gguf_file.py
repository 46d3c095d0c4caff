"""A llama-architecture GGUF file (llama.cpp's format) read through the ``gguf`` package.

Opening one checks everything a stage could trip over later — architecture, every tensor's
quantisation type, that every tensor's bytes are inside the file — so that a bad file fails
in the launcher, before any stage process starts. Tensors are dequantised one at a time, on
demand, from the memory-mapped file: a stage touches only the bytes of its own layers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .arch import ModelArch, UnsupportedModelError


class GGUFError(ValueError):
    """A GGUF file is unreadable, truncated, or holds something this runtime cannot load."""


_MISSING = object()


def gguf_module():
    try:
        import gguf
    except ImportError:
        raise GGUFError("GGUF checkpoints need the 'gguf' package: pip install gguf") from None
    return gguf


def supported_types() -> set:
    """Tensor types the installed ``gguf`` package can dequantise (plus the plain floats)."""
    gguf = gguf_module()
    q = gguf.GGMLQuantizationType
    return {q.F32, q.F16, q.BF16} | set(getattr(gguf.quants, "_type_traits", {}))


class GGUFCheckpoint:
    """Metadata, architecture, tokenizer fields and dequantised tensors of one ``.gguf`` file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model.path {str(path)!r} does not exist")
        gguf = gguf_module()
        try:
            self.reader = gguf.GGUFReader(self.path, "r")
        except Exception as exc:  # the reader raises bare ValueError/IndexError/KeyError on bad bytes
            raise GGUFError(f"{self.path}: not a readable GGUF file (truncated or corrupt?): "
                            f"{type(exc).__name__}: {exc}") from None
        size = self.path.stat().st_size
        allowed = supported_types()
        self.tensors = {}
        for t in self.reader.tensors:
            if t.tensor_type not in allowed:
                raise GGUFError(f"{self.path}: tensor {t.name} uses quantisation {t.tensor_type.name}, "
                                f"which the installed gguf package cannot dequantise; supported: "
                                f"{', '.join(sorted(x.name for x in allowed))}")
            if t.data_offset + t.n_bytes > size:
                raise GGUFError(f"{self.path}: truncated: tensor {t.name} ends at byte "
                                f"{t.data_offset + t.n_bytes} but the file has {size}")
            self.tensors[t.name] = t

    def field(self, key: str, default=_MISSING):
        """One metadata value (scalars as Python values, arrays as lists)."""
        f = self.reader.fields.get(key)
        if f is None:
            if default is _MISSING:
                raise GGUFError(f"{self.path}: metadata key {key!r} is missing")
            return default
        return f.contents()

    def arch(self) -> ModelArch:
        """The architecture, from the ``llama.*`` metadata keys."""
        name = self.field("general.architecture", None)
        if name != "llama":
            raise UnsupportedModelError(f"{self.path}: GGUF architecture {name!r} is not supported; "
                                        "only llama-architecture GGUF files (general.architecture = llama)")
        p = "llama."
        if self.field(p + "expert_count", 0):
            raise UnsupportedModelError(f"{self.path}: mixture-of-experts GGUF files are not supported")
        if "rope_freqs.weight" in self.tensors:
            raise UnsupportedModelError(f"{self.path}: per-dimension rope factors (rope_freqs.weight, "
                                        "Llama 3.1-style scaling) are not supported in GGUF files")
        hidden = int(self.field(p + "embedding_length"))
        heads = self._uniform(p + "attention.head_count")
        kv_heads = self._uniform(p + "attention.head_count_kv", heads)
        head_dim = int(self.field(p + "attention.key_length", hidden // heads))
        if int(self.field(p + "rope.dimension_count", head_dim)) != head_dim:
            raise UnsupportedModelError(f"{self.path}: partial rotary embeddings are not supported")
        scaling = None
        kind = self.field(p + "rope.scaling.type", "none")
        if kind == "linear":
            scaling = {"rope_type": "linear", "factor": float(self.field(p + "rope.scaling.factor"))}
        elif kind not in ("none", None):
            raise UnsupportedModelError(f"{self.path}: rope scaling {kind!r} is not supported (linear)")
        vocab = self.field(p + "vocab_size", None)
        if vocab is None:
            vocab = int(self.tensors["token_embd.weight"].shape[1])
        eos = [self.field(k, None) for k in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")]
        return ModelArch(
            family="llama", vocab_size=int(vocab), hidden_size=hidden,
            intermediate_size=self._uniform(p + "feed_forward_length"),
            num_layers=int(self.field(p + "block_count")), num_heads=heads, num_kv_heads=kv_heads,
            head_dim=head_dim, max_position_embeddings=int(self.field(p + "context_length", 2048)),
            rms_norm_eps=float(self.field(p + "attention.layer_norm_rms_epsilon", 1e-5)),
            rope_theta=float(self.field(p + "rope.freq_base", 10000.0)), rope_scaling=scaling,
            tie_word_embeddings="output.weight" not in self.tensors,
            eos_token_ids=tuple(dict.fromkeys(int(e) for e in eos if e is not None)),
        )

    def _uniform(self, key: str, default=_MISSING) -> int:
        v = self.field(key, default)
        if isinstance(v, list):  # some files store one value per layer
            if len(set(v)) != 1:
                raise UnsupportedModelError(f"{self.path}: {key} differs between layers; not supported")
            v = v[0]
        return int(v)

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name`` dequantised to float32, in PyTorch's ``[out, in]`` order."""
        t = self.tensors[name]
        gguf = gguf_module()
        data = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(x) for x in reversed(t.shape))  # ggml lists the fastest dim first
        # A copy: the memory map is read-only and torch wants writable arrays.
        return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))


def unpermute_qk(w: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Undo llama.cpp's conversion permutation of Q/K rows (interleaved rope pairs back to
    HF's rotate-half layout): per head, row ``2j + half`` returns to ``half * d/2 + j``."""
    rows = w.shape[0]
    return w.reshape(num_heads, rows // num_heads // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
