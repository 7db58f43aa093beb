"""GPU backend choice (sparsecl.backend): resolution per op, overrides, the "aten" backend's kernels.

Resolution only reads the device type, so a ``torch.device("cuda")`` object is enough: no GPU needed.
"""
import pytest
import torch

import sparsecl
from sparsecl import _extension
from sparsecl.backend import AUTO_DEFAULTS, gpu_backend
from sparsecl.kernels_loader import triton_available
from sparsecl.ops.masked_linear import _kernels as masked_kernels
from sparsecl.ops.masked_linear import _reference_dw, _reference_dx, _reference_forward

CUDA = torch.device("cuda")


def _available(name):
    if name == "cuda" and not _extension.HAS_CUDA_KERNELS:
        name = "triton"
    if name == "triton" and not triton_available():
        name = "cuda"
    return name


def test_cpu_tensors_never_choose_a_gpu_backend():
    with sparsecl.use_backend("triton"):
        assert gpu_backend("masked_linear", torch.device("cpu")) is None


def test_auto_uses_the_measured_defaults():
    assert AUTO_DEFAULTS["masked_linear"] == "aten"
    assert gpu_backend("masked_linear", CUDA) == "aten"
    assert gpu_backend("csr_conv2d", CUDA) == _available("triton")
    assert gpu_backend("bsr_linear", CUDA) == _available("cuda")


def test_overrides_per_op_and_global_are_scoped():
    with sparsecl.use_backend("cuda", op="masked_linear"):
        assert gpu_backend("masked_linear", CUDA) == _available("cuda")
        with sparsecl.use_backend("aten"):
            assert gpu_backend("bsr_linear", CUDA) == "aten"
            assert gpu_backend("masked_linear", CUDA) == _available("cuda")  # per-op choice wins
    assert gpu_backend("masked_linear", CUDA) == "aten"
    with pytest.raises(ValueError, match="unknown backend"):
        sparsecl.set_backend("cublas")


def test_aten_backend_runs_the_reference_kernels():
    assert masked_kernels(CUDA) == (_reference_forward, _reference_dx, _reference_dw)
