"""Run a stretch of numpy code with one BLAS thread.

SparseGPT's refit solves hundreds of small independent systems (one per output). OpenBLAS
threads each of them on its own; on a loaded or small machine the threads spin against each
other and other jobs (Fashion MLP, 2 shared cores: 4x1 at 80 % took 72 s with the default
threads, 2.4 s with one; docs/calibration.md). ``one_blas_thread()`` sets the BLAS thread count
to 1 for its block and restores it after. It uses threadpoolctl when that is installed, else
numpy's own OpenBLAS through its exported setter; with any other BLAS it does nothing. The
numbers computed are the same either way: only the threading of each call changes.
"""
from __future__ import annotations

import ctypes
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np

# (getter, setter) exported by the OpenBLAS builds numpy ships or links: numpy >= 2 wheels
# (scipy-openblas, 64-bit ints), older wheels (openblas64_), a system libopenblas.
_SYMBOLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
            ("openblas_get_num_threads64_", "openblas_set_num_threads64_"),
            ("openblas_get_num_threads", "openblas_set_num_threads"))

_Controls = tuple[Callable[[], int], Callable[[int], None]]
_found: Optional[list[_Controls]] = None


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Within the block, numpy's BLAS runs single-threaded (where that can be controlled)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=1, user_api="blas"):
            yield
        return
    controls = _openblas_controls()
    before = [get() for get, _ in controls]
    for _, set_threads in controls:
        set_threads(1)
    try:
        yield
    finally:
        for (_, set_threads), count in zip(controls, before):
            set_threads(count)


def blas_threads() -> Optional[int]:
    """numpy's OpenBLAS thread count now, or None where it cannot be read (not OpenBLAS)."""
    controls = _openblas_controls()
    return controls[0][0]() if controls else None


def _openblas_controls() -> list[_Controls]:
    """Getter/setter pairs of every OpenBLAS loaded in this process (found once)."""
    global _found
    if _found is None:
        _found = [c for c in (_controls(path) for path in _loaded_openblas()) if c is not None]
    return _found


def _loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries loaded in this process: from /proc/self/maps (Linux),
    else the libraries bundled with numpy (its wheels load them with numpy.linalg)."""
    maps = Path("/proc/self/maps")
    if maps.exists():
        paths = {line.split(None, 5)[-1].strip() for line in maps.read_text().splitlines() if "openblas" in line}
        return sorted(p for p in paths if p.startswith("/"))
    root = Path(np.__file__).parent
    return sorted(str(p) for d in (root.parent / "numpy.libs", root / ".libs") if d.is_dir()
                  for p in d.iterdir() if "openblas" in p.name.lower())


def _controls(path: str) -> Optional[_Controls]:
    """The thread getter/setter of the library at ``path`` (already loaded: same handle)."""
    try:
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)  # never load a new one
    except OSError:
        return None
    for get_name, set_name in _SYMBOLS:
        get, set_threads = getattr(lib, get_name, None), getattr(lib, set_name, None)
        if get is not None and set_threads is not None:
            get.restype, get.argtypes = ctypes.c_int, []
            set_threads.restype, set_threads.argtypes = None, [ctypes.c_int]
            return get, set_threads
    return None
