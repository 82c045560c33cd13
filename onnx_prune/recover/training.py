"""Training the kept weights of the pruned layers toward the dense model (distillation, no labels).

The student is the input graph (torch_graph.TorchGraph) whose pruned layers read trainable weights
with their masks fixed, plus a trainable bias delta added where each layer's bias is applied; the
teacher is the same graph with the dense weights. The loss compares their graph outputs on the
calibration inputs; a held-out slice of the inputs picks the best epoch and stops the training
early. Everything runs in fp32 before the weights are packed, so every pattern, scope, values and
quantize setting gets the same recovery.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Collection, Mapping, Optional, Sequence

import numpy as np
import onnx
import torch

from ..check.fidelity import mean_cosine, score_outputs, top1_agreement
from ..errors import OnnxPruneError
from ..sparse_gemm.rewrite import PrunedLayer
from .options import EPOCH_SUMMARY, STEP_PREFIX, RecoverOptions, RecoveryReport
from .torch_graph import TorchGraph, unsupported_ops

Progress = Callable[[str, int, int], None]
TEACHER_CACHE_BYTES = 512 * 2**20  # dense outputs kept for all samples when they fit; else recomputed per batch
FAITHFUL_TOLERANCE = 1e-3  # relative error the torch graph may show against onnxruntime on the dense model


@dataclass
class _Trainable:
    """One pruned layer's trainable tensors: the weight as the model stores it, its mask, and the
    bias delta added to the output that carries the layer's bias (None: the bias is computed)."""

    pruned: PrunedLayer
    weight: torch.nn.Parameter
    mask: torch.Tensor
    delta: Optional[torch.nn.Parameter]


def check_convertible(model: onnx.ModelProto) -> None:
    """One line naming the first op the torch converter cannot run."""
    missing = unsupported_ops(model)
    if missing:
        op, node = missing[0]
        more = f" (and {len(missing) - 1} more nodes)" if len(missing) > 1 else ""
        raise OnnxPruneError(f"--recover cannot convert op {op} (node {node}) to torch{more}; "
                             "prune without --recover")


def recover(model: onnx.ModelProto, pruned: Sequence[PrunedLayer], data: Mapping[str, np.ndarray],
            options: RecoverOptions, progress: Optional[Progress] = None) -> RecoveryReport:
    """Train ``pruned``'s kept weights and biases in place (``p.weight``, ``p.bias``) so that the
    pruned model's outputs match ``model``'s (the dense input) on ``data``; return what happened.
    The weights of the best held-out epoch are kept; the one-shot ones when no epoch beat them."""
    started = time.perf_counter(), time.process_time()
    check_convertible(model)
    threads = torch.get_num_threads()
    if options.threads:
        torch.set_num_threads(options.threads)
    try:
        return _train(model, pruned, data, options, progress, started)
    finally:
        torch.set_num_threads(threads)


