"""Reading and writing models without surprises: clear errors for bad files, external data kept
external, and atomic writes (a failed run never leaves a half-written output behind)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Union

import onnx

from .errors import OnnxPruneError

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
# Above this size a model cannot be a single protobuf; write its tensors as external data.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: PathLike) -> onnx.ModelProto:
    """Load ``path`` (with its external data, if any) or raise an OnnxPruneError saying why not."""
    p = Path(path)
    if not p.exists():
        raise OnnxPruneError(f"'{p}' does not exist")
    if not p.is_file():
        raise OnnxPruneError(f"'{p}' is not a file")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except OSError as exc:
        raise OnnxPruneError(f"cannot read '{p}': {exc.strerror or exc}") from exc
    except Exception as exc:  # protobuf's DecodeError, onnx's parse errors: the bytes are not a model
        raise OnnxPruneError(f"'{p}' is not a valid ONNX model: {_first_line(exc)}") from exc
    if not model.HasField("graph") or (not model.graph.node and not model.graph.initializer):
        raise OnnxPruneError(f"'{p}' is not a valid ONNX model: it holds no graph")
    if uses_external_data(model):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as exc:
            raise OnnxPruneError(f"'{p}': cannot read its external data: {_first_line(exc)}") from exc
    return model


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def external_data_files(path: PathLike) -> list[Path]:
    """The files a model's external tensors live in (none when unreadable or not external)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    locations = {e.value for t in _all_tensors(model) for e in t.external_data if e.key == "location"}
    return [Path(path).parent / loc for loc in sorted(locations)]


def file_uses_external_data(path: PathLike) -> bool:
    """Whether the model file at ``path`` keeps tensors outside itself (its output should too)."""
    return bool(external_data_files(path))


def written_size(path: PathLike) -> int:
    """Bytes of a saved model including the external data files it reads."""
    p = Path(path)
    return p.stat().st_size + sum(d.stat().st_size for d in external_data_files(p) if d.is_file())


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write a small text file (the JSON report) via a temporary file and a rename."""
    out = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.resolve().parent))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _set_default_permissions(Path(tmp_name))
        os.replace(tmp_name, out)
    except OSError as exc:
        raise OnnxPruneError(f"cannot write '{out}': {exc.strerror or exc}") from exc
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def read_npz(path: PathLike, what: str) -> dict[str, "np.ndarray"]:
    """All arrays of an .npz archive; ``what`` names the file in the one-line errors."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise OnnxPruneError(f"{what} '{p}' does not exist")
    try:
        data = np.load(p, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError("it holds a single array, not named arrays")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError) as exc:
        raise OnnxPruneError(f"{what} '{p}' is not a valid .npz: {_first_line(exc)}") from exc


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _all_tensors(model))


def _all_tensors(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                yield attr.t


def check_output_path(input_path: PathLike | None, output_path: PathLike) -> Path:
    """Refuse to overwrite the input (or its external data) and fail early when the output folder
    is not writable."""
    out = Path(output_path)
    if input_path is not None:
        src = Path(input_path)
        if _same_file(src, out):
            raise OnnxPruneError(f"output '{out}' is the input file; choose another output path")
        for data in [out, out.parent / f"{out.name}.data"]:
            if any(_same_file(d, data) for d in external_data_files(src)):
                raise OnnxPruneError(f"output '{out}' would overwrite the input's external data '{data}'; "
                                     "choose another output path")
    folder = out.resolve().parent
    if not folder.is_dir():
        raise OnnxPruneError(f"cannot write '{out}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"cannot write '{out}': folder '{folder}' is not writable")
    if out.is_dir():
        raise OnnxPruneError(f"cannot write '{out}': it is a folder")
    return out


def save_model_atomic(model: onnx.ModelProto, output_path: PathLike, *, external_data: bool = False) -> None:
    """Write ``model`` to a temporary file beside ``output_path`` and rename it into place.

    ``external_data`` (or a model too large for one protobuf) stores tensors in
    ``<output name>.data`` next to the model, itself written atomically too. onnx moves the
    tensors of ``model`` out in place then (no copy of a model that may be gigabytes): do not use
    ``model`` afterwards.
    """
    out = Path(output_path)
    external_data = external_data or model.ByteSize() > PROTOBUF_LIMIT
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.resolve().parent))
    os.close(fd)
    tmp = Path(tmp_name)
    data_tmp = out.parent / f".{out.name}.data.tmp"
    try:
        if external_data:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_tmp.name, size_threshold=1024)
            _rename_external_location(tmp, data_tmp.name, f"{out.name}.data")
            _set_default_permissions(data_tmp)
            os.replace(data_tmp, out.parent / f"{out.name}.data")
        else:
            onnx.save_model(model, str(tmp))
        _set_default_permissions(tmp)
        os.replace(tmp, out)
    except OSError as exc:
        raise OnnxPruneError(f"cannot write '{out}': {exc.strerror or exc}") from exc
    finally:
        for leftover in (tmp, data_tmp):
            if leftover.exists():
                leftover.unlink()


def _set_default_permissions(path: Path) -> None:
    """mkstemp creates files readable by the owner only; give the output the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _rename_external_location(model_path: Path, old: str, new: str) -> None:
    """Point the saved model's external tensors at the final data file name."""
    model = onnx.load(str(model_path), load_external_data=False)
    for tensor in _all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value == old:
                entry.value = new
    onnx.save_model(model, str(model_path))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
