"""One stage's weights from a llama-architecture GGUF file, dequantised and renamed to ours.

GGUF names (llama.cpp): ``token_embd``, ``blk.N.attn_{q,k,v,output}``, ``blk.N.ffn_{gate,up,down}``,
``blk.N.{attn,ffn}_norm``, ``output_norm``, ``output`` (absent when tied to the embedding).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from .arch import ModelArch
from .errors import CheckpointError
from .gguf_file import GGUFCheckpoint, unpermute_qk


@functools.lru_cache(maxsize=4)
def open_gguf(path: str, mtime_ns: int) -> GGUFCheckpoint:
    """Parsing the metadata of a large vocabulary takes seconds: once per process and file."""
    return GGUFCheckpoint(path)


def gguf_checkpoint(path: str | Path) -> GGUFCheckpoint:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"model.path {str(path)!r} does not exist")
    return open_gguf(str(p.resolve()), p.stat().st_mtime_ns)


def _gguf_names(arch: ModelArch, start: int, end: int) -> dict[str, list[str]]:
    """Our parameter name -> the GGUF tensors it is made of (concatenated along dim 0)."""
    names: dict[str, list[str]] = {}
    if start == 0:
        names["embed_tokens.weight"] = ["token_embd.weight"]
    for local, layer in enumerate(range(start, end)):
        g, ours = f"blk.{layer}.", f"layers.{local}."
        names[ours + "qkv_proj.weight"] = [g + "attn_q.weight", g + "attn_k.weight", g + "attn_v.weight"]
        names[ours + "o_proj.weight"] = [g + "attn_output.weight"]
        names[ours + "gate_up_proj.weight"] = [g + "ffn_gate.weight", g + "ffn_up.weight"]
        names[ours + "down_proj.weight"] = [g + "ffn_down.weight"]
        names[ours + "input_layernorm.weight"] = [g + "attn_norm.weight"]
        names[ours + "post_attention_layernorm.weight"] = [g + "ffn_norm.weight"]
    if end == arch.num_layers:
        names["norm.weight"] = ["output_norm.weight"]
        names["lm_head.weight"] = ["token_embd.weight" if arch.tie_word_embeddings else "output.weight"]
    return names


def check_gguf_tensors(path: str | Path, arch: ModelArch) -> None:
    """Every tensor the whole model needs is in the file: checked once, before stages start."""
    ckpt = gguf_checkpoint(path)
    missing = [n for parts in _gguf_names(arch, 0, arch.num_layers).values() for n in parts
               if n not in ckpt.tensors]
    if missing:
        raise CheckpointError(f"GGUF file {str(path)!r} is missing tensor(s): {', '.join(missing[:8])}")


def gguf_stage_state(path: Path, arch: ModelArch, start: int, end: int,
                     report=None) -> dict[str, tuple[torch.Tensor, str]]:
    """Our parameter name -> (float32 tensor, what it was made of) for layers ``[start, end)``."""
    ckpt = gguf_checkpoint(path)
    wanted = _gguf_names(arch, start, end)
    missing = [n for parts in wanted.values() for n in parts if n not in ckpt.tensors]
    if missing:
        raise CheckpointError(f"GGUF file {str(path)!r} is missing tensor(s): {', '.join(missing)}")
    used = {n for parts in wanted.values() for n in parts}
    ours = tuple(f"blk.{i}." for i in range(start, end))
    unused = sorted(n for n in ckpt.tensors if n.startswith(ours) and n not in used)
    if unused:  # biases or extra norms: another model than the one we would compute
        raise CheckpointError(f"GGUF file {str(path)!r} has tensor(s) this architecture does not use: "
                              f"{', '.join(unused[:5])}")
    raw: dict[str, torch.Tensor] = {}
    for n in dict.fromkeys(n for parts in wanted.values() for n in parts):
        t = ckpt.tensor(n)
        if n.endswith("attn_q.weight"):
            t = unpermute_qk(t, arch.num_heads)
        elif n.endswith("attn_k.weight"):
            t = unpermute_qk(t, arch.num_kv_heads)
        raw[n] = t
        if report is not None:
            report.keys_read.append(n)
    state = {}
    for name, parts in wanted.items():
        tensor = torch.cat([raw[p] for p in parts], dim=0) if len(parts) > 1 else raw[parts[0]]
        state[name] = (tensor, ", ".join(f"{p} {tuple(raw[p].shape)}" for p in parts))
    return state
