import os

# The Triton interpreter runs GPU kernels on CPU tensors; it must be set before triton is imported.
os.environ.setdefault("TRITON_INTERPRET", "1")
