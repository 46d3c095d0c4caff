"""A :class:`StageModel` with random weights built directly on the device (no checkpoint).

For benchmarks and the profiler at paper shapes (LLaMA-13B, 26 GB in bf16): the module is
created on the meta device, allocated once in the target dtype on the target device, and
filled in place, so the host never holds a copy and nothing is written to disk.
"""
from __future__ import annotations

import torch

from .arch import ModelArch
from .llama import StageModel


@torch.no_grad()
def random_stage_model(arch: ModelArch, start: int = 0, end: int | None = None, *,
                       dtype: torch.dtype = torch.bfloat16, device: torch.device | str = "cpu",
                       seed: int = 0, std: float = 0.02) -> StageModel:
    """Layers ``[start, end)`` with N(0, std) weights (norms one, biases zero), in place on ``device``."""
    end = arch.num_layers if end is None else end
    with torch.device("meta"):
        model = StageModel(arch, start, end)
    model = model.to(dtype).to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            p.fill_(1.0)
        elif name.endswith(".bias"):
            p.zero_()
        else:
            p.normal_(0.0, std, generator=gen)
    model.reset_rope()
    return model.eval()


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of all parameters of ``model`` as allocated."""
    return sum(p.numel() * p.element_size() for p in model.parameters())
