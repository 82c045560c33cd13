"""Where a calibrated prune spends its time: one ``onnx_prune.prune`` call as the CLI makes it
(verification on), under cProfile, split into its phases.

    python tools/profile_prune.py /tmp/minilm.onnx /tmp/calib.npz --method sparsegpt --ratio 0.5

Prints wall and CPU seconds, the peak RSS, and per phase the cumulative CPU seconds (of all the
process's threads: the profiler's clock is time.process_time, so the split holds on a machine
shared with other jobs, where wall seconds say more about the others) of the function that does
it, and its share of the whole. The phases:

* capture: onnxruntime runs, session setup, the statistics accumulated (XᵀX, norms, sums), the
  copies of the model with the pruned weights written in (with_weights);
* the solves: SparseGPT's factor of H⁻¹, its walk, the refit of the kept weights; Wanda's masks;
* the rest: packing into the sparse format, the rewrite, verification.

``--json PATH`` also writes the figures, for docs/calibration.md.
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import onnx_prune  # noqa: E402

# phase -> (file name ending, function name): cumulative time of that function
PHASES = {
    "capture: onnxruntime runs": ("capture.py", "run"),
    "capture: session setup": ("capture.py", "__init__"),
    "capture: statistics (XᵀX, norms)": ("capture.py", "add"),
    "capture: model copies (with_weights)": ("capture.py", "with_weights"),
    "sparsegpt: factor of H⁻¹": ("sparsegpt.py", "_factor"),
    "sparsegpt: walk": ("sparsegpt.py", "_walk"),
    "sparsegpt: refit": ("sparsegpt.py", "refit_kept"),
    "all layers' update_mask (solves, masks)": ("calibration.py", "_prune_layer"),
    "pack into the sparse format": ("api.py", "_pack_all"),
    "verification": ("verify.py", "verify_pruned"),
}


def phase_seconds(stats: pstats.Stats) -> dict[str, float]:
    found = {phase: 0.0 for phase in PHASES}
    for (filename, _, function), (_, _, _, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        for phase, (ending, name) in PHASES.items():
            if filename.endswith(ending) and function == name:
                found[phase] += cumulative
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("calibration")
    parser.add_argument("--method", default="sparsegpt")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    profile = cProfile.Profile(time.process_time)
    wall, cpu = time.perf_counter(), time.process_time()
    profile.enable()
    onnx_prune.prune(args.model, args.ratio, method=args.method, calibration=args.calibration, verify=True)
    profile.disable()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    phases = phase_seconds(pstats.Stats(profile))
    print(f"{args.method} --ratio {args.ratio}: {wall:.1f} s wall, {cpu:.1f} s CPU, peak RSS {peak:.0f} MiB "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for phase, seconds in phases.items():
        print(f"  {phase:42s} {seconds:8.1f} s CPU  {seconds / cpu:6.1%}")
    if args.json:
        args.json.write_text(json.dumps(dict(method=args.method, ratio=args.ratio, wall_s=wall, cpu_s=cpu,
                                             peak_rss_mib=peak, phases_s=phases), indent=1) + "\n")


if __name__ == "__main__":
    main()
