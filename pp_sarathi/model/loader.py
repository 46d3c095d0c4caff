"""Load one stage's weights from an HF-format safetensors checkpoint (single file or sharded).

Only the tensors of the stage's own layer range are read; the names read are kept in
``LoadReport.keys_read`` so that tests (and curious users) can check it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .arch import ModelArch
from .checkpoint import checkpoint_arch, is_gguf
from .errors import CheckpointError
from .llama import StageModel
from .shapes import DTYPE_BYTES

# The torch dtype of each dtype name the runtime computes in.
DTYPES = {name: getattr(torch, name) for name in DTYPE_BYTES}


@dataclass
class LoadReport:
    keys_read: list[str] = field(default_factory=list)


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unsupported dtype {name!r}; choose one of {sorted(DTYPES)}") from None


def _weight_map(path: Path) -> dict[str, str]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        return json.loads(index.read_text())["weight_map"]
    single = path / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"no model.safetensors or model.safetensors.index.json in {str(path)!r}")
    with safe_open(single, framework="pt") as f:
        return {k: single.name for k in f.keys()}


def _hf_names(arch: ModelArch, start: int, end: int) -> dict[str, list[str]]:
    """Our parameter name -> the HF tensors it is made of (concatenated along dim 0)."""
    names: dict[str, list[str]] = {}
    if start == 0:
        names["embed_tokens.weight"] = ["model.embed_tokens.weight"]
    for local, layer in enumerate(range(start, end)):
        hf = f"model.layers.{layer}."
        ours = f"layers.{local}."
        attn = [hf + f"self_attn.{p}_proj.weight" for p in "qkv"]
        names[ours + "qkv_proj.weight"] = attn
        if arch.qkv_bias:
            names[ours + "qkv_proj.bias"] = [hf + f"self_attn.{p}_proj.bias" for p in "qkv"]
        names[ours + "o_proj.weight"] = [hf + "self_attn.o_proj.weight"]
        if arch.o_bias:
            names[ours + "o_proj.bias"] = [hf + "self_attn.o_proj.bias"]
        names[ours + "gate_up_proj.weight"] = [hf + "mlp.gate_proj.weight", hf + "mlp.up_proj.weight"]
        names[ours + "down_proj.weight"] = [hf + "mlp.down_proj.weight"]
        if arch.mlp_bias:
            names[ours + "gate_up_proj.bias"] = [hf + "mlp.gate_proj.bias", hf + "mlp.up_proj.bias"]
            names[ours + "down_proj.bias"] = [hf + "mlp.down_proj.bias"]
        names[ours + "input_layernorm.weight"] = [hf + "input_layernorm.weight"]
        names[ours + "post_attention_layernorm.weight"] = [hf + "post_attention_layernorm.weight"]
    if end == arch.num_layers:
        names["norm.weight"] = ["model.norm.weight"]
        names["lm_head.weight"] = ["model.embed_tokens.weight" if arch.tie_word_embeddings else "lm_head.weight"]
    return names


def load_stage(path: str | Path, start: int, end: int, dtype: str = "float32",
               device: str | torch.device = "cpu", arch: ModelArch | None = None,
               report: LoadReport | None = None) -> StageModel:
    """Build the :class:`StageModel` for layers ``[start, end)`` and fill it from ``path``
    (an HF checkpoint dir or a ``.gguf`` file)."""
    path = Path(path)
    arch = arch or checkpoint_arch(path)
    torch_dtype = parse_dtype(dtype)
    with torch.device("meta"):
        model = StageModel(arch, start, end)
    if is_gguf(path):
        from .gguf_loader import gguf_stage_state
        state = gguf_stage_state(path, arch, start, end, report)
        where = "the GGUF metadata"
    else:
        state = _hf_stage_state(path, arch, start, end, report)
        where = "config.json"
    params = dict(model.named_parameters())
    for ours, (tensor, detail) in state.items():
        expected = tuple(params[ours].shape)
        if tuple(tensor.shape) != expected:
            raise CheckpointError(f"shape mismatch for {detail}: expected {expected} in total "
                                  f"for {ours} from {where}")
    model = model.to(torch_dtype).to_empty(device=device)
    model.load_state_dict({k: t.to(torch_dtype) for k, (t, _) in state.items()}, strict=False)
    model.reset_rope()
    return model.eval()


def _hf_stage_state(path: Path, arch: ModelArch, start: int, end: int,
                    report: LoadReport | None) -> dict[str, tuple[torch.Tensor, str]]:
    """Our parameter name -> (tensor, what it was made of) for one stage of a safetensors checkpoint."""
    weight_map = _weight_map(path)
    wanted = _hf_names(arch, start, end)
    missing = [n for parts in wanted.values() for n in parts if n not in weight_map]
    if arch.tie_word_embeddings and "lm_head.weight" in weight_map and end == arch.num_layers:
        missing = [n for n in missing if n != "model.embed_tokens.weight"]
        wanted["lm_head.weight"] = ["lm_head.weight"]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} is missing tensor(s): {', '.join(missing)}")
    # A tensor of our layers that we would not read means the config describes another model
    # (an unsupported bias, say): refuse rather than silently compute something else.
    used = {n for parts in wanted.values() for n in parts}
    ours = tuple(f"model.layers.{i}." for i in range(start, end))
    unused = sorted(n for n in weight_map if n.startswith(ours) and n not in used
                    and not n.endswith("rotary_emb.inv_freq"))
    if unused:
        raise CheckpointError(f"checkpoint {str(path)!r} has tensor(s) this architecture does not use: "
                              f"{', '.join(unused[:5])}{' ...' if len(unused) > 5 else ''}")
    by_file: dict[str, list[str]] = {}
    for parts in wanted.values():
        for n in parts:
            by_file.setdefault(weight_map[n], []).append(n)
    raw: dict[str, torch.Tensor] = {}
    for fname, keys in by_file.items():
        with safe_open(path / fname, framework="pt", device="cpu") as f:
            for k in keys:
                raw[k] = f.get_tensor(k)
                if report is not None:
                    report.keys_read.append(k)
    state = {}
    for ours, parts in wanted.items():
        tensor = torch.cat([raw[p] for p in parts], dim=0) if len(parts) > 1 else raw[parts[0]]
        state[ours] = (tensor, ", ".join(f"{p} {tuple(raw[p].shape)}" for p in parts))
    return state
