"""Shared helpers for the multitask tests."""
import pytest

import sparsecl.nn

needs_slim = pytest.mark.skipif(not hasattr(sparsecl.nn, "SlimmableConv2d"),
                                reason="sparsecl.nn slimmable layers are not available in this checkout")


@pytest.fixture(autouse=True)
def one_thread():
    """The machine's cores are shared: one intra-op thread avoids OpenMP oversubscription stalls."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
