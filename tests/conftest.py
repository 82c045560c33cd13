"""Shared pytest setup: every test runs against the library the package build produced
(or the one ONNX_PRUNE_LIBRARY names, as the sanitizer CI step does).

The tests mirror onnx_prune's subpackages (tests/model/, tests/pruning/, ...); the helpers shared
by all of them (helpers_models.py) live here, in tests/, which is put on sys.path so that every
folder imports them by their plain name.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import onnx_prune

if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def library_path() -> str:
    return onnx_prune.get_library_path()
