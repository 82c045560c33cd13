"""--inputs arrays of the wrong shape: one line naming the input, the shape the model expects and the
shape given, before any onnxruntime session runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnx_prune.check.input_shapes import check_input_shapes
from onnx_prune.errors import OnnxPruneError

from helpers_models import mlp
from test_cli import cli_inproc, one_line_error, save


@pytest.mark.parametrize("shape,expected", [
    ((4, 21), "input 'input' has shape [4, 21] but the model expects [batch, 20]"),
    ((4, 20, 1), "input 'input' has shape [4, 20, 1] but the model expects [batch, 20] (rank 2, given 3)"),
    ((20,), "input 'input' has shape [20] but the model expects [batch, 20] (rank 2, given 1)"),
])
def test_wrong_inputs_shape_is_one_line_naming_the_input(tmp_path: Path, shape, expected):
    src = save(mlp(), tmp_path / "mlp.onnx")
    data, out = tmp_path / "x.npz", tmp_path / "o.onnx"
    np.savez(data, input=np.zeros(shape, np.float32))
    done = cli_inproc(str(src), str(out), "--inputs", str(data))
    assert done.exit_code == 1
    one_line_error(done.stderr, f"error: --inputs '{data}': {expected}")
    assert "ONNXRuntimeError" not in done.stderr and not out.exists()


def two_input_model() -> onnx.ModelProto:
    inputs = [helper.make_tensor_value_info("ids", TensorProto.FLOAT, ["batch", "seq"]),
              helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["batch", "seq"]),
              helper.make_tensor_value_info("free", TensorProto.FLOAT, None)]
    node = helper.make_node("Add", ["ids", "mask"], ["y"])
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    return helper.make_model(graph)


def test_a_symbolic_size_must_agree_across_inputs():
    model = two_input_model()
    fine = {"ids": np.zeros((2, 7)), "mask": np.zeros((2, 7)), "free": np.zeros((3, 3, 3))}
    check_input_shapes(fine, model, "given inputs")
    with pytest.raises(OnnxPruneError, match=r"^given inputs: input 'mask' has shape \[2, 5\] but the model "
                                             r"expects \[batch, seq\] \('seq' is 7 in input 'ids', 5 here\)$"):
        check_input_shapes({**fine, "mask": np.zeros((2, 5))}, model, "given inputs")
