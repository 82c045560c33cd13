"""Reading and writing models without surprises: clear errors for bad files, external data kept
external, and atomic writes (a failed run never leaves a half-written output behind)."""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Union

import onnx

from ..errors import OnnxPruneError

if TYPE_CHECKING:
    import numpy as np

PathLike = Union[str, "os.PathLike[str]"]
# Above this size a model cannot be a single protobuf; write its tensors as external data.
PROTOBUF_LIMIT = 2**31 - 1


def load_model(path: PathLike, *, external_data: bool = True) -> onnx.ModelProto:
    """Load ``path`` (with its external data, if any) or raise an OnnxPruneError saying why not.

    ``external_data=False`` leaves external tensors in their files (read them with
    read_external_array, or load_external_data later): a pruner going layer by layer then never
    holds the layers it has finished. The files are still checked here, so a broken one fails now.
    """
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
    if not uses_external_data(model):
        return model
    if external_data:
        load_external_data(model, p.parent, what=f"'{p}'")
    else:
        for tensor in external_tensors(model):
            try:
                external_span(tensor, p.parent)
            except (OSError, ValueError) as exc:
                raise OnnxPruneError(f"'{p}': cannot read its external data: {_first_line(exc)}") from exc
    return model


def load_external_data(model: onnx.ModelProto, folder: PathLike, *, what: str = "the model") -> None:
    """Read every tensor still kept in an external file into ``model`` (one line when that fails)."""
    try:
        onnx.load_external_data_for_model(model, str(folder))
    except Exception as exc:  # OSError, or onnx's ValidationError for a location outside the folder
        raise OnnxPruneError(f"{what}: cannot read its external data: {_first_line(exc)}") from exc


# rows read at a time when a weight is transposed on reading: the transposed copy is the only
# full-size array
_READ_BLOCK_BYTES = 64 << 20


def read_external_array(tensor: onnx.TensorProto, folder: PathLike, *, transpose: bool = False) -> "np.ndarray":
    """A numeric external tensor read straight from its file (the proto is left as it is);
    ``transpose`` (2-D only) gives the transposed array, C-contiguous, without a second copy."""
    import numpy as np

    path, offset, _ = external_span(tensor, folder)
    dtype = _numpy_dtype(tensor)
    dims = tuple(int(d) for d in tensor.dims)
    with open(path, "rb") as handle:
        handle.seek(offset)
        if not transpose:
            return _read_exactly(handle, dtype, int(np.prod(dims)), tensor.name).reshape(dims)
        rows, cols = dims
        out = np.empty((cols, rows), dtype=dtype.newbyteorder("="))
        step = max(1, _READ_BLOCK_BYTES // max(1, cols * dtype.itemsize))
        for start in range(0, rows, step):
            count = min(step, rows - start)
            out[:, start:start + count] = _read_exactly(handle, dtype, count * cols, tensor.name).reshape(count, cols).T
        return out


def _read_exactly(handle, dtype: "np.dtype", count: int, name: str) -> "np.ndarray":
    import numpy as np

    array = np.fromfile(handle, dtype=dtype, count=count)
    if array.size != count:
        raise OnnxPruneError(f"external data of tensor '{name}' ends early")
    return array.astype(dtype.newbyteorder("="), copy=False)


def _numpy_dtype(tensor: onnx.TensorProto) -> "np.dtype":
    """The little-endian numpy dtype of a tensor's raw bytes (what external data holds)."""
    import numpy as np

    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).newbyteorder("<")


def external_span(tensor: onnx.TensorProto, folder: PathLike) -> tuple[Path, int, int]:
    """(file, offset, length) of an external tensor, checked: a relative location inside
    ``folder`` whose file holds the whole tensor."""
    import numpy as np

    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    parts = Path(location).parts
    if not location or Path(location).is_absolute() or ".." in parts:
        raise ValueError(f"tensor '{tensor.name}': location '{location}' is not a file inside the model's folder")
    path = Path(folder) / location
    size = path.stat().st_size  # OSError when missing
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else size - offset
    needed = int(np.prod([int(d) for d in tensor.dims])) * _numpy_dtype(tensor).itemsize
    if offset < 0 or offset + max(length, needed) > size or length < needed:
        raise ValueError(f"tensor '{tensor.name}': '{location}' holds {size} bytes, too few for offset {offset} "
                         f"and {needed} bytes")
    return path, offset, length


def external_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """The tensors of ``model`` whose data is still in an external file."""
    return [t for t in _all_tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]


def external_locations(model: onnx.ModelProto) -> set[str]:
    """The file names (relative to the model's folder) that external tensors of ``model`` live in."""
    return {e.value for t in external_tensors(model) for e in t.external_data if e.key == "location"}


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
    return [Path(path).parent / loc for loc in sorted(external_locations(model))]


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
    tmp_name = ""
    try:
        with _interrupts_deferred():  # an interrupt right after mkstemp must still find the file named
            fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.absolute().parent))
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        _set_default_permissions(Path(tmp_name))
        os.replace(tmp_name, out)
    except OSError as exc:
        raise OnnxPruneError(f"cannot write '{out}': {exc.strerror or exc}") from exc
    finally:
        if tmp_name and os.path.exists(tmp_name):
            os.unlink(tmp_name)


