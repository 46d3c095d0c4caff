"""Embedded random-init checkpoints: written once, in HF format, to a cache dir and then
loaded by the same loader as any user checkpoint (no download exists or is needed)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..config import ModelConfig


# ModelConfig fields that shape the generated checkpoint (name, path and dtype do not).
SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                "max_position_embeddings", "rope_theta", "tie_word_embeddings", "seed")


def hf_config(shape: ModelConfig) -> dict:
    """config.json of the generated checkpoint."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_layers,
        "num_attention_heads": shape.num_heads,
        "num_key_value_heads": shape.num_kv_heads,
        "max_position_embeddings": shape.max_position_embeddings,
        "rope_theta": shape.rope_theta,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": shape.tie_word_embeddings,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }


def cache_root() -> Path:
    return Path(os.environ.get("PP_SARATHI_CACHE", Path.home() / ".cache" / "pp_sarathi"))


def random_state_dict(shape: ModelConfig) -> dict[str, torch.Tensor]:
    """HF-named float32 tensors drawn from N(0, 0.02) with a fixed seed; norms are ones."""
    gen = torch.Generator().manual_seed(shape.seed)
    h, inter = shape.hidden_size, shape.intermediate_size
    hd = h // shape.num_heads
    kv = shape.num_kv_heads * hd

    def normal(*size):
        return torch.randn(*size, generator=gen) * 0.02

    sd = {"model.embed_tokens.weight": normal(shape.vocab_size, h)}
    for i in range(shape.num_layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = normal(h, h)
        sd[p + "self_attn.k_proj.weight"] = normal(kv, h)
        sd[p + "self_attn.v_proj.weight"] = normal(kv, h)
        sd[p + "self_attn.o_proj.weight"] = normal(h, h)
        sd[p + "mlp.gate_proj.weight"] = normal(inter, h)
        sd[p + "mlp.up_proj.weight"] = normal(inter, h)
        sd[p + "mlp.down_proj.weight"] = normal(h, inter)
        sd[p + "input_layernorm.weight"] = torch.ones(h)
        sd[p + "post_attention_layernorm.weight"] = torch.ones(h)
    sd["model.norm.weight"] = torch.ones(h)
    if not shape.tie_word_embeddings:
        sd["lm_head.weight"] = normal(shape.vocab_size, h)
    return sd


def materialize(shape: ModelConfig, root: Path | None = None) -> Path:
    """Return the checkpoint dir for ``shape``, writing it first if it is not cached yet."""
    key = hashlib.sha256(json.dumps({f: getattr(shape, f) for f in SHAPE_FIELDS}, sort_keys=True).encode()).hexdigest()[:12]
    target = (root or cache_root()) / "models" / f"llama-{shape.num_layers}l-{shape.hidden_size}h-{key}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    try:
        (tmp / "config.json").write_text(json.dumps(hf_config(shape), indent=2))
        save_file(random_state_dict(shape), str(tmp / "model.safetensors"))
        try:
            os.rename(tmp, target)  # atomic: concurrent writers race harmlessly
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
