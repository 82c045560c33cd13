"""Running models: finding the SparseGemm library and opening onnxruntime sessions with it."""
