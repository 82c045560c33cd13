"""Output writes are atomic as a set: a model and its external data file change together or not at
all, whatever fails or interrupts the write, and no temporary file is left behind."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx_prune.model import modelio
from onnx_prune.errors import OnnxPruneError

BIG = 4096  # floats in the external tensor (above save_model_atomic's 1 KiB inline threshold)


def stamped_model(stamp: float, big: int = BIG) -> onnx.ModelProto:
    """Y = X + small + big[:4]: 'small' stays inside the model file, 'big' goes to the data file,
    both filled with ``stamp``, so a model read with another write's data file shows two stamps."""
    small = numpy_helper.from_array(np.full(4, stamp, np.float32), "small")
    large = numpy_helper.from_array(np.full(big, stamp, np.float32), "big")
    nodes = [helper.make_node("Slice", ["big", "starts", "ends"], ["big4"]),
             helper.make_node("Add", ["X", "small"], ["t"]),
             helper.make_node("Add", ["t", "big4"], ["Y"])]
    consts = [numpy_helper.from_array(np.array([0], np.int64), "starts"),
              numpy_helper.from_array(np.array([4], np.int64), "ends")]
    graph = helper.make_graph(nodes, "stamped", [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, [4])],
                              initializer=[small, large, *consts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def stamps(path: Path) -> set[float]:
    """The distinct stamps of a saved model's inline and external tensors (loads its data file)."""
    model = onnx.load(str(path))
    return {float(numpy_helper.to_array(t).flat[0]) for t in model.graph.initializer if t.name in ("small", "big")}


def save(stamp: float, dest: Path) -> None:
    modelio.save_model_atomic(stamped_model(stamp), dest, external_data=True)


def test_external_pair_alternates_data_names_and_removes_the_stale_one(tmp_path: Path):
    dest = tmp_path / "out.onnx"
    save(1.0, dest)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    save(2.0, dest)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.1.data"]
    assert stamps(dest) == {2.0}
    save(3.0, dest)
    assert sorted(os.listdir(tmp_path)) == ["out.onnx", "out.onnx.data"]
    assert stamps(dest) == {3.0}


@pytest.mark.parametrize("failing_call", [1, 2])
def test_failed_rename_keeps_the_previous_pair(tmp_path: Path, monkeypatch, failing_call: int):
    """Call 1 places the data file, call 2 commits the model: either failing leaves the old pair."""
    dest = tmp_path / "out.onnx"
    save(1.0, dest)
    before = sorted(os.listdir(tmp_path))
    real_replace, calls = os.replace, []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == failing_call:
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    with pytest.raises(OnnxPruneError, match="cannot write .*Input/output error"):
        save(2.0, dest)
    monkeypatch.setattr(os, "replace", real_replace)
    assert sorted(os.listdir(tmp_path)) == before
    assert stamps(dest) == {1.0}


def test_failed_serialisation_keeps_the_previous_pair(tmp_path: Path, monkeypatch):
    dest = tmp_path / "out.onnx"
    save(1.0, dest)
    before = sorted(os.listdir(tmp_path))

    def broken_save(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(onnx, "save_model", broken_save)
    with pytest.raises(OnnxPruneError, match="No space left on device"):
        save(2.0, dest)
    assert sorted(os.listdir(tmp_path)) == before


def test_interrupt_during_serialisation_leaves_nothing(tmp_path: Path, monkeypatch):
    dest = tmp_path / "out.onnx"

    def interrupted_save(model, path, *args, **kwargs):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx, "save_model", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        save(1.0, dest)
    assert os.listdir(tmp_path) == []


def test_symlinked_output_in_another_folder(tmp_path: Path):
    """The link is replaced by the new pair in its own folder; the file it pointed at is untouched."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    target = tmp_path / "b" / "target.onnx"
    target.write_bytes(b"not touched")
    link = tmp_path / "a" / "out.onnx"
    link.symlink_to(target)
    modelio.check_output_path(None, link)
    save(1.0, link)
    assert not link.is_symlink()
    assert sorted(os.listdir(tmp_path / "a")) == ["out.onnx", "out.onnx.data"]
    assert sorted(os.listdir(tmp_path / "b")) == ["target.onnx"]
    assert target.read_bytes() == b"not touched"
    assert stamps(link) == {1.0}


def test_output_path_refuses_either_data_name_of_the_input(tmp_path: Path):
    src = tmp_path / "in.onnx"
    onnx.save_model(stamped_model(1.0), str(src), save_as_external_data=True, location="o.onnx.1.data",
                    size_threshold=0)
    with pytest.raises(OnnxPruneError, match="would overwrite the input's external data"):
        modelio.check_output_path(src, tmp_path / "o.onnx")


_WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from pathlib import Path
    from onnx_prune.model import modelio
    from test_atomic_write import stamped_model
    dest = Path(sys.argv[1])
    print("ready", flush=True)
    stamp = 2.0
    while True:
        modelio.save_model_atomic(stamped_model(stamp, big=4_000_000), dest, external_data=True)
        stamp += 1.0
""")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.05, 0.13, 0.21, 0.34, 0.55])
def test_real_sigint_never_leaves_a_mixed_pair_or_a_temp_file(tmp_path: Path, delay: float):
    """A writer rewrites a 16 MB external-data model in a loop; SIGINT lands wherever it lands."""
    dest = tmp_path / "out.onnx"
    save(1.0, dest)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(dest), str(Path(__file__).parent)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert "KeyboardInterrupt" in err, err
    names = sorted(os.listdir(tmp_path))
    assert names[0] == "out.onnx" and len(names) == 2 and names[1] in modelio.output_data_names(dest), names
    assert len(stamps(dest)) == 1
