"""Shared pytest setup: every test runs against the library the package build produced
(or the one ONNX_PRUNE_LIBRARY names, as the sanitizer CI step does)."""
from __future__ import annotations

import pytest

import onnx_prune


@pytest.fixture(scope="session")
def library_path() -> str:
    return onnx_prune.get_library_path()
