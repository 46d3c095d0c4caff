"""The decoder layer's row-wise work on the CPU in one pass each (``csrc/elementwise.c``):
RMSNorm, the residual add fused into the RMSNorm after it, SiLU(gate) * up, and rotary
embedding in place. Each function matches the torch expression named in its docstring to float32
rounding; :func:`applies` says where they run (CPU, float32, the kernels built here), and
model/llama.py keeps the torch expressions everywhere else. docs/benchmarks.md (issue 16) has
the measurements.
"""
from __future__ import annotations

import torch

from .cpu_kernels import library

ENABLED = True  # module-wide switch (``cpu_elementwise.ENABLED = False``), e.g. for an A/B run


def applies(x: torch.Tensor) -> bool:
    """Whether the kernels cover activations like ``x`` (and could be built on this machine)."""
    return ENABLED and x.device.type == "cpu" and x.dtype == torch.float32 and library() is not None


def _rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` if the kernels can read it as rows of floats; a ValueError (not a bad write) otherwise."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        raise ValueError(f"expected a float32 CPU tensor, got {x.dtype} on {x.device}")
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"expected rows of contiguous floats, got shape {tuple(x.shape)} strides {x.stride()}")
    return x


def _vector(w: torch.Tensor, dim: int) -> torch.Tensor:
    if w.shape != (dim,) or not w.is_contiguous() or w.dtype != torch.float32 or w.device.type != "cpu":
        raise ValueError(f"expected a contiguous float32 CPU weight of shape ({dim},), got {tuple(w.shape)} {w.dtype}")
    return w


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``F.rms_norm(x, weight.shape, weight, eps)`` for ``x [T, dim]`` (rows may be strided)."""
    x, weight = _rows(x), _vector(weight, x.shape[-1])
    out = x.new_empty(x.shape)
    library().rms_norm_rows(x.data_ptr(), x.stride(0), weight.data_ptr(), out.data_ptr(), x.shape[0], x.shape[1],
                            eps, torch.get_num_threads())
    return out


def add_rms_norm(h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``h += residual`` in place, then ``rms_norm(h)``; both ``[T, dim]`` contiguous."""
    h, residual, weight = _rows(h), _rows(residual), _vector(weight, h.shape[-1])
    if not (h.is_contiguous() and residual.is_contiguous() and h.shape == residual.shape):
        raise ValueError("h and residual must be contiguous and of one shape")
    out = h.new_empty(h.shape)
    library().add_rms_norm_rows(h.data_ptr(), residual.data_ptr(), weight.data_ptr(), out.data_ptr(), h.shape[0],
                                h.shape[1], eps, torch.get_num_threads())
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` with ``gate, up = gate_up.chunk(2, -1)``; ``gate_up [T, 2I]`` contiguous."""
    if not _rows(gate_up).is_contiguous() or gate_up.shape[1] % 2:
        raise ValueError("gate_up must be a contiguous [T, 2 * intermediate] tensor")
    inter = gate_up.shape[1] // 2
    out = gate_up.new_empty(gate_up.shape[0], inter)
    library().silu_mul_rows(gate_up.data_ptr(), out.data_ptr(), gate_up.shape[0], inter, torch.get_num_threads())
    return out


def rotary_(x: torch.Tensor, heads: int, head_dim: int, cos: torch.Tensor, sin: torch.Tensor) -> None:
    """In place on the first ``heads`` heads of each row of ``x [T, width]`` (rows may be
    strided): ``x * cos + rotate_half(x) * sin`` per head, with ``cos``/``sin [T, head_dim]``
    contiguous (both halves of a row the same angles)."""
    x = _rows(x)
    if heads * head_dim > x.shape[1] or head_dim % 2:
        raise ValueError(f"{heads} heads of {head_dim} do not fit rows of {x.shape[1]}")
    if not (cos.is_contiguous() and sin.is_contiguous() and cos.shape == (x.shape[0], head_dim) == sin.shape
            and cos.dtype == sin.dtype == torch.float32):
        raise ValueError("cos and sin must be contiguous float32 [T, head_dim]")
    library().rope_rows(x.data_ptr(), x.stride(0), cos.data_ptr(), sin.data_ptr(), x.shape[0], heads, head_dim,
                        torch.get_num_threads())
