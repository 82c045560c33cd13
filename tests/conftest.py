"""Shared pytest setup: every test runs against the library the package build produced
(or the one ONNX_PRUNE_LIBRARY names, as the sanitizer CI step does)."""
from __future__ import annotations

import os

import pytest

import onnx_prune

# No plain progress lines (progress_lines.py) in the commands the tests run, even when a loaded
# machine makes one slow: tests that read stderr expect only their error or warning lines. The
# tests of those lines set the interval themselves.
os.environ.setdefault("ONNX_PRUNE_PROGRESS_INTERVAL", "3600")


@pytest.fixture(scope="session")
def library_path() -> str:
    return onnx_prune.get_library_path()
