"""Roofline floors of sparsecl's GPU ops: per op and bar shape, FLOPs, HBM bytes and L2->SM bytes, and the
time floor on H100 and H200 (the largest of compute, HBM and L2->SM time at the published peaks).

Peaks (dense, no 2:4 sparsity), SXM parts:
  * H100 SXM5 80GB: BF16/FP16 tensor 989.4 TFLOP/s, TF32 494.7, FP32 (CUDA cores) 66.9, FP64 tensor 66.9,
    HBM3 3.35 TB/s. Source: NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100).
  * H200 SXM 141GB: the same compute peaks, HBM3e 4.8 TB/s. Source: NVIDIA H200 datasheet
    (nvidia.com/en-us/data-center/h200).
  * L2->SM read bandwidth is not in NVIDIA's datasheets. A100's whitepaper gives 5120 B/clk for L2 reads;
    at H100's 1.755 GHz boost that is 9.0 TB/s, taken here for both cards (same GH100 die). It is an
    assumption: bench/gpu.sh measures this ceiling, and ``floor(..., peaks=...)`` takes the measured one.

What each op must move (lower bounds for the kernel designs the bench runs):
  * FLOPs count the multiply-adds the kernel must execute: 2*T*nnz for block-sparse tiles, the dense 2*T*in*out
    for masked_linear (tensor cores compute the masked-out products too); unstructured ops run on CUDA
    cores (FP32 FMA peak), since tensor cores need dense tiles.
  * HBM bytes: each operand read once and the output written once (x, values + index, y).
  * L2->SM bytes for a gather GEMM with B x B weight blocks and BLOCK_T-token tiles: every weight block is
    read once per token tile and every x tile once per weight block it meets, so
    bytes = s * T * nnz * (1/(cluster*BLOCK_T) + 1/B) with nnz the stored weight entries and ``cluster`` CTAs
    sharing each W block by TMA multicast (1 today). Dense GEMMs use the same formula with a 256 x 256
    effective tile (cuBLAS's 2-CTA clusters). Unstructured ops: the HBM traffic (no better bound).

Whether ``t <= 1.25 * d * t_cuBLAS`` is reachable at B=64 for bsr_linear (LLaMA-7B MLP, bf16, d=0.1, T=4096,
4096 -> 11008; cuBLAS 0.580 ms measured on the H100 of bench/results/gpu-h100-2026-11-25): the bar is
0.0725 ms. Compute needs 0.037 ms and HBM 0.040 ms; the L2->SM traffic decides. At B=64 with the largest
token tile a 3-deep pipeline fits in shared memory (BLOCK_T=256: 3 x (256 + 64) x 64 x 2 B = 120 KiB) it is
0.72 GB, 0.080 ms at 9.0 TB/s: **not reachable at B=64** with today's one-CTA design. A 2-CTA cluster that
multicasts each W block to two token tiles cuts it to 0.65 GB, 0.072 ms: equal to the bar at 100% of the
assumed L2 ceiling, so out of reach in practice (kernels sustain well under their ceiling). With B=128 blocks
the x traffic halves: 0.43 GB, 0.048 ms, reachable in principle. Until B=128 exists, the B=64 bar to hold
is "within 1.5x of the floor" (0.12 ms). ``bar_reachable`` recomputes this for a measured L2 ceiling;
``python bench/floors.py`` prints the table and the answer.
"""
import argparse
import json
from dataclasses import asdict, dataclass

PEAKS = {
    "H100": dict(tensor_16bit=989.4e12, tf32=494.7e12, fp32=66.9e12, fp64=66.9e12, hbm=3.35e12, l2=9.0e12),
    "H200": dict(tensor_16bit=989.4e12, tf32=494.7e12, fp32=66.9e12, fp64=66.9e12, hbm=4.8e12, l2=9.0e12),
}
SIZE = {"bf16": 2, "fp16": 2, "fp32": 4, "fp64": 8}
INDEX_BYTES = 4  # int32 column index per stored entry / block


@dataclass
class Work:
    """What one op call must do: FLOPs on which units, HBM bytes, L2->SM bytes."""
    op: str
    shape: str
    flops: float
    unit: str  # key of PEAKS: tensor_16bit, tf32, fp32, fp64
    hbm_bytes: float
    l2_bytes: float

    def floor(self, card="H100", peaks=None):
        """dict: compute/hbm/l2 times (ms), floor_ms (their max) and the bound that sets it."""
        p = dict(PEAKS[card], **(peaks or {}))
        times = {"compute": self.flops / p[self.unit], "hbm": self.hbm_bytes / p["hbm"], "l2": self.l2_bytes / p["l2"]}
        bound = max(times, key=times.get)
        return {**{f"{k}_ms": v * 1e3 for k, v in times.items()}, "floor_ms": times[bound] * 1e3, "bound": bound}


def _tensor_unit(dtype):
    return "tensor_16bit" if SIZE[dtype] == 2 else ("fp64" if dtype == "fp64" else "tf32")


