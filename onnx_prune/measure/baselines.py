"""What a user who wants speed already has: onnxruntime's dynamic int8 quantization of the dense
model. ``bench --baseline`` and ``eval`` measure pruning against it, not only against dense.

A baseline is made from the dense model in a temporary folder, and its outputs are compared with
the dense model's before it is timed, so a broken quantization never shows up as a fast row.
"""
from __future__ import annotations

import logging
import os
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import onnx

from ..errors import OnnxPruneError, UsageError, first_line

# Max relative error (max |baseline - dense| / max |dense| per float output) an int8 model may
# show before its timing is refused. Dynamic int8 quantization loses about 1% on a few layers;
# ten times that means the quantized model computes something else.
INT8_TOLERANCE = 0.1
NONE = "none"


@dataclass(frozen=True)
class Baseline:
    name: str          # the --baseline value
    per_channel: bool  # onnxruntime's quantize_dynamic(per_channel=...); its default is False
    tolerance: float = INT8_TOLERANCE

    @property
    def label(self) -> str:
        """What it is, for the line under a table and the JSON."""
        default = " (onnxruntime's default)" if not self.per_channel else ""
        return (f"onnxruntime quantize_dynamic of the dense model, QInt8 weights, "
                f"per_channel={self.per_channel}{default}")

    def build(self, dense: onnx.ModelProto) -> onnx.ModelProto:
        return quantize_int8(dense, per_channel=self.per_channel)


BASELINES = {b.name: b for b in (Baseline("int8", per_channel=False), Baseline("int8-per-channel", per_channel=True))}


def names() -> list[str]:
    return list(BASELINES)


def parse(values: Sequence[str]) -> list[Baseline]:
    """--baseline values (repeatable or comma-separated; ``none`` for none) as Baselines, in order."""
    chosen: dict[str, Baseline] = {}
    for value in values:
        for name in filter(None, (v.strip().lower() for v in str(value).split(","))):
            if name == NONE:
                continue
            if name not in BASELINES:
                raise UsageError(f"--baseline takes {', '.join([*BASELINES, NONE])}, got '{name}'")
            chosen[name] = BASELINES[name]
    return list(chosen.values())


def quantize_int8(dense: onnx.ModelProto, *, per_channel: bool = False) -> onnx.ModelProto:
    """onnxruntime's ``quantize_dynamic(weight_type=QInt8)`` of ``dense`` (not modified)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..model.modelio import PROTOBUF_LIMIT, load_model

    big = dense.ByteSize() > PROTOBUF_LIMIT
    with tempfile.TemporaryDirectory() as folder, _quiet_logging():
        source, target = os.path.join(folder, "dense.onnx"), os.path.join(folder, "int8.onnx")
        copy = onnx.ModelProto()
        copy.CopyFrom(dense)
        onnx.save_model(copy, source, save_as_external_data=big, location="dense.data")
        try:
            quantize_dynamic(source, target, weight_type=QuantType.QInt8, per_channel=per_channel,
                             use_external_data_format=big)
        except Exception as exc:  # onnxruntime.quantization raises whatever its passes raise
            raise OnnxPruneError(f"onnxruntime could not quantize the model to int8: {first_line(exc)}") from exc
        return load_model(target)


def check_outputs(baseline: Baseline, dense: Sequence[np.ndarray], candidate: Sequence[np.ndarray],
                  names: Sequence[str]) -> dict[str, float]:
    """Max relative error of each float output of the baseline against dense; an OnnxPruneError
    when one exceeds the baseline's tolerance (its timing would compare unlike things)."""
    from ..check.verify import max_relative_error

    errors = {n: max_relative_error(d, c) for n, d, c in zip(names, dense, candidate)
              if np.issubdtype(np.asarray(d).dtype, np.floating)}
    worst = max(errors, key=errors.get, default=None)
    if worst is not None and not errors[worst] <= baseline.tolerance:
        raise OnnxPruneError(f"the {baseline.name} baseline (onnxruntime int8) differs from the dense model on output '{worst}' "
                             f"(max relative error {errors[worst]:.2e} > {baseline.tolerance:g}); not timing it")
    return errors


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """onnxruntime.quantization logs advice ("consider pre-processing") to the root logger."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)

