"""Attention on the CPU that reads the paged KV cache in place: decodes and prefill chunks.

The torch path (model/llama.py) gathers every part's K/V blocks into a contiguous copy and then
runs SDPA over it: twice the memory traffic of the attention itself, SDPA's CPU kernel treats
each of the grouped query heads separately, and its chunk kernel multiplies through MKL, which
takes its AVX2 path on AMD CPUs. ``csrc/paged_decode.c`` reads each decode's K and V rows once
where they lie, for all the query heads that share them (the softmax in between stays in
torch); ``csrc/paged_chunk.c`` is a flash-attention loop for chunks whose multiplies broadcast
straight from the cache rows. docs/benchmarks.md (issue 16) has the measurements.

The C files are compiled on first use with the system C compiler, tuned to this CPU, and cached
under ``$PP_SARATHI_CACHE/kernels`` (``~/.cache/pp_sarathi`` by default) keyed by their source,
flags and CPU. Without a compiler, or for anything the kernels do not cover (another device or
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

SOURCES = [Path(__file__).with_name("csrc") / name for name in ("paged_decode.c", "paged_chunk.c")]
HEADERS = [Path(__file__).with_name("csrc") / "paged_kv.h"]  # part of the cache key, not compiled alone
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
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    key = hashlib.sha256(source + " ".join([compiler, *CFLAGS]).encode() + _cpu_key().encode())
    target = cache_root() / "kernels" / f"paged_attention-{key.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Stage processes may build at the same moment: each writes its own file, the rename is atomic.
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
    os.close(fd)
    try:
        subprocess.run([compiler, *CFLAGS, "-o", tmp, *map(str, SOURCES)], check=True, capture_output=True,
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
        log.warning("no C compiler found: attention uses the gather + SDPA path")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("could not build the CPU attention kernels (%s): using gather + SDPA", detail)
        return None
    lib.paged_decode_scores.argtypes = [_PTR] * 5 + [_I64] * 7 + [ctypes.c_float, ctypes.c_int]
    lib.paged_decode_values.argtypes = [_PTR] * 5 + [_I64] * 7 + [ctypes.c_int]
    lib.paged_chunk_attention.argtypes = [_PTR, _I64, _PTR, _PTR, _PTR] + [_I64] * 3 + [_PTR] + [_I64] * 4 \
        + [ctypes.c_float, ctypes.c_int]
    lib.paged_decode_scores.restype = lib.paged_decode_values.restype = lib.paged_chunk_attention.restype = None
    return lib


def applies(q: torch.Tensor, k_pool: torch.Tensor) -> bool:
    """Whether the kernels cover this call (and could be built on this machine)."""
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


def paged_chunk_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, table: torch.Tensor,
                          start: int, out: torch.Tensor, block_size: int) -> None:
    """Causal attention of a chunk's queries ``q [n, H, d]`` (positions ``start .. start+n-1``,
    rows may be strided, each row's heads contiguous) over keys ``0 .. start+n-1`` of the
    sequence whose block ids are ``table`` (int64, contiguous); the chunk's own K/V must
    already be in the pools. Writes ``out [n, H, d]`` (same row rules as ``q``). Call only
    where :func:`applies` holds."""
    n, H, d = q.shape
    if q.stride(2) != 1 or q.stride(1) != d or out.stride(2) != 1 or out.stride(1) != d:
        raise ValueError("q and out need each row's heads contiguous")
    _library().paged_chunk_attention(
        q.data_ptr(), q.stride(0), k_pool.data_ptr(), v_pool.data_ptr(), table.data_ptr(), block_size, start, n,
        out.data_ptr(), out.stride(0), H, k_pool.shape[1], d, d ** -0.5, torch.get_num_threads())
