"""Triton kernels, installed as ``kdfast.kernels``. Importing this package needs neither triton nor CUDA."""