def gemm(T, in_f, out_f, dtype="bf16", tile=(256, 256)):
    """Dense x [T, in] @ W.T: cuBLAS-like effective tiles (BM tokens x BN features)."""
    s = SIZE[dtype]
    return Work("dense_linear", f"T={T} {in_f}->{out_f} {dtype}", 2.0 * T * in_f * out_f, _tensor_unit(dtype),
                s * (T * in_f + in_f * out_f + T * out_f), s * T * in_f * out_f * (1 / tile[0] + 1 / tile[1]))


def bsr_linear(T, in_f, out_f, density, block=64, block_t=128, dtype="bf16", cluster=1):
    s, nnz = SIZE[dtype], density * in_f * out_f
    c = f" cluster={cluster}" if cluster > 1 else ""
    return Work("bsr_linear", f"T={T} {in_f}->{out_f} {dtype} B={block} d={density} BLOCK_T={block_t}{c}",
                2.0 * T * nnz, _tensor_unit(dtype),
                s * (T * in_f + nnz + T * out_f) + INDEX_BYTES * nnz / block ** 2,
                s * T * nnz * (1 / (cluster * block_t) + 1 / block))


def _total(op, shape, parts):
    """One Work for several kernel calls (a training step's forward, dX and dW)."""
    return Work(op, shape, sum(p.flops for p in parts), parts[0].unit, sum(p.hbm_bytes for p in parts),
                sum(p.l2_bytes for p in parts))


def gemm_train(T, in_f, out_f, dtype="bf16"):
    """Forward, dX and dW of a dense linear layer."""
    parts = [gemm(T, in_f, out_f, dtype), gemm(T, out_f, in_f, dtype), gemm(out_f, T, in_f, dtype)]
    return _total("dense_linear fwd+bwd", parts[0].shape, parts)


def bsr_linear_train(T, in_f, out_f, density, block=64, block_t=128, dtype="bf16"):
    """Forward and dX (gather GEMMs) plus the dValues SDDMM: per active block it reads T x B of dY and of x."""
    s, nnz = SIZE[dtype], density * in_f * out_f
    fwd = bsr_linear(T, in_f, out_f, density, block, block_t, dtype)
    dx = bsr_linear(T, out_f, in_f, density, block, block_t, dtype)
    dw = Work("bsr_linear dw", fwd.shape, 2.0 * T * nnz, fwd.unit, s * (T * in_f + T * out_f + nnz),
              2 * s * T * nnz / block)
    return _total("bsr_linear fwd+bwd", fwd.shape, [fwd, dx, dw])


def csr_linear(T, in_f, out_f, density, dtype="fp16"):
    s, nnz = SIZE[dtype], density * in_f * out_f
    hbm = s * (T * in_f + T * out_f) + (s + INDEX_BYTES) * nnz
    return Work("csr_linear", f"T={T} {in_f}->{out_f} {dtype} d={density}", 2.0 * T * nnz,
                "fp64" if dtype == "fp64" else "fp32", hbm, hbm)


def masked_linear(T, in_f, out_f, density, dtype="fp16", tile=(256, 256)):
    w = gemm(T, in_f, out_f, dtype, tile)
    mask = in_f * out_f  # bool mask, read once (and once per token tile from L2)
    return Work("masked_linear", f"T={T} {in_f}->{out_f} {dtype} d={density}", w.flops, w.unit,
                w.hbm_bytes + mask, w.l2_bytes + mask * T / tile[0])


def _conv_gemm(batch, c_in, c_out, hw, k=3, stride=1):
    ho = hw // stride
    return batch * ho * ho, c_in * k * k, c_out, batch * c_in * hw * hw, batch * c_out * ho * ho


def conv2d(batch, c_in, c_out, hw, dtype="bf16", k=3, stride=1):
    """Dense conv as implicit GEMM (cuDNN): M = batch*Ho*Wo pixels, K = c_in*k*k, N = c_out."""
    M, K, N, x_n, y_n = _conv_gemm(batch, c_in, c_out, hw, k, stride)
    s = SIZE[dtype]
    return Work("dense_conv2d", f"{c_in}@{hw} batch {batch} {dtype}", 2.0 * M * K * N, _tensor_unit(dtype),
                s * (x_n + K * N + y_n), s * M * K * N * (1 / 128 + 1 / 128))


def bsr_conv2d(batch, c_in, c_out, hw, density, block=32, block_p=64, dtype="bf16", k=3, stride=1):
    M, K, N, x_n, y_n = _conv_gemm(batch, c_in, c_out, hw, k, stride)
    s, nnz = SIZE[dtype], density * K * N
    return Work("bsr_conv2d", f"{c_in}@{hw} batch {batch} {dtype} B={block} d={density}", 2.0 * M * nnz,
                _tensor_unit(dtype), s * (x_n + nnz + y_n), s * M * nnz * (1 / block_p + 1 / block))


