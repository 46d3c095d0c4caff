"""Architecture description read from an HF ``config.json`` (transformers 4.x and 5.x keys)."""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ModelConfig
from . import shapes

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
}


class UnsupportedModelError(ValueError):
    """The checkpoint's architecture or settings are not ones this runtime implements."""


@dataclass(frozen=True)
class ModelArch:
    """Shapes and numerics of a LLaMA-family decoder, independent of where weights live."""

    family: str  # llama, mistral or qwen2
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict | None = None  # HF rope parameters when not plain default rope
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False  # llama attention_bias: o_proj has a bias too
    mlp_bias: bool = False  # llama mlp_bias: gate, up and down projections have biases
    sliding_window: int | None = None
    eos_token_ids: tuple[int, ...] = field(default_factory=tuple)
    dtype: str = "float32"  # dtype the checkpoint was saved in

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def num_params(self) -> int:
        """All weights (see :func:`pp_sarathi.model.shapes.num_params`)."""
        return shapes.num_params(self)

    @classmethod
    def from_shape(cls, *, vocab_size: int, hidden_size: int, intermediate_size: int, num_layers: int,
                   num_heads: int, num_kv_heads: int | None = None, head_dim: int | None = None,
                   max_position_embeddings: int = 4096, rope_theta: float = 10000.0,
                   tie_word_embeddings: bool = False, eos_token_ids: tuple[int, ...] = (2,),
                   dtype: str = "float32") -> "ModelArch":
        """A plain LLaMA architecture from its shape, as the random-init checkpoints'
        ``config.json`` describes it (RMSNorm eps 1e-5, default rope, EOS token 2)."""
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size={hidden_size} is not a multiple of num_heads={num_heads}")
            head_dim = hidden_size // num_heads
        return cls(family="llama", vocab_size=vocab_size, hidden_size=hidden_size,
                   intermediate_size=intermediate_size, num_layers=num_layers, num_heads=num_heads,
                   num_kv_heads=num_kv_heads or num_heads, head_dim=head_dim,
                   max_position_embeddings=max_position_embeddings, rms_norm_eps=1e-5,
                   rope_theta=float(rope_theta), tie_word_embeddings=tie_word_embeddings,
                   eos_token_ids=tuple(eos_token_ids), dtype=dtype)

    @classmethod
    def from_config(cls, m: "ModelConfig") -> "ModelArch":
        """The model's shape without weights: ``m.path``'s config.json when set, else the
        preset fields of ``m`` (nothing is written or loaded)."""
        if m.path:
            return cls.from_pretrained(Path(m.path).expanduser())
        if m.hidden_size % m.num_heads:
            raise ValueError(f"model.hidden_size={m.hidden_size} is not a multiple of num_heads={m.num_heads}")
        return cls.from_shape(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                              intermediate_size=m.intermediate_size, num_layers=m.num_layers,
                              num_heads=m.num_heads, num_kv_heads=m.num_kv_heads,
                              max_position_embeddings=m.max_position_embeddings, rope_theta=m.rope_theta,
                              tie_word_embeddings=m.tie_word_embeddings, dtype=m.dtype)

    @classmethod
    def from_hf_dict(cls, cfg: dict) -> "ModelArch":
        archs = cfg.get("architectures") or []
        family = None
        for name in archs:
            family = SUPPORTED_ARCHITECTURES.get(name)
            if family:
                break
        if family is None:
            family = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2"}.get(cfg.get("model_type", ""))
        if family is None:
            raise UnsupportedModelError(
                f"unsupported architecture {archs or cfg.get('model_type')!r}; "
                f"supported: {sorted(SUPPORTED_ARCHITECTURES)}")
        act = cfg.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise UnsupportedModelError(f"unsupported hidden_act {act!r} (only silu)")
        heads = cfg["num_attention_heads"]
        hidden = cfg["hidden_size"]
        head_dim = cfg.get("head_dim") or hidden // heads
        # transformers 5.x folds rope_theta and rope_scaling into rope_parameters.
        rope = cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta", rope.get("rope_theta", 10000.0))
        scaling = cfg.get("rope_scaling") or (rope if rope.get("rope_type", "default") != "default" else None)
        if scaling is not None:
            kind = scaling.get("rope_type", scaling.get("type", "default"))
            if kind == "default":
                scaling = None
            elif kind not in ("llama3", "linear"):
                raise UnsupportedModelError(f"unsupported rope scaling {kind!r} (llama3, linear)")
        window = cfg.get("sliding_window")
        if family == "qwen2" and not cfg.get("use_sliding_window", False):
            window = None
        eos = cfg.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (eos,))
        return cls(
            family=family,
            vocab_size=cfg["vocab_size"],
            hidden_size=hidden,
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            max_position_embeddings=cfg.get("max_position_embeddings", 2048),
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-6),
            rope_theta=float(theta),
            rope_scaling=dict(scaling) if scaling else None,
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            # HF: Qwen2 has q/k/v biases only; Llama's attention_bias adds q/k/v *and* o biases,
            # mlp_bias gate/up/down biases; Mistral has no biases whatever the config says.
            qkv_bias=family == "qwen2" or (family == "llama" and bool(cfg.get("attention_bias", False))),
            o_bias=family == "llama" and bool(cfg.get("attention_bias", False)),
            mlp_bias=family == "llama" and bool(cfg.get("mlp_bias", False)),
            sliding_window=window,
            eos_token_ids=eos_ids,
            dtype=str(cfg.get("dtype") or cfg.get("torch_dtype") or "float32"),
        )

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "ModelArch":
        """From an HF checkpoint dir (config.json, generation_config.json); for any checkpoint
        (a ``.gguf`` file too) use :func:`pp_sarathi.model.checkpoint.checkpoint_arch`."""
        path = Path(path)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"model path {str(path)!r} has no config.json")
        arch = cls.from_hf_dict(json.loads(cfg_file.read_text()))
        # Chat models often list their end-of-turn token only in generation_config.json.
        gen_file = path / "generation_config.json"
        if gen_file.is_file():
            eos = json.loads(gen_file.read_text()).get("eos_token_id")
            more = eos if isinstance(eos, list) else ([] if eos is None else [eos])
            ids = tuple(dict.fromkeys([*arch.eos_token_ids, *(int(e) for e in more)]))
            arch = dataclasses.replace(arch, eos_token_ids=ids)
        return arch


def rope_tables(arch: ModelArch):
    """float32 ``(cos, sin)`` tables ``[max_position_embeddings, head_dim]`` on the CPU."""
    import torch

    inv = rope_inv_freq(arch)
    pos = torch.arange(arch.max_position_embeddings, dtype=torch.float32, device="cpu")
    freqs = pos[:, None] * inv[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rope_inv_freq(arch: ModelArch):
    """Inverse rotary frequencies, including llama3 / linear scaling, as HF computes them."""
    import torch

    dim = arch.head_dim
    exps = torch.arange(0, dim, 2, dtype=torch.int64, device="cpu").float() / dim
    inv = 1.0 / (arch.rope_theta ** exps)
    sc = arch.rope_scaling
    if not sc:
        return inv
    kind = sc.get("rope_type", sc.get("type"))
    factor = float(sc["factor"])
    if kind == "linear":
        return inv / factor
    low = float(sc.get("low_freq_factor", 1.0))
    high = float(sc.get("high_freq_factor", 4.0))
    old_ctx = float(sc.get("original_max_position_embeddings", 8192))
    low_wavelen = old_ctx / low
    high_wavelen = old_ctx / high
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old_ctx / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)
