"""Model backends and the weights they load; the only package that imports torch or onnxruntime."""
