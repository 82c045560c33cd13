"""Ctrl-C and SIGTERM, sent for real to the command: SIGTERM is as clean as SIGINT (no
onnx-prune-verify.* folder left, one line, exit 143 / 130); an interrupt that onnxruntime's import
turns into 'ImportError: initialization failed' is still an interrupt; and a command that has
printed its last line has succeeded (an interrupt during shutdown keeps exit 0)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import onnx
import pytest

from helpers_models import mlp
from test_cli import cli_inproc, one_line_error, save

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

REPO = Path(__file__).resolve().parents[1]

# the real command, with the verification stalled so that a signal lands while its folder exists
_STALLED_VERIFY = textwrap.dedent("""
    import sys, time
    import onnx_prune.check.verify as verify

    def stalled(*args, **kwargs):
        print("verifying", flush=True)
        time.sleep(120)

    verify.verify_pruned = stalled
    from onnx_prune.cli import main
    main(sys.argv[1:])
""")

# the real command, with a slow interpreter shutdown after it (as a big model's teardown can be)
_SLOW_SHUTDOWN = textwrap.dedent("""
    import atexit, sys, time
    atexit.register(time.sleep, 60)
    from onnx_prune.cli import main
    main(sys.argv[1:])
""")


def start(script: str, args: list, tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_for_line(proc: subprocess.Popen, prefix: str) -> None:
    for line in proc.stdout:
        if line.startswith(prefix):
            return
    pytest.fail(f"no line starting with {prefix!r}: {proc.stderr.read()}")


@pytest.mark.parametrize("sig,code,word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_signal_during_verification_leaves_no_temporary_folder(tmp_path: Path, sig, code: int, word: str):
    src, out = save(mlp(), tmp_path / "mlp.onnx"), tmp_path / "o.onnx"
    proc = start(_STALLED_VERIFY, [src, out], tmp_path)
    try:
        wait_for_line(proc, "verifying")
        assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("onnx-prune-verify.")]
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    one_line_error(err, f"error: {word}; nothing was written")
    # onnxruntime (1.32) keeps a '.ses' file of its own in TMPDIR once a session opened: not ours
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name != ".ses"] == [] and not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx", "tmp"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_after_the_last_line_keeps_the_success(tmp_path: Path, sig):
    """The output is whole and 'wrote' printed: a signal during shutdown ends the process at once, exit 0."""
    src, out = save(mlp(), tmp_path / "mlp.onnx"), tmp_path / "o.onnx"
    proc = start(_SLOW_SHUTDOWN, [src, out, "--no-verify"], tmp_path)
    try:
        wait_for_line(proc, "wrote")
        started = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and err == "", err
    assert time.monotonic() - started < 30  # not the 60 s shutdown: it ended at once
    onnx.checker.check_model(onnx.load(str(out)))


def test_interrupt_turned_into_an_import_error_is_an_interrupt(tmp_path: Path, monkeypatch):
    """onnxruntime's pybind11 module answers a Ctrl-C during its import with 'ImportError:
    initialization failed' caused by the KeyboardInterrupt."""
    from onnx_prune import api

    def import_interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr(api, "prune", import_interrupted)
    src = save(mlp(), tmp_path / "mlp.onnx")
    done = cli_inproc(str(src), str(tmp_path / "o.onnx"))
    assert done.exit_code == 130
    one_line_error(done.stderr, "error: interrupted; nothing was written")


def test_interrupt_in_finds_the_interrupt_in_the_chain():
    from onnx_prune.interrupts import Terminated, exit_code, interrupt_in

    try:
        try:
            raise Terminated
        except Terminated:
            raise ImportError("initialization failed")  # chained as __context__
    except ImportError as exc:
        found = interrupt_in(exc)
    assert isinstance(found, Terminated) and exit_code(found) == 143
    assert interrupt_in(ValueError("plain")) is None
