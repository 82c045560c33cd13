"""Choosing the weights to keep: the sparsifier registry, masks and patterns, SparseGPT, calibration and activation capture, bias correction, the auto-dense rule."""
