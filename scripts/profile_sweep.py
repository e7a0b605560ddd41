"""Where the time and memory of one three-splitting sweep go: per block solver, per aten op, and what-ifs.

    python scripts/profile_sweep.py                                    # 784-1024x3-10 at n = 8000, CPU
    python scripts/profile_sweep.py --sizes 784,600,600,600,10 --n 8000 --trace outputs/bench/trace.json
    python scripts/profile_sweep.py --memory                           # (5) only: memory per block solver

Builds the case as ``bench_sweep.py`` does (``bench.build_case``), runs a warm-up sweep,
then profiles one sweep with ``torch.profiler`` (shapes and memory recorded), each block solver of
``three_splitting`` wrapped in a ``record_function`` range (instrumentation only; restored after).
Prints (1) the inclusive
time of every block solver, (2) the aten ops by self time with their input shapes, (3) the ops
that allocate the most, (4) micro-measurements of the alternatives for the largest causes,
on the case's own shapes: the float64 triangular solves against float32 ones and
``torch.cholesky_solve``, the U-block prox against one elementwise pass, the squared distance,
the bias broadcast of ``addmm``, fresh against reused memory, the Gram product against its
upper block rows, and the evaluation with and without its gradient. With ``--memory``,
(5) instead: the most memory each block solver (and the evaluation) needs above what is
resident when it starts, in a process started with glibc's mmap threshold fixed.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from bcd_cli.engine import blocks, linalg, three_splitting

from bench import Case, build_case, cpu_seconds, reset_high_water_mark, size_label, status_mb

WRAPPED = {  # module -> the names its sweep looks up at call time
    three_splitting: ["update_output_state", "update_hidden_state", "update_preactivation", "update_weights",
                      "squared_distance"],
    blocks: ["spd_solve"],
}  # fmt: skip


CATEGORIES = [  # (category, aten ops) of the time split by self time
    ("matrix products (mm, addmm, mv)", {"aten::mm", "aten::addmm", "aten::mv", "aten::addmm_"}),
    ("Cholesky factorisations", {"aten::linalg_cholesky_ex"}),
    ("triangular solves", {"aten::linalg_solve_triangular", "aten::_cholesky_solve_helper"}),
    ("copies and dtype casts", {"aten::copy_", "aten::clone", "aten::to", "aten::_to_copy", "aten::contiguous"}),
]


def by_category(events) -> list[tuple[str, float]]:
    """(category, ms) of the profiled ops' self time; everything else is elementwise work or reductions."""
    totals = {name: 0.0 for name, _ in CATEGORIES} | {"elementwise and reductions (the rest)": 0.0}
    for e in events:
        if e.key.startswith("## "):
            continue
        name = next((name for name, ops in CATEGORIES if e.key in ops), "elementwise and reductions (the rest)")
        totals[name] += e.self_cpu_time_total / 1e3
    return list(totals.items())


