"""Model-shape arithmetic without torch: dtype sizes, parameters per layer, KV bytes per token.

The one home of these formulas: the partitioner, the cost model, the benchmarks' roofline and
the profiler all import them from here, so that a change to the layer (say, a bias) changes
every consumer at once.
"""
from __future__ import annotations

# ``arch`` below is a pp_sarathi.model.arch.ModelArch; not imported, since ModelArch.num_params
# calls into this module (one direction of import only).

# Bytes per element of the dtypes the runtime computes in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Other spellings accepted where a dtype is named in a file (profile CSVs, torch's str(dtype)).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def canonical_dtype(name: str) -> str:
    """``float32``, ``bfloat16`` or ``float16`` for any accepted spelling (``torch.`` prefix,
    ``bf16``, ``half`` ...); ValueError otherwise."""
    s = str(name).replace("torch.", "")
    s = DTYPE_ALIASES.get(s, s)
    if s not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(DTYPE_BYTES)}")
    return s


def dtype_bytes(dtype: str) -> int:
    """Bytes per element of ``dtype`` (any spelling :func:`canonical_dtype` accepts)."""
    return DTYPE_BYTES[canonical_dtype(dtype)]


def linear_params_per_layer(arch: ModelArch) -> int:
    """Weights of the four linear layers of one decoder layer: fused QKV, O, gate+up, down
    (biases left out: they are a rounding error in time and memory)."""
    h = arch.hidden_size
    return qkv_params_per_layer(arch) + arch.q_size * h + 3 * h * arch.intermediate_size


def qkv_params_per_layer(arch: ModelArch) -> int:
    """Weights of the fused QKV projection of one decoder layer."""
    return arch.hidden_size * (arch.q_size + 2 * arch.kv_size)


def params_per_layer(arch: ModelArch) -> int:
    """All weights of one decoder layer: the linear layers plus its two RMSNorm vectors."""
    return linear_params_per_layer(arch) + 2 * arch.hidden_size


def embedding_params(arch: ModelArch) -> int:
    """Weights of the token embedding (the LM head has as many unless tied)."""
    return arch.vocab_size * arch.hidden_size


def num_params(arch: ModelArch) -> int:
    """All weights of the model: layers, embedding, LM head (unless tied) and final norm."""
    heads = 1 if arch.tie_word_embeddings else 2
    return arch.num_layers * params_per_layer(arch) + embedding_params(arch) * heads + arch.hidden_size


def kv_elems_per_token(arch: ModelArch, layers: int = 1) -> int:
    """K and V elements one token keeps in the cache over ``layers`` layers."""
    return 2 * layers * arch.kv_size


def kv_bytes_per_token(arch: ModelArch, elem_bytes: int, layers: int = 1) -> int:
    """Bytes one token keeps in the KV cache over ``layers`` layers."""
    return kv_elems_per_token(arch, layers) * elem_bytes
