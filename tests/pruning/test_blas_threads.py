"""one_blas_thread: numpy's OpenBLAS runs single-threaded inside, as before outside."""
import numpy as np
import pytest

from onnx_prune.pruning import blas_threads
from onnx_prune.pruning.blas_threads import blas_threads as current_threads, one_blas_thread

needs_openblas = pytest.mark.skipif(current_threads() is None, reason="numpy is not linked against OpenBLAS")


@needs_openblas
def test_one_thread_inside_and_restored_after():
    before = current_threads()
    with one_blas_thread():
        inside = current_threads()
    assert inside == 1
    assert current_threads() == before


@needs_openblas
def test_restored_after_an_error():
    before = current_threads()
    with pytest.raises(ValueError, match="boom"):
        with one_blas_thread():
            raise ValueError("boom")
    assert current_threads() == before


def test_numbers_unchanged_inside():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 150, 150))
    a = a @ a.transpose(0, 2, 1) + 150 * np.eye(150)
    b = rng.standard_normal((6, 150, 1))
    with one_blas_thread():
        inside = np.linalg.solve(a, b)
    assert np.allclose(np.einsum("bij,bjk->bik", a, inside), b, atol=1e-9)


def test_without_openblas_it_does_nothing(monkeypatch):
    monkeypatch.setattr(blas_threads, "_found", [])
    monkeypatch.setitem(__import__("sys").modules, "threadpoolctl", None)   # import fails
    with one_blas_thread():
        assert current_threads() is None
