"""Progress as plain text lines, for output that is not a terminal (logs, pipes, CI).

A rich progress bar redraws one line in place: into a log file it writes either nothing (rich
turns it off there) or escape codes. A calibrated prune of a transformer runs for a minute or
more, and a user who sees nothing that long takes it for a hang. ``ProgressLines`` is the same
``(message, done, total)`` callback the bar takes (api.Progress), writing lines like

    [   12.4 s] sparsegpt: layer 7/36 /encoder/layer.1/attention/self/query/MatMul
    [   24.0 s] sparsegpt: layer 7/36 /encoder/layer.1/attention/self/query/MatMul (2/3)

Nothing is printed in the first ``5 x min_interval`` seconds (a quick run stays silent, its
output as before); after that a new message (a new step, a new layer) prints a line unless the
last line is less than ``min_interval`` seconds old, and progress within one message
(SparseGPT's blocks) prints at most every ``10 x min_interval`` seconds. So a log gets a line per
layer on slow runs. ``ONNX_PRUNE_PROGRESS_INTERVAL`` (seconds, default 1) sets ``min_interval``:
0 prints every event at once, a large value silences the lines.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO

MIN_INTERVAL = 1.0       # seconds between two lines, at least
FIRST_DELAY = 5.0        # x min_interval of silence before the first line
REPEATS = 10.0           # x min_interval between two lines of the same message (its done/total changing)


class ProgressLines:
    """A ``(message, done, total)`` progress callback that prints rate-limited lines."""

    def __init__(self, stream: Optional[TextIO] = None, *, min_interval: Optional[float] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.min_interval = interval_setting() if min_interval is None else min_interval
        self.first_delay = FIRST_DELAY * self.min_interval
        self.repeat_interval = REPEATS * self.min_interval
        self.clock = clock
        self.start = clock()
        self.last_time: Optional[float] = None
        self.last_message: Optional[str] = None

    def __call__(self, message: str, done: int, total: int) -> None:
        now = self.clock()
        if self.last_time is None:
            since, wait = now - self.start, self.first_delay
        else:
            since = now - self.last_time
            wait = self.repeat_interval if message == self.last_message else self.min_interval
        if since < wait:
            return
        detail = f" ({done}/{total})" if message == self.last_message and total > 0 else ""
        print(f"[{now - self.start:7.1f} s] {message}{detail}", file=self.stream, flush=True)
        self.last_time, self.last_message = now, message


def interval_setting() -> float:
    """``ONNX_PRUNE_PROGRESS_INTERVAL`` when it is a number >= 0, else MIN_INTERVAL."""
    try:
        value = float(os.environ.get("ONNX_PRUNE_PROGRESS_INTERVAL", MIN_INTERVAL))
    except ValueError:
        return MIN_INTERVAL
    return value if value >= 0 else MIN_INTERVAL
