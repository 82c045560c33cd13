#!/usr/bin/env python3
"""Micro-benchmark of the SparseGemm kernel on one layer (format csr, fp32 values; and csr_int8, the
same kept weights quantized to int8), side by side in one process with:

* onnxruntime's dense ``Gemm`` on the same (masked) weights,
* onnxruntime's int8 dynamic quantization (``quantize_dynamic``) of that dense layer,
* onnxruntime's ``com.microsoft.SparseToDenseMatMul`` on the same weights as a CSR sparse tensor,
* ``scipy.sparse`` CSR times dense, in-process,
* optionally (``--paths``) SparseGemm with each kernel path forced (the ONNX_PRUNE_PATH test hook),
* with ``--block R``: the weight gets a random R x 1 block mask and the ``bcsr`` format (R x 1
  blocks) is timed too, against dense and csr on the same weights (columns ``dense/bcsr``, ``csr/bcsr``).

Inputs are standard normal, optionally with entries zeroed with probability ``--zero-prob``, or real
post-ReLU activations of the bundled MNIST MLP (``--inputs relu1|relu2``).

Every candidate's result is checked against a float64 reference of the weights it stores (the
dequantized ones for int8) before it is timed. Timings are
interleaved in rounds (each candidate runs a block of calls per round), so drift in the machine's
speed hits all candidates alike; latencies are medians over rounds, ratios medians of per-round
ratios. This is a benchmark, not a test: it asserts nothing about speed.

    PYTHONPATH=. python tools/bench_kernel.py [--quick] [--k 1000 --n 1000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

import onnx
from onnx import TensorProto, helper, numpy_helper

import onnx_prune
from onnx_prune.measure import machine, timing
from onnx_prune.pruning import masking
from onnx_prune.sparse_gemm import contract
from onnx_prune.sparse_gemm import formats
from onnx_prune.sparse_gemm.formats import PackedWeight
from onnx_prune.sparse_gemm.formats import bcsr as bcsr_format
from onnx_prune.sparse_gemm.formats import csr as csr_format

SPARSITIES = (0.5, 0.7, 0.8, 0.9, 0.95)
BATCHES = (1, 16, 64, 256)
QUICK_SPARSITIES = (0.5, 0.9)
QUICK_BATCHES = (1, 64)
OURS, INT8, DENSE, ORT_INT8, S2D, SCIPY = ("SparseGemm", "SparseGemm int8", "dense Gemm", "onnxruntime int8 dynamic",
                                           "SparseToDenseMatMul", "scipy CSR")
BCSR = "SparseGemm bcsr"  # the R x 1 block format, timed with --block R
BCSR_INT8 = "SparseGemm bcsr int8 dynamic"  # the same blocks in format bcsr_int8_dynamic, with --block R
CANDIDATES = (OURS, INT8, DENSE, ORT_INT8, S2D, SCIPY, BCSR, BCSR_INT8)
SHORT = {OURS: "ours", INT8: "int8", DENSE: "dense", ORT_INT8: "ort-int8", S2D: "s2d", SCIPY: "scipy", BCSR: "bcsr",
         BCSR_INT8: "bcsr-i8"}
# shown with --block: other / bcsr, and the int8 blocks against the fp32 blocks and onnxruntime's int8
BLOCK_RATIOS = {"dense/bcsr": (DENSE, BCSR), "csr/bcsr": (OURS, BCSR), "bcsr/bcsr-i8": (BCSR, BCSR_INT8),
                "ort-int8/bcsr-i8": (ORT_INT8, BCSR_INT8)}
PATHS = ("gemv", "input_stationary", "tiled", "input_stationary_rows")  # --paths times each, forced
PATH_ENV = "ONNX_PRUNE_PATH"
# onnxruntime's int8 dynamic quantization is not exact: its result must be within this fraction of
# the largest |Y|.
ORT_INT8_TOLERANCE = 0.05
# Real activations: the bundled MLP and test images; relu1 / relu2 are its two hidden layers' outputs.
MODEL_PATH = Path(__file__).resolve().parents[1] / "models" / "mnist-mlp.onnx"
IMAGES_PATH = Path(__file__).resolve().parents[1] / "models" / "mnist-test.npz"
ACTIVATIONS = {"relu1": "/relu1/Relu_output_0", "relu2": "/relu2/Relu_output_0"}


def forced_name(path: str) -> str:
    return f"{OURS}[{path}]"
OPSET = 17
IR_VERSION = 9


# ---------------------------------------------------------------------------- machine


def machine_info() -> dict:
    """What a reader needs to judge the numbers: onnx_prune.measure.machine's description, plus the
    versions of the other candidates and the library that ran."""
    import scipy

    return {**machine.machine_info(), "numpy": np.__version__, "scipy": scipy.__version__,
            "library": onnx_prune.get_library_path()}


# ---------------------------------------------------------------------------- the layer


@dataclass
class Layer:
    """A magnitude-pruned K x N weight: dense (zeros written out) and in the csr format."""

    weight: np.ndarray  # [K, N] float32, pruned entries zero
    csr: csr_format.CsrWeight
    sparsity: float
    int8: PackedWeight  # the same kept weights in format csr_int8
    bcsr: Optional[PackedWeight] = None  # with --block R: the same weights in R x 1 blocks
    bcsr_int8: Optional[PackedWeight] = None  # with --block R: those blocks in format bcsr_int8_dynamic

    @property
    def K(self) -> int:
        return self.csr.K

    @property
    def N(self) -> int:
        return self.csr.N


def make_layer(K: int, N: int, sparsity: float, seed: int, block: int = 0) -> Layer:
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((K, N)).astype(np.float32)
    mask = random_block_mask(K, N, sparsity, block, rng) if block else masking.magnitude_mask(weight, sparsity)
    weight = np.where(mask, weight, np.float32(0))
    return Layer(weight=weight, csr=csr_format.dense_to_csr(weight, mask), sparsity=sparsity,
                 int8=formats.value_choices()["int8"][0].pack(weight, mask, np.int8),
                 bcsr=bcsr_format.dense_to_bcsr(weight, mask, block) if block else None,
                 bcsr_int8=formats.get("bcsr_int8_dynamic").pack(weight, mask) if block else None)


def random_block_mask(K: int, N: int, sparsity: float, R: int, rng: np.random.Generator) -> np.ndarray:
    """Keeps round((1 - sparsity) * blocks) random R x 1 blocks (R outputs x one input): speed does
    not depend on which blocks are kept."""
    rows = -(-N // R)
    kept = np.zeros(K * rows, dtype=bool)
    kept[rng.permutation(K * rows)[:round((1 - sparsity) * K * rows)]] = True
    return np.repeat(kept.reshape(K, rows), R, axis=1)[:, :N]


def finish_model(nodes: list, inputs: list, initializers: list, domains: Sequence[tuple[str, int]]) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "bench_layer", inputs, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
                              initializer=initializers)
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, v) for d, v in domains]
    return helper.make_model(graph, ir_version=IR_VERSION, opset_imports=opsets)


def x_input(K: int):
    return helper.make_tensor_value_info("X", TensorProto.FLOAT, ["M", K])


def sparse_gemm_model(packed: PackedWeight) -> onnx.ModelProto:
    names = list(formats.get(packed.format).tensor_names)
    inits = [numpy_helper.from_array(a, n) for n, a in zip(names, packed.tensors)]
    node = helper.make_node(contract.OP_TYPE, ["X", *names], ["Y"], name="layer", domain=contract.DOMAIN,
                            **{contract.ATTR_K: packed.K, contract.ATTR_N: packed.N, contract.ATTR_NNZ: packed.nnz,
                               contract.ATTR_FORMAT: packed.format})
    return finish_model([node], [x_input(packed.K)], inits, [(contract.DOMAIN, contract.OP_VERSION)])


def dense_gemm_model(layer: Layer) -> onnx.ModelProto:
    node = helper.make_node("Gemm", ["X", "W"], ["Y"], name="layer")
    return finish_model([node], [x_input(layer.K)], [numpy_helper.from_array(layer.weight, "W")], [])


def int8_dynamic_model(layer: Layer) -> onnx.ModelProto:
    """The dense layer as a MatMul, quantized by onnxruntime.quantization.quantize_dynamic (int8
    weights, activations quantized per call), as a user would try instead of pruning."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    node = helper.make_node("MatMul", ["X", "W"], ["Y"], name="layer")
    model = finish_model([node], [x_input(layer.K)], [numpy_helper.from_array(layer.weight, "W")], [])
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "dense.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(src))
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process, printed per model
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def sparse_to_dense_model(layer: Layer) -> onnx.ModelProto:
    """Y = (Wᵀ · Xᵀ)ᵀ: the op takes the sparse operand on the left, so it gets Wᵀ [N, K] (CSR) and
    X with transB = 1, and a Transpose gives Y [M, N] like the other candidates. Wᵀ is a graph input
    of sparse-tensor type: onnxruntime densifies a sparse_initializer at load, which the op rejects."""
    sparse_w = helper.make_value_info("Wt", helper.make_sparse_tensor_type_proto(TensorProto.FLOAT, [layer.N, layer.K]))
    nodes = [helper.make_node("SparseToDenseMatMul", ["Wt", "X"], ["Yt"], name="layer", domain="com.microsoft",
                              transB=1),
             helper.make_node("Transpose", ["Yt"], ["Y"], name="to_rows", perm=[1, 0])]
    return finish_model(nodes, [sparse_w, x_input(layer.K)], [], [("com.microsoft", 1)])