def csr_conv2d(batch, c_in, c_out, hw, density, dtype="bf16", k=3, stride=1):
    M, K, N, x_n, y_n = _conv_gemm(batch, c_in, c_out, hw, k, stride)
    s, nnz = SIZE[dtype], density * K * N
    hbm = s * (x_n + y_n) + (s + INDEX_BYTES) * nnz
    return Work("csr_conv2d", f"{c_in}@{hw} batch {batch} {dtype} d={density}", 2.0 * M * nnz, "fp32", hbm, hbm)


def prune_regrow(n_params, weight_bytes=4, score_bytes=4):
    """One read of weight, mask (1 B), prune and grow score per position; writes are ~2n positions (ignored)."""
    b = n_params * (weight_bytes + 1 + 2 * score_bytes)
    return Work("prune_regrow", f"{n_params / 1e6:.1f}M params", 0.0, "fp32", b, b)


def slimmable_linear(T, in_f, out_f, width, dtype="bf16"):
    i, o = int(in_f * width), int(out_f * width)
    w = gemm(T, i, o, dtype)
    return Work("slimmable_linear", f"T={T} {in_f}->{out_f} w={width} {dtype}", w.flops, w.unit, w.hbm_bytes,
                w.l2_bytes)


LLAMA = dict(T=4096, in_f=4096, out_f=11008)


def bar_shapes():
    """Every op at the shapes of its GPU bar (issue 17's table), fwd; the dense equivalents for reference."""
    return [
        gemm(**LLAMA),
        bsr_linear(**LLAMA, density=0.1, block=64, block_t=128),
        bsr_linear(**LLAMA, density=0.1, block=64, block_t=256),
        bsr_linear(**LLAMA, density=0.1, block=64, block_t=256, cluster=2),
        bsr_linear(**LLAMA, density=0.1, block=128, block_t=256),
        gemm_train(**LLAMA), bsr_linear_train(**LLAMA, density=0.1),
        gemm(**LLAMA, dtype="fp16"),
        csr_linear(**LLAMA, density=0.1, dtype="fp16"),
        csr_linear(T=16, in_f=4096, out_f=11008, density=0.1, dtype="fp16"),
        masked_linear(**LLAMA, density=0.5, dtype="fp16"),
        conv2d(32, 256, 256, 14), bsr_conv2d(32, 256, 256, 14, 0.1), csr_conv2d(32, 256, 256, 14, 0.1),
        conv2d(32, 512, 512, 7), bsr_conv2d(32, 512, 512, 7, 0.1), csr_conv2d(32, 512, 512, 7, 0.1),
        prune_regrow(11_200_000),
        slimmable_linear(512, 4096, 4096, 0.5),
    ]


def bar_reachable(t_dense_ms=0.580, density=0.1, block=64, block_t=256, cluster=1, card="H100", peaks=None):
    """(reachable, floor_ms, bar_ms): can bsr_linear at the LLaMA shape meet t <= 1.25*d*t_dense at all?
    Default t_dense: cuBLAS bf16, H100 run of 2026-11-25. block_t=256 is the largest token tile whose 3-deep
    pipeline fits the shared memory at B=64 (3 x (256 + 64) x 64 x 2 B = 120 KiB)."""
    floor = bsr_linear(**LLAMA, density=density, block=block, block_t=block_t, cluster=cluster).floor(
        card, peaks)["floor_ms"]
    bar = 1.25 * density * t_dense_ms
    return floor <= bar, floor, bar


def table(card="H100", peaks=None):
    return [dict(asdict(w), card=card, **w.floor(card, peaks)) for w in bar_shapes()]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON rows instead of the table")
    ap.add_argument("--l2", type=float, help="measured L2->SM read bandwidth, TB/s (replaces the assumed 9.0)")
    ap.add_argument("--hbm", type=float, help="measured HBM bandwidth, TB/s")
    a = ap.parse_args(argv)
    peaks = {k: v * 1e12 for k, v in (("l2", a.l2), ("hbm", a.hbm)) if v}
    rows = [r for card in PEAKS for r in table(card, peaks)]
    if a.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'card':5s} {'op':20s} {'shape':56s} {'GFLOP':>8s} {'HBM MB':>8s} {'L2 MB':>8s} {'floor ms':>9s} bound")
    for r in rows:
        print(f"{r['card']:5s} {r['op']:20s} {r['shape']:56s} {r['flops'] / 1e9:8.1f} {r['hbm_bytes'] / 1e6:8.1f} "
              f"{r['l2_bytes'] / 1e6:8.1f} {r['floor_ms']:9.4f} {r['bound']}")
    for block, cluster in ((64, 1), (64, 2), (128, 1)):
        ok, floor, bar = bar_reachable(block=block, cluster=cluster, peaks=peaks)
        print(f"bsr_linear B={block} BLOCK_T=256 cluster={cluster}: floor {floor:.4f} ms vs bar 1.25*d*cuBLAS "
              f"{bar:.4f} ms: {'reachable' if ok else 'NOT reachable'} at 100% of the L2 ceiling")


if __name__ == "__main__":
    main()
