"""The one place that opens onnxruntime sessions and runs them.

Every failure inside onnxruntime (a model it rejects, a run that fails) becomes an OnnxPruneError of
one line that says what was being done, so no caller wraps onnxruntime's exceptions itself. The
SparseGemm library is registered when asked for, or found and registered when the model holds
SparseGemm nodes (without it such a model can still run through its standard-op fallback).
"""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence, Union

import numpy as np
import onnx

from ..sparse_gemm import is_sparse_gemm
from ..errors import OnnxPruneError, first_line
from .library import find_library_path, get_library_path
from ..model.modelio import PROTOBUF_LIMIT

ModelOrPath = Union[onnx.ModelProto, str, Path]
PROVIDERS = ["CPUExecutionProvider"]
# onnxruntime's own log lines (coloured warnings about the graph) come before our one-line error
# and repeat what it says; sessions log errors only (3) unless the CLI runs with --debug.
QUIET, VERBOSE = 3, 2
_log_severity = QUIET


def set_verbose(verbose: bool) -> None:
    """Let the sessions opened from now on log onnxruntime's warnings (the CLI's --debug)."""
    global _log_severity
    _log_severity = VERBOSE if verbose else QUIET


def session_options(threads: int = 0, *, library: Optional[str] = None,
                    config: Optional[Mapping[str, str]] = None, **settings: object):
    """onnxruntime ``SessionOptions``: ``threads`` intra-op threads (0: onnxruntime's default), the
    custom-op library at path ``library`` registered, ``config`` entries added (e.g.
    ``{"session.disable_prepacking": "1"}``), extra ``settings`` set as attributes (e.g.
    ``graph_optimization_level``, ``log_severity_level``)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = _log_severity
    if library is not None:
        options.register_custom_ops_library(library)
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    options.intra_op_num_threads = int(threads)
    for name, value in settings.items():
        setattr(options, name, value)
    return options


def library_session_options(intra_op_num_threads: int = 0, **settings: object):
    """onnxruntime ``SessionOptions`` with the SparseGemm library registered: what an app needs to
    run a pruned file (public as ``onnx_prune.session_options``). Extra keyword arguments are set
    as attributes (e.g. ``graph_optimization_level``)."""
    return session_options(intra_op_num_threads, library=get_library_path(), **settings)


def open_session(model: ModelOrPath, *, library: Optional[bool] = None, threads: int = 0, options=None,
                 error: Optional[str] = None, config: Optional[Mapping[str, str]] = None, **settings: object):
    """An onnxruntime CPU session for a ModelProto or a model file.

    ``library``: True registers the SparseGemm library (an error when it is not built), False never,
    None when the model uses SparseGemm and the library is found. ``options``: ready
    SessionOptions used as they are (then ``library``, ``threads``, ``config`` and ``settings``
    are not used). A model file's external data is read by onnxruntime itself (mapped, not copied
    through Python).
    ``error`` starts the one-line message when onnxruntime rejects the model (default: "onnxruntime
    cannot load" and the model's name). Models over 2 GB go to onnxruntime as a temporary file with
    external data, the only form it takes them in.
    """
    import onnxruntime as ort

    error = error or f"onnxruntime cannot load {model_name(model)}"
    if options is None:
        options = session_options(threads, library=_library_for(model, library), config=config, **settings)
    try:
        with _loadable(model) as source:
            return ort.InferenceSession(source, options, providers=PROVIDERS,
                                        disabled_optimizers=broken_optimizers(ort.__version__))
    except OnnxPruneError:
        raise
    except Exception as exc:  # onnxruntime's own exception types, protobuf's, OSError
        raise OnnxPruneError(f"{error}: {first_line(exc)}") from exc


def broken_optimizers(version: str) -> list[str]:
    """The graph rewrites onnxruntime ``version`` gets wrong, left out of every session we open.

    1.18's MatmulTransposeFusion turns Transpose + MatMul (attention's Q·Kᵀ) into a FusedMatMul
    that, once a session has run at one batch size, returns wrong values at another: calibration
    runs batches of different sizes through one session, so its statistics were silently wrong.
    1.19 fixed it (tests/runtime/test_sessions_across_batch_sizes.py shows both).
    """
    major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
    return ["MatmulTransposeFusion"] if major_minor < (1, 19) else []


def run(session, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None, *,
        error: str = "onnxruntime could not run the model") -> list[np.ndarray]:
    """``session.run``; a failure becomes one line starting with ``error``."""
    try:
        return session.run(None if outputs is None else list(outputs), dict(feeds))
    except Exception as exc:  # onnxruntime raises its own exception types
        raise OnnxPruneError(f"{error}: {first_line(exc)}") from exc


def model_name(model: ModelOrPath) -> str:
    """How a message names the model: its path, else its graph's name."""
    if isinstance(model, (str, Path)):
        return f"'{model}'"
    name = model.graph.name if isinstance(model, onnx.ModelProto) else ""
    return f"model '{name}'" if name else "the model"


def uses_sparse_gemm(model: onnx.ModelProto) -> bool:
    """Whether any node of the main graph is a SparseGemm."""
    return any(is_sparse_gemm(node) for node in model.graph.node)


def _library_for(model: ModelOrPath, library: Optional[bool]) -> Optional[str]:
    """Path of the library to register, or None."""
    if library is True:
        return get_library_path()
    if library is False:
        return None
    return find_library_path() if uses_sparse_gemm(_graph_only(model)) else None


def _graph_only(model: ModelOrPath) -> onnx.ModelProto:
    """The model's nodes, without reading a file's external data (that is onnxruntime's job)."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise OnnxPruneError(f"'{path}' does not exist")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError, OSError: the bytes are not a readable model
        raise OnnxPruneError(f"'{path}' is not a valid ONNX model: {first_line(exc)}") from exc


@contextmanager
def _loadable(model: ModelOrPath) -> Iterator[Union[str, bytes]]:
    """What InferenceSession takes for ``model``: a path as a string, a ModelProto as bytes, or,
    above protobuf's 2 GB limit, a temporary file with its tensors as external data (read back
    into ``model`` afterwards: onnx moves them out of the proto it saves)."""
    if not isinstance(model, onnx.ModelProto):
        yield str(model)
    elif model.ByteSize() <= PROTOBUF_LIMIT:
        yield model.SerializeToString()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "model.onnx")
            onnx.save(model, path, save_as_external_data=True, location="weights.bin")
            try:
                yield path
            finally:
                onnx.load_external_data_for_model(model, tmp)