# ---------------------------------------------------------------------------- inputs


def captured_activations(which: str) -> np.ndarray:
    """The bundled MLP's post-ReLU activations `which` (relu1 / relu2) for every test image,
    [images, 1000]: the hidden tensor is exposed as an extra graph output and run in onnxruntime."""
    import onnxruntime as ort

    model = onnx.load(str(MODEL_PATH))
    model.graph.output.append(helper.make_tensor_value_info(ACTIVATIONS[which], TensorProto.FLOAT, None))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    images = np.load(IMAGES_PATH)["input"].astype(np.float32)
    return sess.run([ACTIVATIONS[which]], {model.graph.input[0].name: images})[0]


def make_input(batch: int, K: int, seed: int, zero_prob: float, activations: Optional[np.ndarray]) -> np.ndarray:
    """X [batch, K]: consecutive rows of `activations` from a seeded start (wrapping around), or
    standard normal entries each set to zero with probability zero_prob."""
    rng = np.random.default_rng(seed + batch)
    if activations is not None:
        start = int(rng.integers(len(activations)))
        return np.ascontiguousarray(activations[(start + np.arange(batch)) % len(activations)])
    x = rng.standard_normal((batch, K)).astype(np.float32)
    x[rng.random((batch, K)) < zero_prob] = 0.0
    return x


