"""onnx-prune: prune ONNX models and run them faster in onnxruntime."""
from ._version import __version__
from .api import prune
from .errors import OnnxPruneError
from .options import PruneOptions
from .runtime.library import get_library_path
from .check.report import PruneReport
from .runtime.session import library_session_options as session_options

__all__ = ["__version__", "OnnxPruneError", "PruneOptions", "PruneReport", "get_library_path", "prune", "session_options"]
