"""Shared scaffolding of the GPU-backend op tests (bsr_linear, sparse conv): device markers and the backend list."""
import os

import pytest
import torch

import sparsecl

CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
interpreter = pytest.mark.skipif(not INTERPRET, reason="interpreter tests need TRITON_INTERPRET=1")
BACKENDS = [pytest.param("cuda", id="be_cuda"), pytest.param("triton", id="be_triton")]


def skip_unusable(backend):
    """Skip a GPU test of ``backend`` where it cannot run: no CUDA kernels built, or Triton interpreted."""
    if backend == "cuda" and not sparsecl.build_info().get("cuda"):
        pytest.skip("extension built without CUDA kernels")
    if backend == "triton" and INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 would run Triton in the interpreter; run with TRITON_INTERPRET=0")
