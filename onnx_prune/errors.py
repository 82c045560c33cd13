"""The exception types the CLI turns into a clean one-line error."""
from __future__ import annotations


class OnnxPruneError(Exception):
    """A user-facing error: its message is printed as is, without a traceback (CLI exit 1)."""


class UsageError(OnnxPruneError):
    """A bad option value (``--ratio 1.5``, ``--rounds 0``): the command line itself is wrong, so the
    CLI exits 2 like any other usage error."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's text (its type name when it has none): foreign libraries
    (onnxruntime, protobuf) put several lines in theirs, our errors are one line."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


# onnxruntime releases before this one are built against numpy 1.x: they fail to import with numpy 2
ONNXRUNTIME_FOR_NUMPY_2 = (1, 19)


def import_failure(exc: ImportError) -> str:
    """One line for a module that failed to import: which module, why (the exception that caused
    it, where the message itself is as vague as pybind11's 'initialization failed'), and the
    onnxruntime / numpy versions installed, with the fix when they are a pair that cannot work."""
    chain = _chain(exc)
    name = next((getattr(e, "name", None) for e in chain if getattr(e, "name", None)), None)
    text = f"cannot import {name or 'a module'}: {first_line(exc)}"
    root = chain[-1]
    if root is not exc and first_line(root) != first_line(exc):
        text += f" (caused by {type(root).__name__}: {first_line(root)})"
    return text + _versions_note()


def _chain(exc: BaseException) -> list[BaseException]:
    chain, seen = [], set()
    current: "BaseException | None" = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _versions_note() -> str:
    """'; onnxruntime X, numpy Y installed', or the fix when that onnxruntime cannot run that numpy."""
    from importlib import metadata

    try:
        ort, numpy = metadata.version("onnxruntime"), metadata.version("numpy")
    except metadata.PackageNotFoundError as missing:
        return f"; {missing.name or 'a dependency'} is not installed"
    if _release(numpy) >= (2,) and _release(ort) < ONNXRUNTIME_FOR_NUMPY_2:
        return (f"; onnxruntime {ort} is built for numpy 1.x but numpy {numpy} is installed: "
                "pip install 'numpy<2', or onnxruntime 1.19 or later")
    return f"; onnxruntime {ort}, numpy {numpy} installed"


def _release(version: str) -> tuple[int, ...]:
    """(1, 17, 3) of '1.17.3' (leading numeric parts only: '2.0.0rc1' -> (2, 0))."""
    parts = []
    for part in version.split("."):
        digits = "".join(c for c in part if c.isdigit()) if part[:1].isdigit() else ""
        if not digits:
            break
        parts.append(int(digits))
        if not part.isdigit():
            break
    return tuple(parts)
