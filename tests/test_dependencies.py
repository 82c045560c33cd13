"""The installation: dependency bounds that exclude onnxruntime / numpy pairs that cannot import,
the oldest-stack CI job pinned inside them, and an import failure that says why."""
from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

from helpers_models import mlp
from test_cli import cli_inproc, one_line_error, save

REPO = Path(__file__).resolve().parents[1]


def _requirements() -> dict[str, str]:
    """pyproject's [project] dependencies: name -> version specifier."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:
        tomllib = pytest.importorskip("tomli")
    with open(REPO / "pyproject.toml", "rb") as handle:
        deps = tomllib.load(handle)["project"]["dependencies"]
    return {re.match(r"[A-Za-z0-9_.-]+", d).group(0).lower(): d for d in deps}


def _floor(spec: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9.]+)", spec)
    assert match, spec
    return tuple(int(p) for p in match.group(1).split("."))


def test_no_allowed_onnxruntime_is_built_for_numpy_1_without_saying_so():
    """onnxruntime 1.17.x and 1.18.0 declare numpy >= 1.21.6 with no upper bound but are built against
    numpy 1.x: with numpy 2 they cannot import. 1.18.1 declares numpy < 2 itself; 1.19 supports numpy 2.
    Allowing onnxruntime from 1.18.1 on leaves pip no broken pair to choose."""
    assert _floor(_requirements()["onnxruntime"]) >= (1, 18, 1)


def test_the_oldest_stack_job_pins_the_floor():
    """.ci/oldest-stack installs with .ci/oldest-stack.txt: the floor of pyproject, numpy 1.x."""
    pins = (REPO / ".ci" / "oldest-stack.txt").read_text()
    floor = ".".join(map(str, _floor(_requirements()["onnxruntime"])))
    assert re.search(rf"^onnxruntime=={re.escape(floor)}$", pins, re.M), pins
    assert re.search(r"^numpy<2$", pins, re.M), pins
    assert "-c .ci/oldest-stack.txt" in (REPO / ".ci" / "oldest-stack").read_text()


def _import_failed(*args, **kwargs):
    try:
        raise ImportError("numpy.core.multiarray failed to import")
    except ImportError as numpy_failure:
        raise ImportError("initialization failed", name="onnxruntime.capi.onnxruntime_pybind11_state") \
            from numpy_failure


@pytest.mark.parametrize("versions,note", [
    ({"onnxruntime": "1.17.3", "numpy": "2.0.2"},
     "; onnxruntime 1.17.3 is built for numpy 1.x but numpy 2.0.2 is installed: pip install 'numpy<2', "
     "or onnxruntime 1.19 or later"),
    ({"onnxruntime": "1.19.2", "numpy": "2.0.2"}, "; onnxruntime 1.19.2, numpy 2.0.2 installed"),
])
def test_an_import_failure_says_which_module_why_and_the_versions(tmp_path: Path, monkeypatch, versions, note):
    from onnx_prune import api

    monkeypatch.setattr(api, "prune", _import_failed)
    monkeypatch.setattr(metadata, "version", lambda name: versions[name])
    done = cli_inproc(str(save(mlp(), tmp_path / "mlp.onnx")), str(tmp_path / "o.onnx"))
    assert done.exit_code == 1
    one_line_error(done.stderr, "error: cannot import onnxruntime.capi.onnxruntime_pybind11_state: initialization "
                                "failed (caused by ImportError: numpy.core.multiarray failed to import)" + note)
    assert "unexpected" not in done.stderr
