"""Pruned files in netron, checked the way a user sees them.

The browser tests serve a pruned model with the netron PyPI package, open it in headless Chromium
(tools/netron_screenshot.py) and read netron's page: the graph must be drawn without netron's error
dialog, every SparseGemm node must appear under its original name as one node (the fallback
function is offered as "Show Function Definition", not expanded in its place), and selecting a node
must list its original op, dense shape, nnz and sparsity. They are skipped, with the reason, where
netron, selenium or Chromium is missing. The schema text of netron_meta is checked without a browser.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnx_prune.sparse_gemm import contract, formats
from onnx_prune.sparse_gemm.netron_meta import netron_metadata, netron_metadata_json

_TOOL = Path(__file__).resolve().parents[2] / "tools" / "netron_screenshot.py"


def _load_tool():
    spec = importlib.util.spec_from_file_location("netron_screenshot", _TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


tool = _load_tool()
_MISSING = tool.missing_tools()
needs_browser = pytest.mark.skipif(_MISSING is not None, reason=f"netron check skipped: {_MISSING}")


def _pruned_mlp() -> onnx.ModelProto:
    api = pytest.importorskip("onnx_prune.api")
    from test_densify import mlp_model

    pruned, _ = api.prune(mlp_model(), ratio=0.8)
    return pruned


def _attributes(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


@pytest.fixture(scope="module")
def pruned_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("netron") / "pruned.onnx"
    onnx.save(_pruned_mlp(), str(path))
    return path


@pytest.fixture(scope="module")
def page(pruned_path: Path):
    if _MISSING:
        pytest.skip(f"netron check skipped: {_MISSING}")
    return tool.open_in_netron(pruned_path, select_node="fc1",
                               screenshot=pruned_path.with_suffix(".png"))


@needs_browser
def test_pruned_model_loads_in_netron_without_error(page) -> None:
    assert page.error is None
    assert page.console_errors == []


@needs_browser
def test_each_sparse_gemm_is_one_node_under_its_original_name(page, pruned_path: Path) -> None:
    model = onnx.load(str(pruned_path))
    sparse = [n.name for n in model.graph.node if n.op_type == contract.OP_TYPE]
    assert sparse == ["fc1", "fc2", "fc3"]
    for name in sparse:
        text = page.node_texts[f"node-name-{name}"]
        assert text.startswith(contract.OP_TYPE)
        assert "Show Function Definition" in text  # the function is offered, not expanded inline
    # the fallback body's ops are not drawn in the main graph
    assert not any(t.startswith(("ScatterND", "CumSum", "Unique")) for t in page.node_texts.values())


@needs_browser
def test_selected_node_shows_op_shape_nnz_and_sparsity(page, pruned_path: Path) -> None:
    model = onnx.load(str(pruned_path))
    node = next(n for n in model.graph.node if n.name == "fc1")
    attrs = _attributes(node)
    lines = page.sidebar.splitlines()
    assert contract.OP_TYPE in lines and contract.DOMAIN in lines and "fc1" in lines
    assert node.doc_string in lines
    assert attrs["original_op"].decode() == "Gemm" and "Gemm" in lines
    assert ", ".join(str(d) for d in attrs["dense_shape"]) in lines
    assert str(attrs["nnz"]) in lines
    assert attrs["sparsity"].decode() in lines
    for name in ("original_op", "dense_shape", "nnz", "sparsity", "K", "N"):
        assert name in lines


@needs_browser
def test_a_broken_file_is_reported_as_netron_error(tmp_path: Path) -> None:
    """The check can fail: netron's error dialog is detected."""
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07not a model" * 8)
    result = tool.open_in_netron(bad)
    assert result.error and "Unsupported file content" in result.error
    assert result.node_ids == []


# ----------------------------------------------------------------------------- schema text


def test_metadata_json_describes_the_contract() -> None:
    (entry,) = json.loads(netron_metadata_json())
    assert entry == netron_metadata()[0]
    assert (entry["name"], entry["module"], entry["version"], entry["category"]) == (
        contract.OP_TYPE, contract.DOMAIN, contract.OP_VERSION, "Layer")
    assert [i["name"] for i in entry["inputs"]] == [contract.INPUT_A, *formats.get("csr").tensor_names, contract.INPUT_C]
    assert [i.get("option") for i in entry["inputs"]] == [None, None, None, None, "optional"]
    assert [o["name"] for o in entry["outputs"]] == list(contract.OUTPUT_NAMES)
    names = {a["name"] for a in entry["attributes"]}
    assert names == {getattr(contract, c) for c in dir(contract) if c.startswith("ATTR_")}
    assert all(a["description"] and a["type"] for a in entry["attributes"])
    assert {a["name"] for a in entry["attributes"] if a["required"]} == {contract.ATTR_K, contract.ATTR_N}


def test_metadata_entry_uses_netrons_own_keys() -> None:
    """Same keys and attribute type names as the entries of netron's bundled onnx-metadata.json."""
    netron = pytest.importorskip("netron")
    bundled = json.loads((Path(netron.__file__).parent / "onnx-metadata.json").read_text())
    keys = {k for e in bundled for k in e}
    types = {a["type"] for e in bundled for a in e.get("attributes", [])}
    (entry,) = netron_metadata()
    assert set(entry) <= keys
    assert {a["type"] for a in entry["attributes"]} <= types