def zero_stats(x: np.ndarray) -> dict:
    """Fraction of zero entries, and of rows of W (columns of X) zero across each 32-row tile."""
    tiles = [x[i:i + 32] for i in range(0, len(x), 32)]
    return {"zero": float((x == 0).mean()),
            "zero_rows_per_tile": float(np.mean([(t == 0).all(axis=0).mean() for t in tiles]))}


# ---------------------------------------------------------------------------- candidates


@dataclass
class Candidate:
    name: str
    run: Optional[Callable[[], np.ndarray]] = None  # one call, returns Y [M, N]
    problem: Optional[str] = None  # why it cannot be timed
    weight: Optional[np.ndarray] = None  # the W it computes with, when not the layer's (int8: dequantized)


def session(model: onnx.ModelProto, threads: int, forced_path: Optional[str] = None):
    """`forced_path` sets ONNX_PRUNE_PATH while the session creates (and packs) its kernel only."""
    import onnxruntime as ort

    options = onnx_prune.session_options(threads, log_severity_level=3)  # no shape-inference warnings
    options.inter_op_num_threads = 1
    old = os.environ.get(PATH_ENV)
    if forced_path is not None:
        os.environ[PATH_ENV] = forced_path
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    finally:
        if forced_path is not None:
            if old is None:
                os.environ.pop(PATH_ENV)
            else:
                os.environ[PATH_ENV] = old


def ort_candidate(name: str, build: Callable[[], tuple[object, dict]], weight: Optional[np.ndarray] = None
                  ) -> Candidate:
    """A candidate run the way applications call onnxruntime from Python: InferenceSession.run with
    numpy inputs (its per-call cost is measured separately, see call_floor_us)."""
    try:
        sess, feeds = build()
    except Exception as exc:  # onnxruntime's own exception types
        return Candidate(name, problem=f"session creation failed: {one_line(exc)}")

    def run() -> np.ndarray:
        return sess.run(["Y"], feeds)[0]

    return Candidate(name, run=run, weight=weight)