@contextlib.contextmanager
def labelled_blocks() -> Iterator[None]:
    """Every function of WRAPPED runs inside a profiler range named after it."""
    saved = [(module, name, getattr(module, name)) for module, names in WRAPPED.items() for name in names]

    def wrap(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def labelled(*args, **kwargs):
            with record_function(f"## {name}"):
                return fn(*args, **kwargs)

        return labelled

    for module, name, fn in saved:
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for module, name, fn in saved:
            setattr(module, name, fn)


def transient_memory(algorithm, data) -> list[tuple[str, int, float]]:
    """(function, calls, MiB) of the most memory each block solver of one sweep (and the evaluation) needs
    above what is resident when it starts (the high-water mark reset at entry); run with glibc's mmap
    threshold fixed (``--memory``), so that the resident set follows the live tensors."""
    names = [n for n in WRAPPED[three_splitting] if n != "squared_distance"] + ["squared_distance"]
    peaks: dict[str, list[float]] = {name: [] for name in names}

    def wrap(name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def measured(*args, **kwargs):
            entry = status_mb("VmRSS")
            reset_high_water_mark()
            result = fn(*args, **kwargs)
            peaks[name].append(status_mb("VmHWM") - entry)
            return result

        return measured

    saved = {name: getattr(three_splitting, name) for name in names}
    try:
        for name, fn in saved.items():
            setattr(three_splitting, name, wrap(name, fn))
        algorithm.sweep()
    finally:
        for name, fn in saved.items():
            setattr(three_splitting, name, fn)
    entry = status_mb("VmRSS")
    reset_high_water_mark()
    algorithm.evaluate(data)
    rows = [(name, len(p), max(p)) for name, p in peaks.items() if p]
    return [*rows, ("evaluation (trainer.evaluate)", 1, status_mb("VmHWM") - entry)]


def median_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    """Median wall time of ``fn()`` in milliseconds, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def what_ifs(algorithm, data) -> list[tuple[str, float]]:
    """(description, milliseconds) of the alternatives to the costliest pieces of the sweep, on its shapes."""
    net, U, V = algorithm.net, algorithm.U, algorithm.V
    l = next(l for l in range(net.depth - 1) if V[l + 1].shape[0] == max(v.shape[0] for v in V[1:-1]))
    m, n = V[l + 1].shape
    H = torch.eye(m, dtype=torch.float64) * 2 + net.W[l + 1].T.double() @ net.W[l + 1].double()
    L64 = torch.linalg.cholesky(H)
    L32, G = L64.float(), torch.randn(m, n)
    Z, U_old, V_new = net.pre_activation(l, V[l]), U[l], V[l + 1]
    act = net.acts[l]
    out = torch.empty_like(G)
    W, b, V_in = net.W[l], net.b[l], V[l]
    half = m // 2
    return [
        (f"V block triangular solves as run: float64 factor in float32 ({m}x{m}, {n} rhs; state_solve_dtype=null)",
         median_ms(lambda: linalg.cholesky_solve(L32, G))),
        ("  in float64, in column chunks (trainer.state_solve_dtype=float64)",
         median_ms(lambda: linalg.cholesky_solve(L64, G))),
        ("  torch.cholesky_solve in float64 with the casts (column-major result)",
         median_ms(lambda: torch.cholesky_solve(G.double(), L64).float())),
        (f"one elementwise pass over {m}x{n}", median_ms(lambda: V_new + Z)),
        ("  the same into reused memory", median_ms(lambda: torch.add(V_new, Z, out=out))),
        (f"U block as run (activation {type(act).__name__}, row chunks), into a copy of Z",
         median_ms(lambda: blocks.update_preactivation(act, V_new, Z.clone(), U_old, gamma=1.0, rho=1.0, alpha=1.0))),
        ("  its prox on the whole block at once",
         median_ms(lambda: getattr(act, "prox_", act.prox)(V_new, Z.clone(), 2.0))),
        ("  the copy of Z alone", median_ms(lambda: Z.clone())),
        ("||P^k - P^(k-1)||^2 of one block, as run (sub, square_, sum)",
         median_ms(lambda: blocks.squared_distance(V_new, Z))),
        ("  by mse_loss (what runs under autograd)",
         median_ms(lambda: torch.nn.functional.mse_loss(V_new, Z, reduction="sum"))),
        (f"W V + b, addmm with the bias broadcast ({m}x{W.shape[1]} by {W.shape[1]}x{n})",
         median_ms(lambda: torch.addmm(b.unsqueeze(1), W, V_in))),
        ("  W V alone into a preallocated output", median_ms(lambda: torch.mm(W, V_in, out=out))),
        (f"Gram product V V^T as run (full GEMM, {m}x{n} by {n}x{m})", median_ms(lambda: V_new @ V_new.T)),
        ("  its upper block row pair only (3/4 of the work)",
         median_ms(lambda: (V_new[:half] @ V_new.T, V_new[half:] @ V_new[half:].T))),
        ("evaluation after the sweep (objective with gradient, forward passes)",
         median_ms(lambda: algorithm.evaluate(data), repeats=3)),
        ("  of which the objective with its gradient", median_ms(lambda: algorithm.objective(with_gradient=True), 3)),
        ("  the objective without gradient", median_ms(lambda: algorithm.objective(), 3)),
        ("  the evaluation with grad_norm=false",
         median_ms(lambda: algorithm.evaluate(data, grad_norm=False), 3)),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="784,1024,1024,1024,10", help="layer sizes")
    parser.add_argument("--n", type=int, default=8000, help="training samples")
    parser.add_argument("--scheme", default="three", choices=["three", "resnet"])
    parser.add_argument("--rows", type=int, default=25, help="rows of each table")
    parser.add_argument("--trace", type=Path, help="also write a Chrome trace here")
    parser.add_argument("--memory", action="store_true", help="only (5), in a process with a fixed mmap threshold")
    args = parser.parse_args()
    if args.memory and "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # glibc reads it at start-up: start again
        os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | {"MALLOC_MMAP_THRESHOLD_": "131072"})
    case = Case(args.scheme, [int(s) for s in args.sizes.split(",")], args.n)
    algorithm, data, _ = build_case(case)
    if args.memory:
        width = max(v.numel() for v in algorithm.V[1:]) * 4 / 2**20
        print(f"{case.name}, n={case.n}: (5) the most memory each piece of a sweep needs above what is resident "
              f"at its start (MiB; one hidden d x n float32 block: {width:.1f} MiB):")  # fmt: skip
        for name, calls, mib in transient_memory(algorithm, data):
            print(f"  {name:30s} {calls:3d} calls  {mib:8.1f} MiB at most")
        return
    algorithm.sweep()  # warm-up
    machine_busy, own_busy, started = *cpu_seconds(), time.perf_counter()
    with labelled_blocks(), profile(activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True) as p:
        start = time.perf_counter()
        algorithm.sweep()
        seconds = time.perf_counter() - start
    print(f"{case.name}, n={case.n}: one profiled sweep, {seconds:.2f} s (profiler overhead included)\n")
    events = p.key_averages()
    print("(0) time by kind of work (self time of the aten ops):")
    for name, ms in by_category(events):
        print(f"  {name:42s} {ms:9.1f} ms")
    print("(1) block solvers, inclusive (a solver called inside another is counted in both):")
    for e in sorted((e for e in events if e.key.startswith("## ")), key=lambda e: -e.cpu_time_total):
        print(f"  {e.key[3:]:24s} {e.count:3d} calls {e.cpu_time_total / 1e3:9.1f} ms")
    grouped = p.key_averages(group_by_input_shape=True)
    print("\n(2) aten ops by self time, with input shapes:")
    print(grouped.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=28,
                        max_shapes_column_width=60))  # fmt: skip
    print("(3) aten ops by memory allocated over the sweep (self; a total, not a peak):")
    print(events.table(sort_by="self_cpu_memory_usage", row_limit=12, max_name_column_width=28))
    if args.trace:
        args.trace.parent.mkdir(parents=True, exist_ok=True)
        p.export_chrome_trace(str(args.trace))
    print(f"(4) alternatives on the shapes of {size_label(case.sizes)}, n={case.n} (median ms):")
    for what, ms in what_ifs(algorithm, data):
        print(f"  {ms:9.1f}  {what}")
    machine_now, own_now = cpu_seconds()
    others = (machine_now - machine_busy - (own_now - own_busy)) / ((time.perf_counter() - started) * os.cpu_count())
    print(f"other processes took {max(others, 0):.0%} of the machine's CPU meanwhile; (5): run again with --memory")


if __name__ == "__main__":
    main()
