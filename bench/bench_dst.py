"""Cost of one DST update against training steps of the same sparse MLP (bar: update <= 2 steps), for the
block layer (BlockSparseLinear) and the unstructured one (SparseLinear, CSR storage and masked-dense).

A training step is zero_grad + forward + backward + Adam step. An update step is the same plus, for
gradient growth, the dense-gradient hooks on that batch, then the fused prune_regrow over all layers,
the incremental repack of every layer and the optimizer-state remap. "update cost" = update step - step.
"""
import torch
from torch import nn

from sparsecl.dst import DST
from sparsecl.nn import BlockSparseLinear, SparseLinear

try:
    from .harness import measure_interleaved
except ImportError:  # run by pytest from the bench/ folder
    from harness import measure_interleaved

CASES = [dict(id="mlp-1024-4096-d0.1-b32", layer="block", width=1024, hidden=4096, depth=2, density=0.1, block=32,
              tokens=256),
         dict(id="mlp-1024-4096-d0.1-csr", layer="csr", width=1024, hidden=4096, depth=2, density=0.1, tokens=256),
         dict(id="mlp-1024-4096-d0.1-masked", layer="masked", width=1024, hidden=4096, depth=2, density=0.1,
              tokens=256)]


def sparse_layer(case, n_in, n_out):
    if case["layer"] == "block":
        return BlockSparseLinear(n_in, n_out, density=case["density"], block_size=case["block"])
    return SparseLinear(n_in, n_out, density=case["density"], mode=case["layer"])


def make(case, growth, seed=0):
    torch.manual_seed(seed)
    w, h = case["width"], case["hidden"]
    layers = []
    for _ in range(case["depth"]):
        layers += [sparse_layer(case, w, h), nn.ReLU(), sparse_layer(case, h, w)]
    model = nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    dst = DST(model, opt, growth=growth, update_every=10 ** 9, decay="constant", drop_fraction=0.3)
    x = torch.randn(case["tokens"], w)
    return model, opt, dst, x


def rows(quick=False, device="cpu"):
    min_time = 1.0 if quick else 4.0
    for case in CASES:
        for growth in ("gradient", "random"):
            model, opt, dst, x = make(case, growth)

            def train_step():
                opt.zero_grad()
                model(x).square().mean().backward()
                opt.step()
                dst.step()

            def every(n):  # the next step updates the topology when n == 1 (hooks armed for its batch)
                def run():
                    dst.update_every = n
                    dst._arm_hooks()
                    train_step()
                return run
            # alternated in one loop, so both see the same background load (this VM's varies by 1.5x)
            t = measure_interleaved({"step": every(10 ** 9), "update": every(1)}, device, min_time)
            t_step, t_update = t["step"], t["update"]
            cost = t_update - t_step
            nnz = sum(int(m.dst_mask().sum()) * m.dst_block_size ** 2 for m in model if hasattr(m, "dst_mask"))
            yield dict(op="dst_update", case=case["id"], growth=growth, nnz=nnz, step_ms=t_step * 1e3,
                       update_step_ms=t_update * 1e3, update_cost_ms=cost * 1e3, update_in_steps=cost / t_step,
                       bar_ok=cost <= 2 * t_step)


if __name__ == "__main__":
    from harness import format_table

    print(format_table(list(rows()), ["case", "growth", "step_ms", "update_step_ms", "update_cost_ms",
                                      "update_in_steps", "bar_ok"]))
