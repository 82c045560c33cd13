"""The one exception type the CLI turns into a clean one-line error."""
from __future__ import annotations


class OnnxPruneError(Exception):
    """A user-facing error: its message is printed as is, without a traceback."""
