"""Decode attention on the CPU that reads the paged KV cache in place.

The torch path (model/llama.py) gathers every decode's K/V blocks into a contiguous copy and
then runs SDPA over it: twice the memory traffic of the attention itself, and SDPA's CPU kernel
treats each of the grouped query heads separately. ``csrc/paged_decode.c`` reads each K and V
row once where it lies, for all the query heads that share it; the softmax in between stays in
torch. docs/benchmarks.md (issue 16) has the measurements.

The C file is compiled on first use with the system C compiler, tuned to this CPU, and cached
under ``$PP_SARATHI_CACHE/kernels`` (``~/.cache/pp_sarathi`` by default) keyed by its source,
flags and CPU. Without a compiler, or for anything the kernel does not cover (another device or
dtype, a sliding window, a head size not a multiple of 16), callers keep the torch path.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .preset import cache_root

log = logging.getLogger("pp_sarathi")

SOURCE = Path(__file__).with_name("csrc") / "paged_decode.c"
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]
LANES = 16  # the kernel's dot product works in 16-float strips
_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


ENABLED = True  # module-wide switch (``cpu_attention.ENABLED = False``), e.g. for an A/B run


def _cpu_key() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return platform.machine() + flags


def _build(compiler: str) -> Path:
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([compiler, *CFLAGS]).encode() + _cpu_key().encode())
    target = cache_root() / "kernels" / f"paged_decode-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Stage processes may build at the same moment: each writes its own file, the rename is atomic.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run([compiler, *CFLAGS, "-o", tmp, str(SOURCE)], check=True, capture_output=True,
                       text=True, timeout=120)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.lru_cache(maxsize=1)
def _library():
    """The compiled kernels, or None (logged once) where they cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: decode attention uses the gather + SDPA path")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("could not build the CPU decode-attention kernel (%s): using gather + SDPA", detail)
        return None
    lib.paged_decode_scores.argtypes = [_PTR] * 5 + [_I64] * 7 + [ctypes.c_float, ctypes.c_int]
    lib.paged_decode_values.argtypes = [_PTR] * 5 + [_I64] * 7 + [ctypes.c_int]
    lib.paged_decode_scores.restype = lib.paged_decode_values.restype = None
    return lib


def applies(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether the kernel covers this call (and could be built on this machine)."""
    return (ENABLED and q.device.type == "cpu" and q.dtype == torch.float32
            and k_pool.dtype == torch.float32 and q.shape[-1] % LANES == 0 and k_pool.is_contiguous()
            and _library() is not None)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_tables: torch.Tensor, lens: torch.Tensor, block_size: int) -> torch.Tensor:
    """Attention of ``D`` single-token queries ``q [D, H, d]`` over their cached keys.

    ``k_pool``/``v_pool`` ``[slots, Hkv, d]``; ``block_tables [D, W]`` (int64, padded rows
    allowed); ``lens [D]`` (int64) keys per query. Call only where :func:`applies` holds.
    Returns ``[D, H, d]``.
    """
    lib = _library()
    q = q.contiguous()
    D, H, d = q.shape
    Hkv = k_pool.shape[1]
    W = block_tables.shape[1]
    width = W * block_size
    tables, lens = block_tables.contiguous(), lens.contiguous()
    threads = torch.get_num_threads()
    scores = torch.empty(D, H, width)
    out = torch.empty(D, H, d)
    lib.paged_decode_scores(q.data_ptr(), k_pool.data_ptr(), tables.data_ptr(), lens.data_ptr(),
                            scores.data_ptr(), W, H, Hkv, d, D, block_size, width, d ** -0.5, threads)
    probs = torch.softmax(scores, dim=-1)
    lib.paged_decode_values(probs.data_ptr(), v_pool.data_ptr(), tables.data_ptr(), lens.data_ptr(),
                            out.data_ptr(), W, H, Hkv, d, D, block_size, width, threads)
    return out

