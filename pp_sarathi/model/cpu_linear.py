"""Linear layers that run on the CPU through oneDNN with weights packed once.

On the CPU, ``F.linear`` in float32 goes to the BLAS torch was built with (MKL in the PyPI
wheels), and MKL picks its AVX2 code path on non-Intel CPUs even when they have AVX-512; oneDNN
dispatches on the instruction set itself. Packing the weight into oneDNN's blocked layout once
also saves the repacking a GEMM would otherwise do on every call. docs/benchmarks.md (issue 16)
has the measurements.

Only the CPU float32/bfloat16 path changes; every other device or dtype keeps ``F.linear``.
The packed copy follows the dense weight: it is rebuilt when the weight's storage or version
changes (a reload, an in-place edit), so the dense parameter stays the source of truth.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_PACKABLE = (torch.float32, torch.bfloat16)


def onednn_linear_available() -> bool:
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose CPU forward uses a oneDNN-packed copy of its weight.

    ``enabled`` (class-wide) turns the packed path off, e.g. for an A/B comparison.
    """

    enabled = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._packed: torch.Tensor | None = None
        self._packed_key: tuple | None = None

    def _key(self) -> tuple:
        w = self.weight
        # Inference tensors (weights loaded under inference_mode) carry no version counter;
        # their storage identity is all there is to follow.
        version = -1 if w.is_inference() else w._version
        return (w.data_ptr(), version, w.dtype)

    def packed_weight(self) -> torch.Tensor | None:
        """The packed weight (built now if missing or stale), or None where it does not apply."""
        w = self.weight
        if not (self.enabled and w.device.type == "cpu" and w.dtype in _PACKABLE
                and onednn_linear_available()):
            return None
        key = self._key()
        if self._packed is None or self._packed_key != key:
            with torch.no_grad():
                self._packed = torch.ops.mkldnn._reorder_linear_weight(w.detach())
            self._packed_key = key
        return self._packed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed_weight()
        if packed is None or x.dtype != self.weight.dtype:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
