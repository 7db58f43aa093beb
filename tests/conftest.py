"""Shared test setup.

* Triton kernels run in the interpreter on CPU tensors: TRITON_INTERPRET must be set before
  ``sparsecl.kernels`` is imported, so it is set here, before anything imports sparsecl.
* Uninitialised outputs are poisoned: with deterministic algorithms on, torch fills every
  ``empty`` allocation (C++ ``at::empty`` included) with NaN, so an element a kernel forgets to
  write fails the comparison instead of passing as a lucky zero.
"""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

CUDA = torch.cuda.is_available()
DEVICES = ["cpu"] + (["cuda"] if CUDA else [])


@pytest.fixture(autouse=True)
def poison_uninitialized_memory():
    saved = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(saved)


@pytest.fixture
def seed(request):
    """A fresh, reported seed per test: fresh random inputs every run, reproducible from the log."""
    s = int.from_bytes(os.urandom(4), "little") if "SPARSECL_TEST_SEED" not in os.environ else int(
        os.environ["SPARSECL_TEST_SEED"])
    torch.manual_seed(s)
    request.node.user_properties.append(("seed", s))
    print(f"seed={s}")
    return s


# Hypothesis profiles (tests/reliability): "ci" is the default, reproducible (derandomize) and about 100
# examples per property; SPARSECL_HYPOTHESIS_PROFILE=long runs 10,000 fresh random examples per test.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("long", max_examples=10_000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("SPARSECL_HYPOTHESIS_PROFILE", "ci"))