def make_candidates(layer: Layer, x: np.ndarray, threads: int, sessions: dict, paths: Sequence[str] = ()) -> list[Candidate]:
    """The candidates for input x (plus SparseGemm with each of `paths` forced); `sessions` caches the
    sessions of this layer and thread count."""
    import onnxruntime as ort
    import scipy.sparse

    def ours():
        if OURS not in sessions:
            sessions[OURS] = session(sparse_gemm_model(layer.csr), threads)
        return sessions[OURS], {"X": x}

    def ours_int8():
        if INT8 not in sessions:
            sessions[INT8] = session(sparse_gemm_model(layer.int8), threads)
        return sessions[INT8], {"X": x}

    def dense():
        if DENSE not in sessions:
            sessions[DENSE] = session(dense_gemm_model(layer), threads)
        return sessions[DENSE], {"X": x}

    def ort_int8():
        if ORT_INT8 not in sessions:
            sessions[ORT_INT8] = session(int8_dynamic_model(layer), threads)
        return sessions[ORT_INT8], {"X": x}

    def forced(path: str):
        def build():
            if forced_name(path) not in sessions:
                sessions[forced_name(path)] = session(sparse_gemm_model(layer.csr), threads, forced_path=path)
            return sessions[forced_name(path)], {"X": x}
        return build

    def s2d():
        if S2D not in sessions:
            wt = scipy.sparse.csr_matrix(layer.weight.T)
            tensor = ort.SparseTensor.sparse_csr_from_numpy(
                np.array([layer.N, layer.K], dtype=np.int64), wt.data.astype(np.float32),
                wt.indices.astype(np.int64), wt.indptr.astype(np.int64), ort.OrtDevice.make("cpu", 0))
            # The sparse weight is made once, as a constant would be; the tensor keeps its buffers alive.
            sessions[S2D] = (session(sparse_to_dense_model(layer), threads),
                             ort.OrtValue.ort_value_from_sparse_tensor(tensor), tensor, wt)
        sess, w_value = sessions[S2D][:2]
        return sess, {"Wt": w_value, "X": x}

    if SCIPY not in sessions:
        sessions[SCIPY] = scipy.sparse.csr_matrix(layer.weight.T)  # CSR of Wᵀ, as our format
    wt_csr = sessions[SCIPY]

    def scipy_run() -> np.ndarray:
        return np.ascontiguousarray((wt_csr @ x.T).T)  # Y [M, N] row-major, like the others

    def bcsr():
        if BCSR not in sessions:
            sessions[BCSR] = session(sparse_gemm_model(layer.bcsr), threads)
        return sessions[BCSR], {"X": x}

    def bcsr_int8():
        if BCSR_INT8 not in sessions:
            sessions[BCSR_INT8] = session(sparse_gemm_model(layer.bcsr_int8), threads)
        return sessions[BCSR_INT8], {"X": x}

    blocked = ([ort_candidate(BCSR, bcsr), ort_candidate(BCSR_INT8, bcsr_int8, layer.bcsr_int8.to_dense())]
               if layer.bcsr is not None else [])
    return ([ort_candidate(OURS, ours), ort_candidate(INT8, ours_int8, layer.int8.to_dense()),
             ort_candidate(DENSE, dense), ort_candidate(ORT_INT8, ort_int8), ort_candidate(S2D, s2d),
             Candidate(SCIPY, run=scipy_run)] + blocked
            + [ort_candidate(forced_name(p), forced(p)) for p in paths])


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def verify(candidate: Candidate, x: np.ndarray, layer: Layer) -> None:
    """Marks the candidate unusable when its result differs from the float64 reference."""
    if candidate.run is None:
        return
    weight = layer.weight if candidate.weight is None else candidate.weight
    expected = x.astype(np.float64) @ weight.astype(np.float64)
    try:
        y = candidate.run()
    except Exception as exc:
        candidate.run, candidate.problem = None, f"run failed: {one_line(exc)}"
        return
    scale = float((np.abs(x).astype(np.float64) @ np.abs(weight).astype(np.float64)).max(initial=0.0))
    tol = 1e-5 * float(np.abs(expected).max(initial=0.0)) + 4 * np.finfo(np.float32).eps * np.sqrt(layer.K) * scale
    if candidate.name in (ORT_INT8, BCSR_INT8):  # activations quantized per call: close, not exact
        tol = ORT_INT8_TOLERANCE * float(np.abs(expected).max(initial=0.0))
    if y.shape != expected.shape:
        candidate.run, candidate.problem = None, f"wrong shape {list(y.shape)}, expected {list(expected.shape)}"
    elif not np.all(np.abs(y - expected) <= tol):
        err = float(np.nanmax(np.abs(y - expected)))
        candidate.run, candidate.problem = None, f"wrong result (max error {err:.3g} > {tol:.3g})"