def _train(model: onnx.ModelProto, pruned: Sequence[PrunedLayer], data: Mapping[str, np.ndarray],
           options: RecoverOptions, progress: Optional[Progress], started: tuple[float, float]) -> RecoveryReport:
    """recover's work, with torch's thread count set."""
    samples = len(next(iter(data.values())))
    train_idx, held_idx = _split(samples, options)
    trainables = [_trainable(model, p) for p in pruned]
    hidden = _layer_outputs(model, trainables) if options.layer_weight > 0 else []
    teacher = TorchGraph(model, extra_outputs=hidden).eval()
    student = TorchGraph(model, replace_inputs=_weight_inputs(model, trainables),
                         add_to_outputs=_bias_outputs(model, trainables), extra_outputs=hidden).eval()
    losses = _Losses(model, teacher.output_names, options.loss, hidden, options.layer_weight)
    shown = len(model.graph.output)  # fidelity is reported for the graph outputs
    scores = score_outputs(model.graph)  # with a top-1 agreement where they are a classifier's
    targets = _Targets(teacher, data, options.batch_size)
    _check_faithful(model, teacher, data, held_idx[:options.batch_size])

    def held_out_outputs() -> tuple[list[np.ndarray], list[np.ndarray]]:
        with torch.no_grad():
            got, want = [], []
            for idx in _batches(held_idx, options.batch_size):
                got.append([t.numpy() for t in student(_feeds(data, idx))])
                want.append([t.numpy() for t in targets.get(idx)])
        return [np.concatenate(g) for g in zip(*got)], [np.concatenate(w) for w in zip(*want)]

    def held_out_loss(outputs: tuple[list[np.ndarray], list[np.ndarray]]) -> float:
        got, want = outputs
        return float(losses(_tensors(got), _tensors(want)))

    before = held_out_outputs()
    report = RecoveryReport(train_samples=len(train_idx), held_out_samples=len(held_idx),
                            fidelity_before=fidelity(losses.names[:shown], *(o[:shown] for o in before), scores), held_out_loss_before=held_out_loss(before))
    best_loss, best_state, best_epoch, stale = report.held_out_loss_before, _state(trainables), 0, 0
    params = [t.weight for t in trainables] + [t.delta for t in trainables if t.delta is not None]
    optimizer = torch.optim.Adam(params, lr=options.lr)
    per_epoch = max(1, -(-len(train_idx) // options.batch_size))
    total = min(options.epochs * per_epoch, options.steps or options.epochs * per_epoch)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + np.cos(np.pi * min(step, total) / total)))
    rng = np.random.default_rng(options.seed)
    step, epoch = 0, 0
    while step < total and stale < options.patience:
        epoch += 1
        running = []
        for idx in _batches(rng.permutation(train_idx), options.batch_size):
            if step >= total:
                break
            loss = losses(student(_feeds(data, idx)), targets.get(idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _mask_gradients(trainables)
            optimizer.step()
            schedule.step()
            _apply_masks(trainables)
            step += 1
            running.append(float(loss.detach()))
            if progress is not None:
                progress(f"{STEP_PREFIX} {epoch}, loss {np.mean(running[-20:]):.4g}", step, total)
        current = held_out_loss(held_out_outputs())
        report.epochs.append({"epoch": epoch, "steps": step, "train_loss": float(np.mean(running)),
                              "held_out_loss": current})
        if progress is not None:
            progress(f"{STEP_PREFIX} {epoch}, loss {np.mean(running):.4g}, {EPOCH_SUMMARY} {current:.4g} "
                     f"(one-shot {report.held_out_loss_before:.4g})", step, total)
        if current < best_loss:
            best_loss, best_state, best_epoch, stale = current, _state(trainables), epoch, 0
        else:
            stale += 1
    _load_state(trainables, best_state)
    after = held_out_outputs()
    report.steps, report.best_epoch, report.stopped_early = step, best_epoch, step < total
    report.fidelity_after, report.held_out_loss_after = fidelity(losses.names[:shown], *(o[:shown] for o in after), scores), held_out_loss(after)
    _write_back(trainables)
    report.seconds = time.perf_counter() - started[0]
    report.cpu_seconds = time.process_time() - started[1]
    return report


# ----------------------------------------------------------------------------- the student's tensors

def _trainable(model: onnx.ModelProto, p: PrunedLayer) -> _Trainable:
    layer = p.layer
    stored = p.weight.T if layer.trans_b else p.weight  # the orientation the node reads
    mask = p.mask.T if layer.trans_b else p.mask
    weight = torch.nn.Parameter(torch.from_numpy(np.ascontiguousarray(stored, dtype=np.float32)))
    delta = None
    if _bias_trainable(layer):
        delta = torch.nn.Parameter(torch.zeros(layer.N, dtype=torch.float32))
    return _Trainable(p, weight, torch.from_numpy(np.ascontiguousarray(mask)), delta)


def _bias_trainable(layer) -> bool:
    """A bias can absorb a trained delta where it is a constant (or absent) and scaled by beta != 0."""
    return (layer.bias is not None or layer.bias_name is None) and layer.beta != 0


def _weight_inputs(model: onnx.ModelProto, trainables: Sequence[_Trainable]) -> dict[tuple[str, int], torch.Tensor]:
    """(node, input index) -> tensor: each layer's weight, and its compensated bias where the
    one-shot method changed it."""
    nodes = {n.name: n for n in model.graph.node}
    replaced = {}
    for t in trainables:
        layer, p = t.pruned.layer, t.pruned
        replaced[(layer.node, 1)] = t.weight
        if p.bias is not None and layer.bias_name is not None:
            bias_node = nodes[layer.add_node or layer.node]
            index = list(bias_node.input).index(layer.bias_name, 1 if layer.add_node is None else 0)
            replaced[(bias_node.name, index)] = torch.from_numpy(np.asarray(p.bias, dtype=np.float32))
    return replaced


def _layer_outputs(model: onnx.ModelProto, trainables: Sequence[_Trainable]) -> list[str]:
    """Each pruned layer's output with its bias (before a fused Relu), matched with layer_weight;
    not the graph outputs (matched already)."""
    nodes = {n.name: n for n in model.graph.node}
    outputs = {o.name for o in model.graph.output}
    names = [nodes[t.pruned.layer.add_node or t.pruned.layer.node].output[0] for t in trainables]
    return [n for n in names if n not in outputs]


def _bias_outputs(model: onnx.ModelProto, trainables: Sequence[_Trainable]) -> dict[str, torch.Tensor]:
    """Output tensor -> bias delta, added where the layer's bias is (or would be) applied: the
    Gemm, the fused Add, or the MatMul itself; before any fused Relu."""
    nodes = {n.name: n for n in model.graph.node}
    return {nodes[t.pruned.layer.add_node or t.pruned.layer.node].output[0]: t.delta
            for t in trainables if t.delta is not None}


def _mask_gradients(trainables: Sequence[_Trainable]) -> None:
    for t in trainables:
        if t.weight.grad is not None:
            t.weight.grad.mul_(t.mask)


def _apply_masks(trainables: Sequence[_Trainable]) -> None:
    """Pruned weights exactly zero again (Adam's update of a zero gradient is zero; this makes it certain)."""
    with torch.no_grad():
        for t in trainables:
            t.weight.masked_fill_(~t.mask, 0.0)


def _state(trainables: Sequence[_Trainable]) -> list[tuple[torch.Tensor, Optional[torch.Tensor]]]:
    return [(t.weight.detach().clone(), None if t.delta is None else t.delta.detach().clone()) for t in trainables]


def _load_state(trainables: Sequence[_Trainable], state) -> None:
    with torch.no_grad():
        for t, (weight, delta) in zip(trainables, state):
            t.weight.copy_(weight)
            if delta is not None:
                t.delta.copy_(delta)


def _write_back(trainables: Sequence[_Trainable]) -> None:
    """The trained weight [K, N] (zeros where pruned) and the bias as the node reads it: the
    one-shot bias (or the model's) plus delta / beta."""
    for t in trainables:
        p, layer = t.pruned, t.pruned.layer
        stored = t.weight.detach().numpy()
        weight = np.ascontiguousarray(stored.T if layer.trans_b else stored, dtype=np.float32)
        if np.any(weight[~p.mask]):
            raise OnnxPruneError(f"internal error: recovery changed pruned weights of layer {layer.node}")
        p.weight = weight
        if t.delta is not None:
            p.bias = _new_bias(layer, p.bias, t.delta.detach().numpy().astype(np.float64) / layer.beta)


def _new_bias(layer, current: Optional[np.ndarray], shift: np.ndarray) -> np.ndarray:
    """C + shift, shaped [N] (or [M, N] when C has M > 1 rows), as bias.updated shapes it."""
    base = current if current is not None else layer.bias
    if base is None:
        return shift.astype(np.float32)
    c = np.asarray(base, dtype=np.float64)
    if c.ndim == 2 and c.shape[0] > 1:
        return (np.broadcast_to(c, (c.shape[0], layer.N)) + shift[None, :]).astype(np.float32)
    return (np.broadcast_to(c.reshape(-1), (layer.N,)) + shift).astype(np.float32)


# ----------------------------------------------------------------------------- data and targets

def _split(samples: int, options: RecoverOptions) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) sample indices from a seeded permutation."""
    if samples < 2:
        raise OnnxPruneError(f"--recover needs at least 2 calibration samples (one held out), got {samples}")
    held = min(samples - 1, max(1, int(round(samples * options.held_out))))
    order = np.random.default_rng(options.seed).permutation(samples)
    return np.sort(order[held:]), np.sort(order[:held])


def _batches(indices: np.ndarray, size: int):
    for start in range(0, len(indices), size):
        yield indices[start:start + size]


def _feeds(data: Mapping[str, np.ndarray], idx: np.ndarray) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(np.ascontiguousarray(array[idx])) for name, array in data.items()}


def _tensors(arrays: Sequence[np.ndarray]) -> list[torch.Tensor]:
    return [torch.from_numpy(a) for a in arrays]


class _Targets:
    """The dense model's outputs for a batch of sample indices: computed once for all samples
    when they fit in TEACHER_CACHE_BYTES, else recomputed per batch (bounded memory)."""

    def __init__(self, teacher: TorchGraph, data: Mapping[str, np.ndarray], batch_size: int) -> None:
        self.teacher, self.data = teacher, data
        samples = len(next(iter(data.values())))
        with torch.no_grad():
            first = teacher(_feeds(data, np.arange(min(batch_size, samples))))
        per_sample = sum(t.numel() * t.element_size() for t in first) / max(1, min(batch_size, samples))
        self.cache: Optional[list[np.ndarray]] = None
        if per_sample * samples <= TEACHER_CACHE_BYTES:
            outputs = []
            for idx in _batches(np.arange(samples), batch_size):
                outputs.append([t.numpy() for t in self._compute(idx)])
            self.cache = [np.concatenate(o) for o in zip(*outputs)]

    def _compute(self, idx: np.ndarray) -> list[torch.Tensor]:
        with torch.no_grad():
            return self.teacher(_feeds(self.data, idx))

    def get(self, idx: np.ndarray) -> list[torch.Tensor]:
        if self.cache is None:
            return self._compute(idx)
        return [torch.from_numpy(c[idx]) for c in self.cache]


def _check_faithful(model: onnx.ModelProto, teacher: TorchGraph, data: Mapping[str, np.ndarray],
                    idx: np.ndarray) -> None:
    """The torch graph computes what onnxruntime computes on the dense model (a converter that
    misreads an op would otherwise train toward the wrong target)."""
    from ..runtime.session import open_session, run

    feeds = {k: np.ascontiguousarray(v[idx]) for k, v in data.items()}
    session = open_session(model, library=False, error="--recover: onnxruntime cannot load the dense model")
    names = [o.name for o in model.graph.output]
    want = run(session, feeds, names)
    with torch.no_grad():
        got = [t.numpy() for t in teacher(_feeds(data, idx))]
    for name, g, w in zip(names, got, want):
        if not np.issubdtype(np.asarray(w).dtype, np.floating):
            continue
        error = _relative_error(g, w)
        if not error <= FAITHFUL_TOLERANCE:
            raise OnnxPruneError(f"--recover: the torch graph differs from onnxruntime on output '{name}' "
                                 f"(relative error {error:.1e}); prune without --recover")


# ----------------------------------------------------------------------------- loss and fidelity

class _Losses:
    """The distillation loss summed over the float outputs. auto: KL divergence for an output a
    Softmax / LogSoftmax produces (probabilities), mean squared error relative to the dense
    output's mean square otherwise (logits, embeddings, regression). kl: KL divergence, of the
    softmax over the last axis for outputs that are not probabilities already (logits). mse,
    cosine (1 - cosine per sample): for every float output."""

    def __init__(self, model: onnx.ModelProto, names: Sequence[str], kind: str, hidden: Sequence[str] = (),
                 hidden_weight: float = 0.0) -> None:
        producers = {o: n.op_type for n in model.graph.node for o in n.output}
        floats = {o.name for o in model.graph.output if o.type.tensor_type.elem_type in
                  (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)}
        self.names = list(names)
        self.kinds, self.weights = [], [hidden_weight if name in hidden else 1.0 for name in names]
        for name in names:
            if name in hidden:  # a pruned layer's output (layer_weight): mean squared error
                self.kinds.append("mse")
            elif name not in floats:
                self.kinds.append(None)
            else:
                probabilities = {"Softmax": "kl-probabilities", "LogSoftmax": "kl-log"}.get(producers.get(name, ""))
                if kind == "auto":
                    self.kinds.append(probabilities or "mse")
                else:  # kl: on the probabilities a Softmax made, else on the softmax of the outputs (logits)
                    self.kinds.append(probabilities or "kl-logits" if kind == "kl" else kind)

    def __call__(self, got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> torch.Tensor:
        total = torch.zeros(())
        for kind, weight, g, w in zip(self.kinds, self.weights, got, want):
            if kind is not None:
                total = total + weight * _loss(kind, g.float(), w.float())
        return total


def _loss(kind: str, got: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        return torch.mean((got - want) ** 2) / torch.mean(want ** 2).clamp_min(1e-12)
    if kind == "cosine":
        return torch.mean(1 - torch.nn.functional.cosine_similarity(got.reshape(len(got), -1),
                                                                    want.reshape(len(want), -1), dim=1))
    if kind == "kl-logits":
        log_got, log_want = torch.log_softmax(got, dim=-1), torch.log_softmax(want, dim=-1)
    elif kind == "kl-log":
        log_got, log_want = got, want
    else:
        log_got, log_want = torch.log(got.clamp_min(1e-12)), torch.log(want.clamp_min(1e-12))
    return torch.mean(torch.sum(log_want.exp() * (log_want - log_got), dim=-1))


def fidelity(names: Sequence[str], got: Sequence[np.ndarray], want: Sequence[np.ndarray],
             scores: Collection[str]) -> dict[str, dict]:
    """Per float output, how close the pruned model is to the dense one, as the prune report
    measures it (check.fidelity): the mean cosine along the last axis, the top-1 agreement of the
    ``scores`` outputs of a classifier's shape; and the relative error (Frobenius) of the whole."""
    result = {}
    for name, g, w in zip(names, got, want):
        if not np.issubdtype(w.dtype, np.floating):
            continue
        entry = {"cosine": mean_cosine(w, g), "relative_error": _relative_error(g, w)}
        agreement = top1_agreement(w, g) if name in scores else None
        if agreement is not None:
            entry["top1_agreement"] = agreement
        result[name] = entry
    return result


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    want64 = np.asarray(want, dtype=np.float64)
    return float(np.linalg.norm(np.asarray(got, dtype=np.float64) - want64) / max(np.linalg.norm(want64), 1e-30))
