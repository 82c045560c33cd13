"""eval and auto-dense: a sweep point where auto-dense kept layers unpruned is marked as such (JSON
row, table, plot), and --no-auto-dense prunes every point as asked."""
from __future__ import annotations

import json

import numpy as np
import pytest

from onnx_prune.measure.evaluate import KEPT_DENSE_LABEL, sweep, sweep_figure, sweep_table

from test_cli import cli_inproc
from test_evaluate import magnitude_masked, mlp_and_data, numpy_logits  # noqa: F401 (a fixture)


def test_sweep_marks_points_auto_dense_kept_and_no_auto_dense_prunes_them(mlp_and_data, library_path):
    _, params, model_path, data_path, x, labels = mlp_and_data
    kept, pruned = (sweep(model_path, data_path, [0.5, 0.8], batch=16, rounds=1, runs=1, auto_dense=flag)
                    for flag in (True, False))
    assert [(r["sparse_layers"], r["dense_layers"]) for r in kept] == [(0, 3), (3, 0)]
    assert kept[0]["sparsity"] == 0.0 and kept[0]["pruned_accuracy"] == kept[0]["dense_accuracy"]
    assert [(r["sparse_layers"], r["dense_layers"]) for r in pruned] == [(3, 0), (3, 0)]
    masked = float((numpy_logits(magnitude_masked(params, 0.5), x).argmax(axis=1) == labels).mean())
    assert pruned[0]["pruned_accuracy"] == pytest.approx(masked, abs=1e-12)
    assert pruned[0]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert pruned[1]["pruned_accuracy"] == kept[1]["pruned_accuracy"]

    (layers,) = [column for column in sweep_table(kept).columns if column.header == "sparse layers"]
    cells = layers.cells
    assert list(cells) == ["0 (3 kept dense)", "3"]

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = sweep_figure(plt, kept)
    acc_ax, speed_ax, trade_ax = fig.axes
    for ax, (x_key, y_of) in ((acc_ax, ("ratio", lambda r: 100 * r["pruned_accuracy"])),
                              (speed_ax, ("ratio", lambda r: r["speedup"])),
                              (trade_ax, ("pruned_ms", lambda r: 100 * r["pruned_accuracy"]))):
        (marked,) = [line for line in ax.get_lines() if line.get_label() == KEPT_DENSE_LABEL]
        np.testing.assert_allclose(marked.get_xdata(), [kept[0][x_key]])
        np.testing.assert_allclose(marked.get_ydata(), [y_of(kept[0])])
    plt.close(fig)
    fig = sweep_figure(plt, pruned)
    assert not [line for ax in fig.axes for line in ax.get_lines() if line.get_label() == KEPT_DENSE_LABEL]
    plt.close(fig)


def test_eval_command_takes_no_auto_dense(mlp_and_data, library_path, tmp_path):
    _, _, model_path, data_path, _, _ = mlp_and_data
    for flag, expected in (("--auto-dense", (0, 3)), ("--no-auto-dense", (3, 0))):
        js = tmp_path / f"{flag.strip('-')}.json"
        done = cli_inproc("eval", str(model_path), "--data", str(data_path), "--ratio", "0.5", "--batch", "8",
                          "--baseline", "none", "--json", str(js), "-q", flag)
        assert done.exit_code == 0, done.stderr
        (row,) = json.loads(js.read_text())["rows"]
        assert (row["sparse_layers"], row["dense_layers"]) == expected
        assert ("--no-auto-dense prunes them" in done.stdout) == (flag == "--auto-dense")
        assert "nothing was pruned" not in done.stderr