# ---------------------------------------------------------------------------- timing


def time_candidates(candidates: Sequence[Candidate], *, rounds: int, warmup: int, block_s: float) -> dict:
    """name -> {"us": median µs per call, "rounds": per-round median seconds} for every runnable
    candidate, timed in interleaved rounds by onnx_prune.measure.timing."""
    live = [c for c in candidates if c.run is not None]
    if not live:
        return {}
    t = timing.time_interleaved([c.run for c in live], rounds=rounds, warmup=warmup, block_seconds=block_s)
    return {c.name: {"us": t.seconds[i] * 1e6, "rounds": [r[i] for r in t.round_medians]}
            for i, c in enumerate(live)}


def ratio(timings: dict, other: str, ours: str = OURS) -> Optional[float]:
    """Median over rounds of other / ours (> 1: ours is faster)."""
    if other not in timings or ours not in timings:
        return None
    return statistics.median(o / s for o, s in zip(timings[other]["rounds"], timings[ours]["rounds"]))


def call_floor_us(threads: int, rounds: int, block_s: float) -> float:
    """onnxruntime's fixed cost per call here: an Identity model on a 1 x 1000 input."""
    model = finish_model([helper.make_node("Identity", ["X"], ["Y"])], [x_input(1000)], [], [])
    sess = session(model, threads)
    feeds = {"X": np.zeros((1, 1000), np.float32)}
    floor = Candidate("floor", run=lambda: sess.run(["Y"], feeds)[0])
    return time_candidates([floor], rounds=rounds, warmup=20, block_s=block_s)["floor"]["us"]


# ---------------------------------------------------------------------------- driver


@dataclass
class Row:
    sparsity: float
    batch: int
    threads: int
    nnz: int
    us: dict  # candidate -> µs per call (absent: not timed)
    ratios: dict  # "<candidate>/ours" for every other candidate -> value or None
    problems: dict = field(default_factory=dict)  # candidate -> why it was not timed
    inputs: dict = field(default_factory=dict)  # zero_stats of X


def bench(K: int, N: int, sparsities: Sequence[float], batches: Sequence[int], threads: Sequence[int], *,
          rounds: int, warmup: int, block_s: float, seed: int, progress: Callable[[str], None],
          zero_prob: float = 0.0, activations: Optional[np.ndarray] = None, paths: Sequence[str] = (),
          block: int = 0) -> list[Row]:
    rows = []
    for sparsity in sparsities:
        layer = make_layer(K, N, sparsity, seed, block)
        for n_threads in threads:
            sessions: dict = {}
            for batch in batches:
                progress(f"sparsity {sparsity}, batch {batch}, {n_threads} thread(s)")
                x = make_input(batch, K, seed, zero_prob, activations)
                candidates = make_candidates(layer, x, n_threads, sessions, paths)
                for c in candidates:
                    verify(c, x, layer)
                timings = time_candidates(candidates, rounds=rounds, warmup=warmup, block_s=block_s)
                ratios = {f"{c.name}/ours": ratio(timings, c.name) for c in candidates[1:]}
                if block:
                    ratios.update({key: ratio(timings, other, blocked) for key, (other, blocked) in BLOCK_RATIOS.items()})
                rows.append(Row(sparsity=sparsity, batch=batch, threads=n_threads, nnz=layer.csr.nnz,
                                us={name: t["us"] for name, t in timings.items()}, ratios=ratios,
                                problems={c.name: c.problem for c in candidates if c.problem},
                                inputs=zero_stats(x)))
    return rows


def parse_threads(values: Sequence[str]) -> list[int]:
    out: list[int] = []
    for v in values:
        n = (os.cpu_count() or 1) if v == "all" else int(v)
        if n < 1:
            raise SystemExit(f"--threads takes positive numbers or 'all', got {v}")
        if n not in out:
            out.append(n)
    return out


def column_names(rows: Sequence[Row]) -> list[str]:
    """Candidates in table order: the fixed ones, then any forced paths that appear."""
    seen = {name for r in rows for name in list(r.us) + list(r.problems)}
    return [c for c in CANDIDATES if c in seen or any(f"{c}/ours" in r.ratios for r in rows)] + \
        [forced_name(p) for p in PATHS if forced_name(p) in seen]


