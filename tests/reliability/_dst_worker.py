"""One seeded DST training run (every sparse layer kind, every growth criterion); prints digests as JSON.

    python -m tests.reliability._dst_worker SEED THREADS
"""
import hashlib
import json
import sys

import torch
from torch import nn

from sparsecl.dst import DST
from sparsecl.nn import BlockSparseLinear, SparseConv2d, SparseLinear


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = SparseConv2d(3, 8, 3, padding=1, density=0.3)
        self.fc1 = SparseLinear(8 * 6 * 6, 48, density=0.2, mode="csr")
        self.fc2 = BlockSparseLinear(48, 40, density=0.5, block_size=16)
        self.fc3 = SparseLinear(40, 10, density=0.5, mode="masked")

    def forward(self, x):
        h = torch.relu(self.conv(x)).flatten(1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(h)))))


def digest(tensors):
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.dtype != torch.bool
                 else t.numpy().tobytes())
    return h.hexdigest()


def run(seed, growth):
    torch.manual_seed(seed)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    dst = DST(model, opt, growth=growth, update_every=2, end_step=12, drop_fraction=0.3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    losses = []
    for _ in range(12):
        x, y = torch.randn(16, 3, 6, 6, generator=g), torch.randint(0, 10, (16,), generator=g)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        dst.step()
        losses.append(loss.item())
    masks = [m.dst_mask() for m in model.modules() if hasattr(m, "dst_mask") and m is not model]
    return {"masks": digest(masks), "params": digest(list(model.parameters())), "losses": losses,
            "changed": [sum(h["changed"].values()) for h in dst.history]}


if __name__ == "__main__":
    seed, threads = int(sys.argv[1]), int(sys.argv[2])
    torch.set_num_threads(threads)
    print(json.dumps({g: run(seed, g) for g in ("gradient", "random", "unfired", "momentum")}))
