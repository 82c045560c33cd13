"""onnx-prune: prune ONNX models and run them faster in onnxruntime."""
from __future__ import annotations

from ._version import __version__
from .errors import OnnxPruneError
from .library import get_library_path, session_options

__all__ = ["__version__", "OnnxPruneError", "get_library_path", "session_options"]
