"""Triton kernels of sparsecl (installed as ``sparsecl.kernels``).

Each module holds ``@triton.jit`` kernels and plain launcher functions taking torch tensors.
Launchers run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before
this package was imported (that is how CI tests them).
"""