def short(name: str) -> str:
    if name in SHORT:
        return SHORT[name]
    return "ours[" + name[len(OURS) + 1:-1].replace("input_stationary", "is") + "]"


def extra_ratio_keys(rows: Sequence[Row]) -> list[str]:
    """Ratios beside the "<candidate>/ours" ones that these rows carry (dense/bcsr with --block)."""
    return [key for key in BLOCK_RATIOS if any(key in r.ratios for r in rows)]


def ratio_headers(rows: Sequence[Row], names: Sequence[str]) -> list[str]:
    return [f"{short(c)}/ours" for c in names[1:]] + extra_ratio_keys(rows)


def table_cells(r: Row, names: Sequence[str], extra: Sequence[str], fmt_ratio: Callable[[Optional[float]], str]) -> list[str]:
    cells = [f"{r.us[c]:.1f}" if c in r.us else "n/a" for c in names]
    return cells + [fmt_ratio(r.ratios.get(f"{c}/ours")) for c in names[1:]] + [fmt_ratio(r.ratios.get(k)) for k in extra]


def print_report(rows: Sequence[Row], machine: dict, settings: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    names = column_names(rows)
    console = Console(width=max(Console().width, 160))
    table = Table(title=f"SparseGemm kernel, K x N = {settings['K']} x {settings['N']}, inputs: {settings['inputs']}: "
                        f"median µs per call (ratio > 1: SparseGemm faster)")
    extra = extra_ratio_keys(rows)
    for column in (["threads", "sparsity", "batch", "X zero", "rows zero/tile"] + [f"{short(c)} µs" for c in names]
                   + ratio_headers(rows, names)):
        table.add_column(escape(column), justify="right")
    previous_threads = None
    for r in rows:
        if previous_threads is not None and r.threads != previous_threads:
            table.add_section()
        previous_threads = r.threads
        table.add_row(str(r.threads), f"{r.sparsity:g}", str(r.batch), f"{r.inputs['zero']:.0%}",
                      f"{r.inputs['zero_rows_per_tile']:.0%}", *table_cells(r, names, extra, format_ratio))
    console.print(table)
    problems = sorted({(name, why) for r in rows for name, why in r.problems.items()})
    for name, why in problems:
        console.print(f"[yellow]{name} not timed:[/yellow] {why}")
    console.print(f"machine: {machine['cpu']} · {machine['cores']} cores · SIMD {', '.join(machine['simd']) or 'none'}")
    console.print(f"onnxruntime {machine['onnxruntime']} · numpy {machine['numpy']} · scipy {machine['scipy']} · "
                  f"kernel ISA {machine['kernel_isa']}")
    console.print(f"ours = {OURS} (this library, csr fp32, path chosen per call) · int8 = the same weights in "
                  f"csr_int8 · dense = onnxruntime {DENSE} · ort-int8 = onnxruntime quantize_dynamic of the dense layer (int8 weights; checked to "
                  f"{ORT_INT8_TOLERANCE:.0%} of max |Y|) · s2d = onnxruntime com.microsoft.{S2D} (Wᵀ as a CSR "
                  f"sparse-tensor input, plus a Transpose to [M, N]) · scipy = {SCIPY} @ dense, in-process, "
                  f"single-threaded · ours\\[p] = {OURS} with {PATH_ENV}=p (is: input_stationary)")
    if settings.get("block"):
        console.print(f"bcsr = {BCSR} (format bcsr, {settings['block']} x 1 blocks); with --block every candidate "
                      f"runs the same random {settings['block']} x 1 block-masked weights")
    console.print(f"onnxruntime per-call floor (Identity model, 1 thread): {settings['call_floor_us']:.1f} µs · "
                  f"{settings['rounds']} rounds of ~{settings['block_ms']:g} ms per candidate · command: "
                  f"{settings['command']}")


def markdown_table(rows: Sequence[Row]) -> str:
    """The result as a markdown table (for docs/bench_kernel.md)."""
    names = column_names(rows)
    extra = extra_ratio_keys(rows)
    header = ["threads", "sparsity", "batch", "X zero"] + [f"{short(c)} µs" for c in names] + ratio_headers(rows, names)
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for r in rows:
        cells = table_cells(r, names, extra, lambda v: f"{v:.2f}x" if v is not None else "n/a")
        lines.append(f"| {r.threads} | {r.sparsity:g} | {r.batch} | {r.inputs['zero']:.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_ratio(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    color = "green" if value >= 1.0 else "red"
    return f"[{color}]{value:.2f}x[/{color}]"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--k", type=int, default=1000, help="inner dimension K (default 1000)")
    p.add_argument("--n", type=int, default=1000, help="output features N (default 1000)")
    p.add_argument("--sparsity", type=float, nargs="+", help=f"default {' '.join(map(str, SPARSITIES))}")
    p.add_argument("--batch", type=int, nargs="+", help=f"default {' '.join(map(str, BATCHES))}")
    p.add_argument("--threads", nargs="+", default=["1", "all"], help="intra-op threads: numbers or 'all' (default 1 all)")
    p.add_argument("--rounds", type=int, help="timing rounds per candidate (default 9, quick 5)")
    p.add_argument("--block-ms", type=float, help="milliseconds of calls per round and candidate (default 20, quick 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--block", type=int, default=0, choices=(0, *bcsr_format.BLOCK_SIZES), metavar="R",
                   help="prune with a random R x 1 block mask and time the bcsr format too (R: 4 or 8)")
    p.add_argument("--quick", action="store_true", help="a short run: fewer sparsities, batches, rounds")
    p.add_argument("--zero-prob", type=float, default=0.0, metavar="P",
                   help="set each input entry to zero with probability P (default 0)")
    p.add_argument("--inputs", choices=["random", *ACTIVATIONS], default="random",
                   help="random (standard normal, see --zero-prob) or the bundled MNIST MLP's real post-ReLU "
                        "activations after its first / second hidden layer (K = 1000)")
    p.add_argument("--paths", action="store_true", help=f"also time SparseGemm with each kernel path forced "
                                                        f"({', '.join(PATHS)})")
    p.add_argument("--json", metavar="PATH", help="also save the results as JSON")
    p.add_argument("--markdown", metavar="PATH", help="also save the table as markdown")
    args = p.parse_args(argv)
    args.sparsity = args.sparsity or list(QUICK_SPARSITIES if args.quick else SPARSITIES)
    args.batch = args.batch or list(QUICK_BATCHES if args.quick else BATCHES)
    args.rounds = args.rounds or (5 if args.quick else 9)
    args.block_ms = args.block_ms or (5.0 if args.quick else 20.0)
    if args.k < 1 or args.n < 1 or any(b < 1 for b in args.batch) or not all(0 <= s < 1 for s in args.sparsity):
        p.error("--k, --n and --batch must be positive and every --sparsity in [0, 1)")
    if not 0 <= args.zero_prob <= 1:
        p.error("--zero-prob must be in [0, 1]")
    if args.inputs != "random" and (args.k != 1000 or args.zero_prob):
        p.error(f"--inputs {args.inputs} gives 1000 features: use --k 1000 (the default) and no --zero-prob")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    from rich.console import Console

    args = parse_args(argv)
    threads = parse_threads(args.threads)
    try:
        machine = machine_info()
    except onnx_prune.OnnxPruneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    err = Console(stderr=True)
    activations = None if args.inputs == "random" else captured_activations(args.inputs)
    rows = bench(args.k, args.n, args.sparsity, args.batch, threads, rounds=args.rounds, warmup=5,
                 block_s=args.block_ms / 1000, seed=args.seed, progress=lambda m: err.print(f"[dim]timing {m}…[/dim]"),
                 zero_prob=args.zero_prob, activations=activations, paths=PATHS if args.paths else (), block=args.block)
    inputs = args.inputs if args.inputs != "random" else f"standard normal, zero with probability {args.zero_prob:g}"
    settings = {"K": args.k, "N": args.n, "sparsities": args.sparsity, "batches": args.batch, "threads": threads,
                "inputs": inputs, "paths": args.paths, "block": args.block,
                "rounds": args.rounds, "block_ms": args.block_ms, "seed": args.seed,
                "command": " ".join([Path(sys.argv[0]).name] + list(argv if argv is not None else sys.argv[1:])),
                "call_floor_us": call_floor_us(1, args.rounds, args.block_ms / 1000)}
    print_report(rows, machine, settings)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "settings": settings,
                                               "rows": [asdict(r) for r in rows]}, indent=2))
        err.print(f"saved {args.json}")
    if args.markdown:
        Path(args.markdown).write_text(markdown_table(rows) + "\n")
        err.print(f"saved {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
