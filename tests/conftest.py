"""Shared pytest setup: every test runs against the library the package build produced
(or the one ONNX_PRUNE_LIBRARY names, as the sanitizer CI step does).

The tests mirror onnx_prune's subpackages (tests/model/, tests/pruning/, ...); the helpers shared
by all of them (helpers_models.py) live here, in tests/, which is put on sys.path so that every
folder imports them by their plain name.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import onnx_prune

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# No plain progress lines (progress_lines.py) in the commands the tests run, even when a loaded
# machine makes one slow: tests that read stderr expect only their error or warning lines. The
# tests of those lines set the interval themselves.
os.environ.setdefault("ONNX_PRUNE_PROGRESS_INTERVAL", "3600")


@pytest.fixture(scope="session")
def library_path() -> str:
    return onnx_prune.get_library_path()
