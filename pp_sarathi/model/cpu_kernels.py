"""The C kernels of the CPU path (``csrc/``), compiled on first use and loaded once.

They are built with the system C compiler, tuned to this CPU, and cached under
``$PP_SARATHI_CACHE/kernels`` (``~/.cache/pp_sarathi`` by default) keyed by their sources,
headers, flags and CPU. Without a compiler :func:`library` is None (logged once) and every
caller keeps its torch path. ``cpu_attention`` and ``cpu_elementwise`` wrap the entry points.
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

from .preset import cache_root

log = logging.getLogger("pp_sarathi")

CSRC = Path(__file__).with_name("csrc")
SOURCES = [CSRC / name for name in ("paged_decode.c", "paged_chunk.c", "elementwise.c")]
HEADERS = [CSRC / name for name in ("paged_kv.h", "vec_math.h")]  # part of the cache key, not compiled alone
CFLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-fno-math-errno", "-fopenmp", "-shared", "-fPIC"]

_I64, _PTR, _F32, _INT = ctypes.c_int64, ctypes.c_void_p, ctypes.c_float, ctypes.c_int
# Argument types of every entry point (all return void).
SIGNATURES = {
    "paged_decode_attention": [_PTR] * 7 + [_I64] * 7 + [_F32, _INT],
    "paged_chunk_attention": [_PTR, _I64, _PTR, _PTR, _PTR] + [_I64] * 3 + [_PTR] + [_I64] * 4 + [_F32, _INT],
    "rms_norm_rows": [_PTR, _I64, _PTR, _PTR, _I64, _I64, _F32, _INT],
    "add_rms_norm_rows": [_PTR] * 4 + [_I64, _I64, _F32, _INT],
    "silu_mul_rows": [_PTR, _PTR, _I64, _I64, _INT],
    "rope_rows": [_PTR, _I64, _PTR, _PTR, _I64, _I64, _I64, _INT],
}


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
    target = cache_root() / "kernels" / f"cpu_kernels-{key.hexdigest()[:16]}.so"
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
def library():
    """The compiled kernels, or None (logged once) where they cannot be built here."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("no C compiler found: the CPU path uses torch ops only")
        return None
    try:
        lib = ctypes.CDLL(str(_build(compiler)))
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("could not build the CPU kernels (%s): the CPU path uses torch ops only", detail)
        return None
    for name, argtypes in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = argtypes, None
    return lib
