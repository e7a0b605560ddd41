"""Seconds per three-splitting BCD sweep, its GFLOP/s and the machine's measured GEMM rate.

    python scripts/bench_sweep.py                                  # the standard CPU cases
    python scripts/bench_sweep.py --sizes 784,600,600,10 --n 60000 --device cuda

Data are random (timing does not depend on them). Results are printed and
written as CSV and JSON to ``--out`` (default outputs/bench/).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import pandas as pd
import torch

from bcd_cli.catalogue import NoReg, ReLU, Square
from bcd_cli.engine import MLP, ThreeSplittingBCD

STANDARD_CPU = [
    ("784-1024x3-10", [784, 1024, 1024, 1024, 10], 8000),
    ("784-600x10-10", [784] + [600] * 10 + [10], 8000),
]


def sweep_flops(sizes: list[int], n: int) -> float:
    """Multiply-add count x 2 of the dense products and triangular solves in one sweep."""
    flops = 0.0
    for l in range(len(sizes) - 1):
        d_in, d_out = sizes[l], sizes[l + 1]
        flops += 2 * d_out * d_in * n  # W V for the U-block
        flops += 2 * d_in * d_in * n + 2 * d_out * d_in * n  # V V^T and U V^T for the W-block
        if l < len(sizes) - 2:
            d_next = sizes[l + 2]
            flops += 2 * d_out * d_next * n + 2 * d_out * d_out * n  # W^T U and the two triangular solves
    return flops


def gemm_rate(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Measured GFLOP/s of an m x k by k x n matrix product."""
    a = torch.randn(m, k, device=device, dtype=dtype)
    b = torch.randn(k, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * m * k * n * repeats / (time.perf_counter() - start) / 1e9


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    name: str, sizes: list[int], n: int, sweeps: int, device: torch.device, dtype: torch.dtype, solve_dtype: torch.dtype
) -> dict:
    gen = torch.Generator().manual_seed(0)
    X = torch.rand(sizes[0], n, generator=gen).to(device=device, dtype=dtype)
    labels = torch.randint(0, sizes[-1], (n,), generator=gen).to(device)
    Y = torch.nn.functional.one_hot(labels, sizes[-1]).T.to(dtype).contiguous()
    net = MLP.init(sizes, ReLU(), init_std=0.01, init_bias=0.1, seed=0, dtype=dtype, device=device)
    algorithm = ThreeSplittingBCD(
        net, X, Y, loss=Square(), reg_w=NoReg(), reg_v=NoReg(), gamma=1.0, alpha=1.0, solve_dtype=solve_dtype
    )
    algorithm.sweep()  # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(sweeps):
        algorithm.sweep()
    sync(device)
    seconds = (time.perf_counter() - start) / sweeps
    width = max(sizes[1:-1])
    gemm = gemm_rate(width, width, n, device, dtype)
    state = sum(t.numel() * t.element_size() for t in [*net.W, *net.b, *algorithm.V, *algorithm.U, Y])
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # whole process, high-water mark
    gflops = sweep_flops(sizes, n) / seconds / 1e9
    return {
        "case": name, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
        "solve_dtype": str(solve_dtype).removeprefix("torch."), "n": n,
        "seconds_per_sweep": seconds, "sweep_gflops": gflops, "gemm_gflops": gemm, "ratio_to_gemm": gflops / gemm,
        "peak_memory_mb": peak / 2**20, "state_and_data_mb": state / 2**20,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", help="layer sizes, e.g. 784,1024,1024,10 (default: the standard cases)")
    parser.add_argument("--n", type=int, default=8000, help="samples")
    parser.add_argument("--sweeps", type=int, default=3, help="timed sweeps (after one warm-up sweep)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--solve-dtype", default="float64", choices=["float32", "float64"], help="Cholesky dtype")
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"))
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    if args.sizes:
        cases = [(args.sizes.replace(",", "-"), [int(s) for s in args.sizes.split(",")], args.n)]
    else:
        cases = STANDARD_CPU
    rows = [
        bench(name, sizes, n, args.sweeps, device, dtype, getattr(torch, args.solve_dtype)) for name, sizes, n in cases
    ]
    table = pd.DataFrame(rows)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "sweep.csv", index=False)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
