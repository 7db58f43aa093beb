"""Small, fast configurations shared by the continual tests."""
import importlib
import importlib.util

HAS_SPARSE_LINEAR = importlib.util.find_spec("sparsecl.nn") is not None and hasattr(
    importlib.import_module("sparsecl.nn"), "SparseLinear")
MODES = ["dense-masked"] + (["sparse"] if HAS_SPARSE_LINEAR else [])


def tiny(out, **kw):
    cfg = {"model": {"name": "mlp", "width": 32, "depth": 2}, "epochs": 2, "batch_size": 32, "update_every": 3,
           "density": 0.2, "out": str(out), "progress": False, "threads": 1,
           "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "weight_decay": 0.0}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg
