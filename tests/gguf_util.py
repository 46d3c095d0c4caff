"""Write small llama-architecture GGUF files from HF models, the way llama.cpp's converter
lays them out (Q/K rows permuted, ggml names), so the loader is tested against the format."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def llamacpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's Q/K permutation (rotate-half -> interleaved pairs)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(model, path: Path, qtype: str = "F32", architecture: str = "llama",
                     skip: tuple[str, ...] = (), extra_types: dict | None = None) -> Path:
    """``model``: an HF LlamaForCausalLM with default rope. ``qtype``: F32, F16 or Q8_0 for the
    2-D weights (norms stay F32). ``extra_types``: tensor name -> raw GGML type to claim."""
    import gguf

    cfg = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    w = gguf.GGUFWriter(str(path), architecture)
    a = architecture
    heads, kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
    w.add_uint32(f"{a}.block_count", cfg.num_hidden_layers)
    w.add_uint32(f"{a}.context_length", cfg.max_position_embeddings)
    w.add_uint32(f"{a}.embedding_length", cfg.hidden_size)
    w.add_uint32(f"{a}.feed_forward_length", cfg.intermediate_size)
    w.add_uint32(f"{a}.attention.head_count", heads)
    w.add_uint32(f"{a}.attention.head_count_kv", kv_heads)
    w.add_float32(f"{a}.rope.freq_base", float(cfg.rope_parameters["rope_theta"]))
    w.add_float32(f"{a}.attention.layer_norm_rms_epsilon", float(cfg.rms_norm_eps))
    w.add_uint32(f"{a}.vocab_size", cfg.vocab_size)
    w.add_uint32("tokenizer.ggml.eos_token_id", 2)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    for i in range(cfg.num_hidden_layers):
        hf, g = f"model.layers.{i}.", f"blk.{i}."
        names.update({hf + "self_attn.q_proj.weight": g + "attn_q.weight",
                      hf + "self_attn.k_proj.weight": g + "attn_k.weight",
                      hf + "self_attn.v_proj.weight": g + "attn_v.weight",
                      hf + "self_attn.o_proj.weight": g + "attn_output.weight",
                      hf + "mlp.gate_proj.weight": g + "ffn_gate.weight",
                      hf + "mlp.up_proj.weight": g + "ffn_up.weight",
                      hf + "mlp.down_proj.weight": g + "ffn_down.weight",
                      hf + "input_layernorm.weight": g + "attn_norm.weight",
                      hf + "post_attention_layernorm.weight": g + "ffn_norm.weight"})
    if cfg.tie_word_embeddings:
        names.pop("lm_head.weight")
    for hf_name, name in names.items():
        if name in skip:
            continue
        t = sd[hf_name]
        if name.endswith("attn_q.weight"):
            t = llamacpp_permute(t, heads)
        elif name.endswith("attn_k.weight"):
            t = llamacpp_permute(t, kv_heads)
        raw = (extra_types or {}).get(name)
        if raw is not None:  # claim a type; fill its bytes with zeros of the right size
            block, size = gguf.GGML_QUANT_SIZES[raw]
            w.add_tensor(name, np.zeros((t.shape[0], t.shape[1] // block * size), np.uint8), raw_dtype=raw)
        elif t.ndim == 1 or qtype == "F32":
            w.add_tensor(name, t.astype(np.float32))
        elif qtype == "F16":
            w.add_tensor(name, t.astype(np.float16))
        else:
            q = getattr(gguf.GGMLQuantizationType, qtype)
            w.add_tensor(name, gguf.quants.quantize(t, q), raw_dtype=q)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
