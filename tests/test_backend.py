"""GPU backend choice (sparsecl.backend): auto's rule table as a pure function of op and shape class,
overrides, fallbacks, the "aten" backend's kernels.

Resolution only reads the device type, so a ``torch.device("cuda")`` object is enough: no GPU needed.
"""
import json
import os

import pytest
import torch

import sparsecl
from sparsecl import _extension
from sparsecl.backend import AUTO_RULES, auto_backend, gpu_backend, weight_density
from sparsecl.kernels_loader import triton_available
from sparsecl.ops.masked_linear import _kernels as masked_kernels
from sparsecl.ops.masked_linear import _reference_dw, _reference_dx, _reference_forward

CUDA = torch.device("cuda")
H100 = os.path.join(os.path.dirname(__file__), "..", "bench", "results", "gpu-h100-2026-11-25", "bench")
OPS = ("bsr_linear", "csr_linear", "masked_linear", "bsr_conv2d", "csr_conv2d", "slimmable_linear")
BAR = dict(dtype=torch.bfloat16, density=0.1, block=64, tokens=4096)


def _available(name):
    if name == "cuda" and not _extension.HAS_CUDA_KERNELS:
        name = "triton"
    if name == "triton" and not triton_available():
        name = "cuda" if _extension.HAS_CUDA_KERNELS else "aten"
    return name


def test_cpu_tensors_never_choose_a_gpu_backend():
    with sparsecl.use_backend("triton"):
        assert gpu_backend("masked_linear", torch.device("cpu")) is None


@pytest.mark.parametrize("op", OPS)
def test_auto_is_dense_without_a_shape_class(op):
    assert auto_backend(op) == "aten"
    assert gpu_backend(op, CUDA) == "aten"


def test_auto_takes_the_sparse_kernel_only_in_the_measured_class():
    assert auto_backend("bsr_linear", **BAR) == "triton"
    assert gpu_backend("bsr_linear", CUDA, **BAR) == _available("triton")
    assert auto_backend("bsr_linear", **dict(BAR, density=0.05, tokens=8192)) == "triton"
    # each field just outside the class -> dense
    for change in (dict(density=0.2), dict(density=0.1001), dict(tokens=4095), dict(block=32),
                   dict(dtype=torch.float16), dict(dtype=torch.float32), dict(density=None), dict(tokens=None)):
        assert auto_backend("bsr_linear", **dict(BAR, **change)) == "aten", change
    for op in OPS[1:]:
        assert auto_backend(op, **BAR) == "aten", op


def _rows(path):
    with open(path) as f:
        return json.load(f)["rows"]


def test_auto_rules_rest_on_the_committed_measurement():
    """Every rule's class was measured faster than dense, fwd and fwd+bwd, in the committed H100 run;
    and the class just above it (d=0.2) was measured slower in fwd+bwd, so the density bound is not loose."""
    rows = _rows(os.path.join(H100, "bench-cuda.json"))
    for rule in AUTO_RULES:
        assert rule.op == "bsr_linear" and rule.backend == "triton"

        def ms(method, density, pass_):
            hits = [r["ms"] for r in rows if r["method"].startswith(method) and r["pass_"] == pass_
                    and (r["density"] == density or method.startswith("dense")) and r["T"] >= rule.min_tokens
                    and r["block"] in rule.blocks and r["dtype"] == str(rule.dtypes[0]).split(".")[-1]]
            assert len(hits) == 1, (method, density, pass_)
            return hits[0]

        for pass_ in ("fwd", "fwd+bwd"):
            assert ms("sparsecl triton", rule.max_density, pass_) < ms("dense", 1.0, pass_)
        assert ms("sparsecl triton", 0.2, "fwd+bwd") > ms("dense", 1.0, "fwd+bwd")


def test_dense_defaults_rest_on_the_committed_measurement():
    """The ops auto keeps dense were measured slower than their dense path (fwd) in the committed run."""
    rows = _rows(os.path.join(H100, "csr_linear_gpu", "bench-cuda.json"))
    for op in ("csr_linear", "masked_linear"):
        for shape in {r["shape"] for r in rows if r["op"] == op}:
            sel = [r for r in rows if r["op"] == op and r["shape"] == shape]
            dense = sum(r["ms"] for r in sel if r["method"].startswith("dense"))
            for be in ("cuda", "triton"):
                sparse = sum(r["ms"] for r in sel if r["method"].endswith(be))
                assert sparse > dense, (op, shape, be)
    conv = _rows(os.path.join(H100, "sparse_conv2d", "bench-cuda.json"))
    sparse_rows = [r for r in conv if r["method"].startswith("sparsecl")]
    assert sparse_rows and all(r["ms"] > r["dense_ms"] for r in sparse_rows)


def test_overrides_per_op_and_global_are_scoped():
    with sparsecl.use_backend("cuda", op="masked_linear"):
        assert gpu_backend("masked_linear", CUDA) == _available("cuda")
        with sparsecl.use_backend("aten"):
            assert gpu_backend("bsr_linear", CUDA, **BAR) == "aten"
            assert gpu_backend("masked_linear", CUDA) == _available("cuda")  # per-op choice wins
    assert gpu_backend("masked_linear", CUDA) == "aten"
    with pytest.raises(ValueError, match="unknown backend"):
        sparsecl.set_backend("cublas")


def test_weight_density():
    assert weight_density(torch.empty(10, 64, 64), (640, 1280)) == pytest.approx(10 * 64 * 64 / (640 * 1280))
    assert weight_density(torch.empty(0), (0, 5)) == 1.0


def test_aten_backend_runs_the_reference_kernels():
    assert masked_kernels(CUDA) == (_reference_forward, _reference_dx, _reference_dw)
