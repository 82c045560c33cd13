"""Finding the SparseGemm onnxruntime custom-op library (runtime.py registers it in sessions).

The package's own build (scikit-build-core + CMake) compiles ``csrc/`` into a shared library that
is installed next to this module. Apps register it with
``SessionOptions.register_custom_ops_library(get_library_path())``.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional

from ..errors import OnnxPruneError

LIBRARY_ENV = "ONNX_PRUNE_LIBRARY"
_LIBRARY_BASENAME = "onnx_prune_ops"


def library_filename() -> str:
    if sys.platform == "win32":
        return f"{_LIBRARY_BASENAME}.dll"
    if sys.platform == "darwin":
        return f"lib{_LIBRARY_BASENAME}.dylib"
    return f"lib{_LIBRARY_BASENAME}.so"


def _candidate_dirs() -> list[Path]:
    """Where the built library can be: next to this file (wheel install) or, for editable
    installs, in any ``onnx_prune`` folder on ``sys.path`` (scikit-build-core keeps built files in
    site-packages while the Python sources stay in the checkout)."""
    dirs = [Path(__file__).resolve().parents[1]]
    for entry in sys.path:
        candidate = Path(entry or ".") / "onnx_prune"
        if candidate not in dirs:
            dirs.append(candidate)
    return dirs


def find_library_path() -> Optional[str]:
    """Absolute path of the library, or None when it is not built."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return str(Path(override).resolve()) if Path(override).is_file() else None
    for directory in _candidate_dirs():
        path = directory / library_filename()
        if path.is_file():
            return str(path.resolve())
    return None


def get_library_path() -> str:
    """Absolute path of the SparseGemm custom-op library shipped with this package."""
    path = find_library_path()
    if path is None:
        where = os.environ.get(LIBRARY_ENV)
        hint = (f"{LIBRARY_ENV}={where} is not a file" if where else
                "reinstall the package with `pip install .` so its build compiles the library")
        raise OnnxPruneError(f"the SparseGemm library ({library_filename()}) was not found: {hint}")
    return path