def read_npz(path: PathLike, what: str) -> dict[str, "np.ndarray"]:
    """All arrays of an .npz archive; ``what`` names the file in the one-line errors (worded by us,
    not by numpy, whose messages differ between versions)."""
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise OnnxPruneError(f"{what} '{p}' does not exist")
    try:
        with open(p, "rb") as handle:
            magic = handle.read(6)
        if magic.startswith(b"\x93NUMPY"):
            raise ValueError("it holds a single array, not named arrays (an .npy file)")
        if not magic.startswith(b"PK"):
            raise ValueError("it is not an .npz archive (a zip of named arrays)")
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        reason = "it holds Python objects, which are never unpickled" if "pickle" in str(exc) else _first_line(exc)
        raise OnnxPruneError(f"{what} '{p}' is not a valid .npz: {reason}") from exc
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
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
        for data in [out, *(out.parent / name for name in output_data_names(out))]:
            if any(_same_file(d, data) for d in external_data_files(src)):
                raise OnnxPruneError(f"output '{out}' would overwrite the input's external data '{data}'; "
                                     "choose another output path")
    folder = out.absolute().parent  # a symlink at OUT is replaced, so its own folder is written
    if not folder.is_dir():
        raise OnnxPruneError(f"cannot write '{out}': folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK):
        raise OnnxPruneError(f"cannot write '{out}': folder '{folder}' is not writable")
    if out.is_dir():
        raise OnnxPruneError(f"cannot write '{out}': it is a folder")
    return out


def save_model_atomic(model: onnx.ModelProto, output_path: PathLike, *, external_data: bool = False) -> None:
    """Write ``model`` to ``output_path`` so that the model and its data file change together.

    ``external_data`` (or a model too large for one protobuf) stores tensors in a data file beside
    the model, ``<output name>.data`` (or ``<output name>.1.data`` when the model being replaced
    reads that name). Everything is first written into a hidden folder beside the output; then the
    data file is renamed to a name the current output does not read, and the model file is renamed
    over the output: that one rename is the moment the new pair replaces the old one. A failure or
    an interrupt (SIGINT, SIGTERM) before it leaves the previous output and its data as they were,
    after it the new pair is complete; no temporary file survives either way. A symlink at
    ``output_path`` is replaced by the new file (the file it pointed at is left alone). onnx moves
    the tensors of ``model`` out in place (no copy of a model that may be gigabytes): do not use
    ``model`` afterwards.
    """
    out = Path(output_path).absolute()
    external_data = external_data or model.ByteSize() > PROTOBUF_LIMIT
    stage: Optional[Path] = None
    placed: list[Path] = []
    committed = False
    try:
        with _interrupts_deferred():  # an interrupt right after mkdtemp must still find the folder named
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=str(out.parent)))
        data_name = _free_data_name(out) if external_data else None
        _write_staged(model, stage / out.name, data_name)
        staged = [stage / name for name in ([data_name] if data_name else [])] + [stage / out.name]
        for path in staged:
            _set_default_permissions(path)
        stale = [p for p in _own_data_files(out) if p.name != data_name]
        with _interrupts_deferred():
            for path in staged[:-1]:  # the data file: a name the current output does not read
                os.replace(path, out.parent / path.name)
                placed.append(out.parent / path.name)
            os.replace(staged[-1], out)  # the commit
            committed = True
            for path in stale:
                path.unlink(missing_ok=True)
            shutil.rmtree(stage, ignore_errors=True)  # here, not only below: a signal landing as the
            # finally block starts (before it defers signals) would skip the removal there
    except OSError as exc:
        raise OnnxPruneError(f"cannot write '{out}': {exc.strerror or exc}") from exc
    finally:
        with _interrupts_deferred():  # a second Ctrl-C must not leave the staging folder behind
            if not committed:
                for path in placed:
                    path.unlink(missing_ok=True)
            if stage is not None:
                shutil.rmtree(stage, ignore_errors=True)


def output_data_names(output_path: PathLike) -> list[str]:
    """The data file names save_model_atomic may give an external-data output (it alternates
    between them so that the data file of the output being replaced stays intact until the end)."""
    name = Path(output_path).name
    return [f"{name}.data", f"{name}.1.data"]


def _free_data_name(out: Path) -> str:
    """The first of the output's data names that the model now at ``out`` does not read."""
    read = {p.name for p in external_data_files(out)} if out.is_file() else set()
    return next(n for n in output_data_names(out) if n not in read)


def _own_data_files(out: Path) -> list[Path]:
    """Data files the model now at ``out`` reads under one of our names (stale once replaced)."""
    ours = set(output_data_names(out))
    return [p for p in external_data_files(out) if p.name in ours] if out.is_file() else []


def _write_staged(model: onnx.ModelProto, path: Path, data_name: Optional[str]) -> None:
    if data_name is None:
        onnx.save_model(model, str(path))
    else:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)


@contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT / SIGTERM back while the output's files are renamed into place, then deliver
    them to the handlers that were there (only the main thread can install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(received):
            os.kill(os.getpid(), sig)


def _set_default_permissions(path: Path) -> None:
    """mkstemp creates files readable by the owner only; give the output the usual mode."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
