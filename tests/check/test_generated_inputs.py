"""Generated inputs look like real ones (check/inputs.py): token ids drawn inside the vocabulary
the embedding table implies (directly or through Cast / Unsqueeze), masks of ones, token types
zeros, positions 0..n-1, symbolic sequence dimensions at --seq-len (default 128); and every
message that asks for inputs names --inputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune.check.verify import generated_inputs
from onnx_prune.errors import OnnxPruneError

from helpers_models import f32, make_model, mlp
from test_cli import cli_inproc, one_line_error

VOCAB, TYPES, POSITIONS, D = 50, 2, 300, 8


def encoder(via_constant_node: bool = False) -> onnx.ModelProto:
    """A BERT-like embedding front: word ids (through Cast and Unsqueeze/Squeeze, the table a
    Constant node when asked), token types and positions each index a table; the mask multiplies
    the sum; a dense layer on top (prunable) gives [batch, seq, D]."""
    rng = np.random.default_rng(0)
    words = numpy_helper.from_array(rng.standard_normal((VOCAB, D)).astype(np.float32), "word_table")
    inits = [numpy_helper.from_array(rng.standard_normal((TYPES, D)).astype(np.float32), "type_table"),
             numpy_helper.from_array(rng.standard_normal((POSITIONS, D)).astype(np.float32), "position_table"),
             numpy_helper.from_array(rng.standard_normal((D, D)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([2], np.int64), "axes")]
    nodes = [helper.make_node("Constant", [], ["word_table"], value=words)] if via_constant_node else []
    if not via_constant_node:
        inits.append(words)
    nodes += [
        helper.make_node("Cast", ["input_ids"], ["ids32"], to=TensorProto.INT32),
        helper.make_node("Unsqueeze", ["ids32", "axes"], ["ids3"]),
        helper.make_node("Squeeze", ["ids3", "axes"], ["ids"]),
        helper.make_node("Gather", ["word_table", "ids"], ["w"]),
        helper.make_node("Gather", ["type_table", "token_type_ids"], ["t"]),
        helper.make_node("Gather", ["position_table", "position_ids"], ["p"]),
        helper.make_node("Add", ["w", "t"], ["wt"]),
        helper.make_node("Add", ["wt", "p"], ["e"]),
        helper.make_node("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["m", "axes"], ["m3"]),
        helper.make_node("Mul", ["e", "m3"], ["em"]),
        helper.make_node("MatMul", ["em", "W"], ["Y"], name="/dense/MatMul"),
    ]
    ints = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
            for n in ("input_ids", "token_type_ids", "position_ids", "attention_mask")]
    return make_model(nodes, ints, [f32("Y", ["batch", "sequence", D])], inits)


@pytest.mark.parametrize("via_constant_node", [False, True])
def test_token_ids_inside_the_vocabulary_masks_ones_types_zeros_positions_count(via_constant_node: bool):
    feeds = generated_inputs(encoder(via_constant_node))
    assert {k: v.shape for k, v in feeds.items()} == {n: (4, 128) for n in
                                                      ("input_ids", "token_type_ids", "position_ids", "attention_mask")}
    ids = feeds["input_ids"]
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < VOCAB
    assert len(np.unique(ids)) > VOCAB // 2  # drawn over the vocabulary, not one token everywhere
    assert (feeds["attention_mask"] == 1).all() and not feeds["token_type_ids"].any()
    np.testing.assert_array_equal(feeds["position_ids"], np.tile(np.arange(128), (4, 1)))


def test_inputs_are_read_by_use_not_only_by_name():
    """An unnamed id input ('x') indexing a table of 7 rows: ids in [0, 7); a bool input: ones."""
    table = numpy_helper.from_array(np.ones((7, 3), np.float32), "table")
    nodes = [helper.make_node("Gather", ["table", "x"], ["g"]),
             helper.make_node("Cast", ["keep"], ["k"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["g", "k"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.INT64, ["n", 5]),
                               helper.make_tensor_value_info("keep", TensorProto.BOOL, ["n", 5, 1])],
                       [f32("y", None)], [table])
    feeds = generated_inputs(model, batch=50)
    assert feeds["x"].max() < 7 and feeds["x"].min() >= 0 and len(np.unique(feeds["x"])) == 7
    assert feeds["keep"].dtype == np.bool_ and feeds["keep"].all()


def test_seq_len_sets_the_symbolic_non_batch_dimensions():
    feeds = generated_inputs(encoder(), batch=2, seq_len=9)
    assert feeds["input_ids"].shape == (2, 9)


def test_verification_runs_the_encoder_on_realistic_inputs_and_says_so():
    _, report = onnx_prune.prune(encoder(), 0.5, verify=True, auto_dense=False, seq_len=16)
    assert report.verification.passed
    assert report.verification.inputs == ("generated inputs (input_ids [4, 16] ids in [0, 50), token_type_ids "
                                          "[4, 16] zeros, position_ids [4, 16] positions 0..n-1, attention_mask "
                                          "[4, 16] ones)")
    assert report.fidelity.inputs == report.verification.inputs


def test_cli_seq_len_reaches_the_verification_and_is_checked(tmp_path: Path):
    path = tmp_path / "enc.onnx"
    onnx.save(encoder(), str(path))
    done = cli_inproc(str(path), str(tmp_path / "o.onnx"), "--ratio", "0.5", "--no-auto-dense", "--seq-len", "7",
                      "--report-json", str(tmp_path / "r.json"))
    assert done.exit_code == 0, done.stderr
    assert "input_ids [4, 7] ids in [0, 50)" in json.loads((tmp_path / "r.json").read_text())["verification"]["inputs"]
    done = cli_inproc(str(path), str(tmp_path / "o2.onnx"), "--seq-len", "0")
    assert done.exit_code == 2
    one_line_error(done.stderr, "--seq-len must be a positive integer, got 0")


def test_no_finite_output_names_inputs(tmp_path: Path):
    """Generated inputs that make every output NaN: the message says how to give real ones."""
    model = mlp()
    nan = numpy_helper.from_array(np.array([np.nan], np.float32), "nan")
    model.graph.initializer.append(nan)
    model.graph.node[-1].output[0] = "pre"
    model.graph.node.append(helper.make_node("Add", ["pre", "nan"], ["logits"]))
    with pytest.raises(OnnxPruneError, match=r"output 'logits' has no finite value .*--inputs data\.npz"):
        onnx_prune.prune(model, 0.9, verify=True)


def test_a_model_that_fails_on_generated_inputs_names_inputs(tmp_path: Path):
    """A Reshape that only real batch sizes satisfy: the failure says the inputs were generated and
    how to give real ones."""
    model = mlp()
    model.graph.initializer.append(numpy_helper.from_array(np.array([3, -1], np.int64), "shape"))
    model.graph.node.insert(0, helper.make_node("Reshape", ["raw", "shape"], ["input"]))
    model.graph.input[0].name = "raw"
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    done = cli_inproc(str(path), str(tmp_path / "o.onnx"), "--ratio", "0.9")
    assert done.exit_code == 1
    one_line_error(done.stderr, "verification could not run the input model on generated inputs (raw [4, 20] normal)")
    assert "pass the model's real inputs with --inputs data.npz (or --no-verify)" in done.stderr
