"""Ctrl-C (SIGINT) and SIGTERM end a command the same clean way.

Python turns SIGINT into KeyboardInterrupt, so every ``finally`` block runs (temporary folders such
as the verification's ``onnx-prune-verify.*`` are removed, atomic writes are undone); SIGTERM's
default action kills the process at once and leaves them behind. While a command runs, SIGTERM
raises :class:`Terminated` (a KeyboardInterrupt) instead, and the CLI ends both with one line and
exit 130 (SIGINT) or 143 (SIGTERM).

An interrupt that lands while onnxruntime (a pybind11 module) is being imported comes out as
``ImportError: initialization failed`` caused by the KeyboardInterrupt: :func:`interrupt_in` finds
it in the exception's chain.

Once a command is over (its outputs written and its last line printed, or its error line), an
interrupt that lands while click and the interpreter wind down ends the process at once with the
command's own exit code (:func:`handle_signals` and :func:`command_over`): the outputs are
complete, there is nothing to undo, and a successful run is not reported as interrupted.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Iterator, Optional

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, what a shell reports for Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python runs next so that cleanups run as they do for Ctrl-C."""


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside the block, SIGTERM raises Terminated until the command is over (main thread only:
    only it can take handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupt_in(exc: BaseException) -> Optional[KeyboardInterrupt]:
    """The KeyboardInterrupt (or Terminated) ``exc`` is, or that caused it (its __cause__ /
    __context__ chain), or None."""
    seen = set()
    current: Optional[BaseException] = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def exit_code(interrupt: KeyboardInterrupt) -> int:
    return EXIT_TERMINATED if isinstance(interrupt, Terminated) else EXIT_INTERRUPTED


def what(interrupt: KeyboardInterrupt) -> str:
    """'interrupted' (Ctrl-C) or 'terminated' (SIGTERM), for the message."""
    return "terminated" if isinstance(interrupt, Terminated) else "interrupted"


_outcome: Optional[int] = None  # the exit code of the command once it is over (command_over)


def command_over(code: Optional[int]) -> None:
    """The command has decided how it ends (its outputs are whole, or it failed): from now on a
    signal exits with ``code`` at once instead of interrupting (None: the command runs again)."""
    global _outcome
    _outcome = code


def _on_signal(signum: int, frame) -> None:
    if _outcome is None:
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing more can be said there
            pass
    os._exit(_outcome)


def handle_signals() -> None:
    """For the process's whole life (the console entry point calls it first): SIGINT and SIGTERM
    interrupt the command while it runs, and end the process with its exit code once it is over.
    A SIGINT the parent ignores (a background job of a shell script) stays ignored."""
    command_over(None)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            signal.signal(sig, _on_signal)
