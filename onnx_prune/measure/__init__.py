"""Measuring: bench, baselines (onnxruntime int8), timing, machine facts, eval sweeps."""
