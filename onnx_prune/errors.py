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
