"""Run by tests/dst/test_distributed.py under torchrun (2 gloo ranks on CPU): DDP training with DST; after
every update, every rank must hold identical masks and weights. Exits non-zero on any mismatch."""
import os
import sys

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from sparsecl.dst import DST  # noqa: E402
from sparsecl.nn import BlockSparseLinear  # noqa: E402
from tests.dst._layers import MaskedLinear  # noqa: E402


def run(growth):
    rank = dist.get_rank()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(MaskedLinear(24, 32, 0.3, g), nn.ReLU(), BlockSparseLinear(32, 48, density=0.5, block_size=16),
                          nn.ReLU(), MaskedLinear(48, 6, 0.3, g))
    ddp = DDP(model)
    opt = torch.optim.Adam(ddp.parameters(), lr=1e-2)
    dst = DST(ddp, opt, growth=growth, prune="taylor" if growth == "momentum" else "magnitude", update_every=2,
              end_step=12, drop_fraction=0.4)
    data = torch.Generator().manual_seed(100 + rank)  # different batches per rank
    updates = 0
    for step in range(12):
        x, y = torch.randn(16, 24, generator=data), torch.randint(0, 6, (16,), generator=data)
        opt.zero_grad()
        nn.functional.cross_entropy(ddp(x), y).backward()
        opt.step()
        if dst.step() is not None:
            updates += 1
            state = [t.detach().float().flatten() for m in model if hasattr(m, "dst_mask")
                     for t in (m.dst_mask(), m.dense_weight())]
            flat = torch.cat(state)
            gathered = [torch.empty_like(flat) for _ in range(2)]
            dist.all_gather(gathered, flat)
            if not torch.equal(gathered[0], gathered[1]):
                print(f"rank {rank}: ranks differ after the update at step {step + 1}", flush=True)
                sys.exit(1)
    changed = sum(sum(h["changed"].values()) for h in dst.history)
    if updates != 6 or changed == 0:
        print(f"rank {rank}: expected 6 updates that change the topology, got {updates} ({changed} changes)")
        sys.exit(1)
    print(f"rank {rank} {growth}: ok", flush=True)


def main():
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    for growth in sys.argv[1:]:
        run(growth)
    dist.barrier()  # no rank tears gloo down while the other still talks to it (an abort at exit otherwise)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
