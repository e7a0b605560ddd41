"""Seconds per BCD sweep against the machine's measured GEMM rate and against a naive implementation; FLOP
count and peak memory of the sweep.

    python scripts/bench_sweep.py                          # the standard cases (CPU; the GPU ones too with CUDA)
    python scripts/bench_sweep.py --quick                  # one small case, in well under a minute
    python scripts/bench_sweep.py --scheme two             # the standard cases of one scheme
    python scripts/bench_sweep.py --scheme resnet --sizes 784,1024,1024,1024,10 --n 8000 --sweeps 3
    python scripts/bench_sweep.py --sizes 784,1500,1500,1500,10 --n 60000 --device cuda
    python scripts/bench_sweep.py --memory-only --device cpu          # peak memory beside its estimate only
    python scripts/bench_sweep.py --memory-only --sizes 784,1024,1024,1024,10 --n 8000 --set trainer=sgd

Each case runs in two fresh Python processes. The first builds the trainer from the real ``conf/``
as ``bcd-train`` does, on random data (``bench.build_case``), runs ``--warmup`` sweeps, then
times each of ``--sweeps`` sweeps and the evaluation ``bcd-train`` runs after every sweep
(``trainer.evaluate``). The work of a sweep and of an evaluation is recorded by
``bench.MatrixOpRecorder`` (a replay of the first timed sweep, of each one where it depends
on the data: two-splitting; the last warm-up evaluation), which records each matrix product,
Cholesky factorisation and triangular solve the engine dispatches, with its shape: the FLOP counts
are those of the work that ran (``sweep_gflop``), and the minimum work that gives the same results
(``sweep_min_gflop``: a self-product V V^T or W^T W counted half). The rate of every product shape
so recorded is measured in the same process before the first timed sweep and after each one, and
each sweep is compared with the time its products would take at the rates measured around it (the
load of a shared machine changes): ``ratio_to_gemm`` on the work that ran, ``ratio_to_gemm_min`` on
the minimum work (the target: 0.85).

Where it applies (three-splitting, ReLU, the square loss summed, no regularizers), the naive
implementation of ``scripts/naive_bcd.py`` (Algorithm 2 as the paper writes it: explicit inverses,
the biases and the row of ones built as matrices; its evaluation a plain forward pass) starts from
the trainer's state after the warm-up and sweeps and evaluates right after each timed sweep and
evaluation of the engine, on the same data, so that the machine's load weighs on both alike:
``speedup_sweep`` is its sweep's seconds over the engine's, ``total_ratio`` the engine's sweep and
evaluation over its own (the target: 0.55). After the timed sweeps the relative difference
||naive - engine||_F / ||engine||_F of each block is reported (it must be finite); the check is done
in float64 on the case's network with a few hundred samples (``NAIVE_CHECK``): one sweep in which
the naive computes every block from the engine's inputs, each within the rounding bound derived from
that block's own matrices (``naive_bcd.compare_blocks``); the bound and the difference of the block
closest to its bound are printed. A case failing the check makes the script exit non-zero once its
results are written. For a network timed at two n the summary gives the growth of the seconds per
sweep against linear (the target: at most 1).

The second process measures the peak memory of one sweep and of one evaluation (``memory_case``;
the naive and its copy of the state are not in it): on the CPU with glibc's mmap threshold fixed,
so that the resident set follows the live tensors (by default glibc keeps freed buffers under 32
MiB in its heap), minus what stays resident once every tensor is freed (PyTorch's own libraries);
on CUDA ``torch.cuda.max_memory_allocated``. Beside each peak stands what
``bcd_cli.run.memory.estimate_for`` predicts for it before anything is allocated, and their ratio (the
peak of a sweep against its state + data: the target 1.3). ``--memory-only`` skips the timing and
adds a third process on the CPU, ``allocator_case``: the same peaks counted in PyTorch's allocator
(exact bytes of tensors; the resident set is coarse for runs of a few MiB). The baselines run
through ``--set trainer=sgd`` (or adam).

Results are printed and written as CSV and JSON to ``--out`` (default outputs/bench/).
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

from bcd_cli.engine.parallel import synchronize
from bcd_cli.run.memory import SCHEMES

import naive_bcd  # scripts/naive_bcd.py: this script's folder is on sys.path when it runs
from bench import (
    KINDS,
    PRODUCT,
    Case,
    build_case,
    case_data,
    cpu_seconds,
    gemm_bound_seconds,
    measured_peaks,
    product_shapes,
    record_matrix_ops,
    replayed_ops,
    reset_high_water_mark,
    size_label,
    state_bytes,
    status_mb,
    time_products,
    total_flops,
)

STANDARD_CPU = [  # few timed sweeps: a sweep of two-splitting or at n=60000 takes a minute or more on two cores
    Case("three", [784, 1024, 1024, 1024, 10], 8000, sweeps=2),
    Case("three", [784] + [600] * 10 + [10], 8000, sweeps=2),
    Case("three", [784] + [600] * 10 + [10], 60000, sweeps=1, n_test=10000),  # Figure 1's net on all of MNIST's n
    Case("two", [784, 1024, 1024, 1024, 10], 8000, sweeps=1),
    Case("resnet", [784, 1024, 1024, 1024, 10], 8000, sweeps=2),  # width 1024, two residual layers
]
QUICK = Case("three", [784, 64, 64, 10], 1000, sweeps=2)  # --quick: under a minute, the naive and memory included
STANDARD_GPU = [
    Case("three", [784] + [600] * 10 + [10], 60000, device="cuda"),
    Case("three", [784, 1500, 1500, 1500, 10], 60000, device="cuda"),
]


def timed(fn, device) -> float:
    """Seconds of one call of ``fn``, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def gemm_rate(ops: list, slots: list[dict]) -> float:
    """GFLOP/s of the products among ``ops`` at the rates of the timing ``slots`` (before and after a sweep)
    that measured each of their shapes: the geometric mean over the slots."""
    shapes = set(product_shapes(ops))
    rates = [total_flops(ops, PRODUCT) / gemm_bound_seconds(ops, s) / 1e9 for s in slots if shapes <= set(s)]
    return math.prod(rates) ** (1 / len(rates))


def time_case(case: Case) -> dict:
    """Times ``case`` in this process: warm-up, then each timed sweep and the evaluation after it, with the
    rates of the sweep's product shapes measured before the first timed sweep and after each one; where the
    naive implementation applies, its sweep and evaluation after the engine's, from the same state.

    The work of a sweep is recorded by replaying it first (``replayed_ops``): that of the first timed sweep,
    which the others repeat in a three-splitting or resnet sweep (its products, factorisations and solves
    follow from the shapes alone; the first sweep of all, a warm-up one, also computes the data's moments
    once for all), and that of every timed sweep in two-splitting (its inner iterations depend on the data).
    The evaluation's is recorded in the last warm-up one."""
    import torch

    load_before = os.getloadavg()[0]
    trainer, data, cfg = build_case(case)
    device, dtype = data.X_train.device, data.X_train.dtype

    def evaluate() -> None:
        trainer.evaluate(data, grad_norm=cfg.grad_norm)

    sweep_ops: list | None = None
    eval_ops: list | None = None
    for k in range(case.warmup):
        trainer.sweep()
        if k == case.warmup - 1:
            eval_ops = record_matrix_ops(evaluate)
        else:
            evaluate()
    naive = NaiveRun.start(trainer, data, cfg)
    shapes: set[tuple[int, int, int]] = set()
    sweeps, slots, evals, faults = [], [], [], 0
    machine_busy, own_busy, started = *cpu_seconds(), time.perf_counter()
    for _ in range(case.sweeps):
        ops = sweep_ops or replayed_ops(trainer, trainer.sweep)  # the work of the sweep timed next
        if case.scheme != "two":
            sweep_ops = ops
        shapes |= set(product_shapes(ops))
        if not slots:
            slots.append(time_products(shapes, device, dtype))
        faults -= resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        sweeps.append((timed(trainer.sweep, device), ops))
        faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        slots.append(time_products(shapes, device, dtype))
        evals.append(timed(evaluate, device))
        naive.step(device)  # right after the engine's: both under the same load
    machine_now, own_now = cpu_seconds()
    others = (machine_now - machine_busy - (own_now - own_busy)) / ((time.perf_counter() - started) * os.cpu_count())
    if eval_ops is None:
        eval_ops = record_matrix_ops(evaluate)
    flops = [total_flops(ops) for _, ops in sweeps]
    minimum = [total_flops(ops, minimum=True) for _, ops in sweeps]
    achieved = [f / s / 1e9 for f, (s, _) in zip(flops, sweeps, strict=True)]
    achieved_min = [f / s / 1e9 for f, (s, _) in zip(minimum, sweeps, strict=True)]
    around = [gemm_rate(ops, slots[k : k + 2]) for k, (_, ops) in enumerate(sweeps)]
    eval_s, eval_flops = statistics.median(evals), total_flops(eval_ops)
    rates = []  # per product shape (m x k) by (k x n): the median over every measurement
    for m, k, n in sorted(slots[-1]):
        seconds = statistics.median(slot[(m, k, n)] for slot in slots if (m, k, n) in slot)
        rates.append({"m": m, "k": k, "n": n, "gflops": 2 * m * k * n / seconds / 1e9})
    naive_row = naive.columns(case, trainer, [s for s, _ in sweeps], evals)
    seconds_per_sweep = statistics.median(s for s, _ in sweeps)
    return {
        "case": case.name, "scheme": case.scheme, "sizes": size_label(case.sizes), "device": str(device),
        "dtype": cfg.dtype, "solve_dtype": cfg.trainer.solve_dtype,
        "state_solve_dtype": cfg.trainer.get("state_solve_dtype") or cfg.dtype,
        "matmul_precision": cfg.device.get("matmul_precision", "highest"), "overrides": " ".join(case.extra),
        "n": case.n, "n_test": case.test_samples,
        "threads": torch.get_num_threads(), "warmup": case.warmup, "sweeps": case.sweeps,
        "seconds_per_sweep": seconds_per_sweep,
        "seconds_min": min(s for s, _ in sweeps), "seconds_max": max(s for s, _ in sweeps),
        "seconds_per_sweep_per_1000_samples": seconds_per_sweep / (case.n / 1000),
        "sweep_gflop": statistics.median(flops) / 1e9, "sweep_min_gflop": statistics.median(minimum) / 1e9,
        "sweep_gflops": statistics.median(achieved),
        "gemm_gflops": statistics.median(around),
        "ratio_to_gemm": statistics.median(a / g for a, g in zip(achieved, around, strict=True)),
        "ratio_to_gemm_min": statistics.median(a / g for a, g in zip(achieved_min, around, strict=True)),
        **{f"gflop_{kind.replace(' ', '_')}": total_flops(sweeps[0][1], kind) / 1e9 for kind in KINDS},
        "matrix_ops": len(sweeps[0][1]),
        "eval_seconds": eval_s, "eval_gflop": eval_flops / 1e9, "eval_gflops": eval_flops / eval_s / 1e9,
        **naive_row,
        "page_faults_per_sweep": faults / case.sweeps, "state_and_data_mb": state_bytes(trainer, data) / 2**20,
        "process_peak_mb": status_mb("VmHWM"), "others_cpu_share": max(others, 0.0),
        "load_before": load_before, "load_after": os.getloadavg()[0],
        "gemm_rates": rates,
    }  # fmt: skip


# The naive against the engine. After the timed sweeps their blocks are compared in the case's dtype, but no
# rounding bound holds the two together there: every sweep's rounding is amplified by the W blocks' normal
# equations (condition numbers of 1e9 and more on a fresh deep network, whose hidden states hardly vary over the
# samples; eps32 times that exceeds 1) and again by every later sweep, by amounts that depend on how the machine's
# kernels round. That difference is reported and need only be finite. The check is ``naive_bcd.compare_blocks`` in
# float64 on the case's network with NAIVE_CHECK["n"] random samples, after NAIVE_CHECK["warmup"] plain sweep (at the
# initial state U_i = W_i V_{i-1} + b_i and V_i = relu(U_i) hold exactly, which would hide a wrong weighting of
# them): every block computed by the naive from the engine's inputs, within the rounding bound of that block's own
# computation, derived from eps and its matrices (scripts/naive_bcd.py).
NAIVE_CHECK = {"n": 400, "n_test": 100, "warmup": 1}  # the float64 check: samples, test samples, plain sweeps first


class NaiveRun:
    """The naive implementation (scripts/naive_bcd.py) beside a case's trainer: started from the trainer's
    state, it sweeps and evaluates right after each of the engine's timed sweeps and evaluations, on the
    same data; where it does not apply to the case (``naive_bcd.applies``), it does nothing."""

    def __init__(self, naive, data, why_not: str | None) -> None:
        self.naive, self.data, self.why_not = naive, data, why_not
        self.sweeps: list[float] = []
        self.evals: list[float] = []

    @staticmethod
    def check_float64(case: Case) -> list[naive_bcd.BlockCheck]:
        """The naive's blocks against the engine's in float64 on the case's network with ``NAIVE_CHECK["n"]``
        random samples: after ``NAIVE_CHECK["warmup"]`` plain sweeps, one sweep in which the naive computes each
        block from the engine's inputs (``naive_bcd.compare_blocks``)."""
        small = replace(case, dtype="float64", n=min(case.n, NAIVE_CHECK["n"]), n_test=NAIVE_CHECK["n_test"])
        trainer, _, _ = build_case(small)
        for _ in range(NAIVE_CHECK["warmup"]):
            trainer.sweep()
        return naive_bcd.compare_blocks(trainer)

    @classmethod
    def start(cls, trainer, data, cfg) -> NaiveRun:
        why_not = naive_bcd.applies(cfg)
        naive = naive_bcd.NaiveThreeSplitting.from_trainer(trainer) if why_not is None else None
        return cls(naive, data, why_not)

    def step(self, device) -> None:
        """One timed sweep of the naive implementation and its evaluation."""
        if self.naive is not None:
            self.sweeps.append(timed(self.naive.sweep, device))
            self.evals.append(timed(lambda: self.naive.evaluate(self.data), device))

    def columns(self, case: Case, trainer, sweeps: list[float], evals: list[float]) -> dict:
        """The naive's seconds, its speed against the engine's ``sweeps`` and ``evals`` (median of the ratios
        of the pairs timed together), its largest relative difference from the engine after the timed sweeps in
        the case's dtype, and the float64 check (``check_float64``): the block closest to its derived bound
        (``naive_float64_*``), the largest difference; NaN where it does not apply."""
        if self.naive is None:
            return {
                "naive_seconds_per_sweep": math.nan, "naive_eval_seconds": math.nan, "speedup_sweep": math.nan,
                "speedup_total": math.nan, "total_ratio": math.nan, "naive_max_rel_diff": math.nan,
                "naive_max_rel_diff_block": "", "naive_check_sweeps": 0, "naive_float64_block": "",
                "naive_float64_diff": math.nan, "naive_float64_tolerance": math.nan, "naive_float64_ratio": math.nan,
                "naive_float64_max_diff": math.nan, "naive_float64_max_diff_block": "",
                "naive_check": f"not applicable: {self.why_not}",
            }  # fmt: skip
        differences = naive_bcd.relative_differences(self.naive.state_dict(), trainer.state_dict())
        worst = max(differences, key=lambda block: differences[block])
        self.naive = None  # its copy of the state, freed before the float64 check
        checks = self.check_float64(case)
        closest = max(checks, key=lambda check: check.ratio)
        largest = max(checks, key=lambda check: check.difference)
        finite = all(math.isfinite(value) for value in differences.values())
        pairs = list(zip(self.sweeps, self.evals, sweeps, evals, strict=True))
        speedup_total = statistics.median((ns + ne) / (s + e) for ns, ne, s, e in pairs)
        return {
            "naive_seconds_per_sweep": statistics.median(self.sweeps),
            "naive_eval_seconds": statistics.median(self.evals),
            "speedup_sweep": statistics.median(ns / s for ns, _, s, _ in pairs),
            "speedup_total": speedup_total, "total_ratio": 1 / speedup_total,
            "naive_max_rel_diff": differences[worst], "naive_max_rel_diff_block": worst,
            "naive_check_sweeps": len(self.sweeps), "naive_float64_block": closest.block,
            "naive_float64_diff": closest.difference, "naive_float64_tolerance": closest.tolerance,
            "naive_float64_ratio": closest.ratio, "naive_float64_max_diff": largest.difference,
            "naive_float64_max_diff_block": largest.block,
            "naive_check": "passed" if finite and all(check.passed for check in checks) else "failed",
        }  # fmt: skip


def memory_case(case: Case) -> dict:
    """The peak memory of one sweep and of one evaluation of ``case`` (with and without the gradient
    norm), attributable to the run (MiB).

    On the CPU the process must start with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``,
    as ``run_in_subprocess`` starts it): every tensor buffer is then its own mapping, unmapped when
    freed, so the resident set follows the live tensors. The high-water mark of each phase (reset
    through /proc/self/clear_refs) minus the resident set once every tensor is freed (PyTorch's
    libraries, every code path used) is the phase's peak. On CUDA: ``torch.cuda.max_memory_allocated``.
    Beside each peak, what ``bcd_cli.run.memory.estimate_for`` predicts for it before anything is allocated
    (``estimate_*_mb``) and the ratio estimate / measured (``estimate_*_ratio``; above 1: on the safe side).
    """
    import torch

    from bcd_cli.run import memory
    from bcd_cli.run.spec import resolve

    trainer, data, cfg = build_case(case)
    estimate = memory.estimate_for(resolve(cfg), data)
    device = data.X_train.device
    state = state_bytes(trainer, data) / 2**20
    cpu = device.type == "cpu"
    fixed = os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None
    peaks, resettable = [], True
    phases = (
        trainer.sweep,
        functools.partial(trainer.evaluate, data),
        functools.partial(trainer.evaluate, data, grad_norm=False),  # bcd-train grad_norm=false
    )
    for phase in phases:
        synchronize(device)
        if cpu:
            resettable = reset_high_water_mark()
        else:
            torch.cuda.reset_peak_memory_stats(device)
        phase()
        synchronize(device)
        peaks.append(status_mb("VmHWM") if cpu else torch.cuda.max_memory_allocated(device) / 2**20)
    del trainer, data, phase, phases  # every tensor of the case freed: what stays resident is PyTorch's own
    gc.collect()
    libraries = status_mb("VmRSS") if cpu else 0.0
    if not cpu:
        method = "torch.cuda.max_memory_allocated"
    else:
        method = "VmHWM per phase - RSS without tensors" + ("" if fixed else ", malloc threshold NOT fixed")
        method += "" if resettable else ", VmHWM NOT resettable (whole process)"
    measured = [peak - libraries for peak in peaks]
    trainer = cfg.trainer.name  # the baselines run through --set trainer=sgd (or adam)
    name = case.name if trainer == "bcd" else f"{trainer} {size_label(case.sizes)}"
    # the estimate of the evaluation that ran first: with the gradient norm when the case's config asks for it
    first_eval = estimate.eval_peak if cfg.grad_norm else estimate.eval_peak_without_grad_norm
    estimated = [estimate.sweep_peak / 2**20, first_eval / 2**20, estimate.eval_peak_without_grad_norm / 2**20]
    return {
        "case": name, "scheme": case.scheme if trainer == "bcd" else trainer, "sizes": size_label(case.sizes),
        "device": str(device), "dtype": cfg.dtype, "overrides": " ".join(case.extra), "n": case.n,
        "n_test": case.test_samples, "state_and_data_mb": state,
        "peak_sweep_mb": measured[0], "peak_eval_mb": measured[1],
        "peak_ratio": measured[0] / state, "eval_peak_ratio": measured[1] / state,
        "peak_eval_no_grad_mb": measured[2], "eval_no_grad_peak_ratio": measured[2] / state,
        "rss_libraries_mb": libraries,
        "memory_method": method,
        "estimate_state_and_data_mb": (estimate.state + estimate.data) / 2**20,
        "estimate_sweep_mb": estimated[0], "estimate_sweep_ratio": _ratio(estimated[0], measured[0]),
        "estimate_eval_mb": estimated[1], "estimate_eval_ratio": _ratio(estimated[1], measured[1]),
        "estimate_eval_no_grad_mb": estimated[2], "estimate_eval_no_grad_ratio": _ratio(estimated[2], measured[2]),
    }  # fmt: skip


def _ratio(estimate: float, measured: float) -> float:
    """estimate / measured; NaN where nothing was measured (a resident set of a few KiB can read as 0)."""
    return estimate / measured if measured > 0 else math.nan


def allocator_case(case: Case) -> dict:
    """The same peaks as ``memory_case``, and that of building the algorithm on the data, counted in
    PyTorch's CPU allocator (``bench.measured_peaks``: every allocation followed by its address until
    freed, through torch.profiler): exact bytes of tensors, without the resident set's page granularity,
    glibc's heap or the libraries; beside them the estimate's ratios to them (``estimate_*_alloc_ratio``).
    On CUDA ``memory_case`` is already exact: nothing to add."""
    from bcd_cli.run import memory
    from bcd_cli.run.spec import resolve
    from bcd_cli.run.train import build_trainer

    if case.device != "cpu":
        return {}
    run: dict = {}

    def load() -> None:  # (the data's own temporaries are over before a run estimates its memory)
        run["data"], run["cfg"] = case_data(case)

    def build() -> None:
        data, cfg = run["data"], run["cfg"]
        run["trainer"] = build_trainer(resolve(cfg), data)

    def evaluate(grad_norm: bool) -> None:
        run["trainer"].evaluate(run["data"], grad_norm=grad_norm)

    phases = {"load": load, "build": build, "sweep": lambda: run["trainer"].sweep(),
              "eval": lambda: evaluate(True), "eval_no_grad": lambda: evaluate(False)}  # fmt: skip
    peaks = {key: value / 2**20 for key, value in measured_peaks(phases).items()}
    estimate = memory.estimate_for(resolve(run["cfg"]), run["data"])
    estimated = {
        "build": estimate.build_peak / 2**20, "sweep": estimate.sweep_peak / 2**20,
        "eval": estimate.eval_peak / 2**20, "eval_no_grad": estimate.eval_peak_without_grad_norm / 2**20,
    }  # fmt: skip
    return (
        {f"alloc_{phase}_mb": peaks[phase] for phase in estimated}
        | {"estimate_build_mb": estimated["build"]}
        | {f"estimate_{phase}_alloc_ratio": _ratio(estimated[phase], peaks[phase]) for phase in estimated}
    )


# ------------------------------------------------------------------------------------------------ driver

SHOWN = [
    ("case", "case"), ("n", "n"), ("seconds_per_sweep", "s/sweep"),
    ("seconds_per_sweep_per_1000_samples", "s/sweep/1000 n"), ("sweep_gflop", "GFLOP"), ("sweep_min_gflop", "min"),
    ("sweep_gflops", "GFLOP/s"), ("gemm_gflops", "GEMM GFLOP/s"), ("ratio_to_gemm", "ratio"),
    ("ratio_to_gemm_min", "on min"), ("matrix_ops", "matrix ops"), ("eval_seconds", "eval s"),
    ("naive_seconds_per_sweep", "naive s/sweep"), ("naive_eval_seconds", "naive eval s"),
    ("speedup_sweep", "naive/engine sweep"), ("total_ratio", "engine/naive total"),
    ("naive_max_rel_diff", "naive diff"), ("naive_float64_ratio", "f64 diff/tol"),
    ("state_and_data_mb", "state+data MiB"),
    ("peak_sweep_mb", "peak sweep MiB"), ("peak_ratio", "peak/state"), ("peak_eval_mb", "peak eval MiB"),
    ("peak_eval_no_grad_mb", "eval, no grad MiB"), ("others_cpu_share", "others' CPU"),
]  # fmt: skip
# the targets the summary lines compare with
GEMM_TARGET = 0.85  # seconds of a sweep against its minimum work at the measured GEMM rate
TOTAL_RATIO_TARGET = 0.55  # seconds of sweep + evaluation against the naive implementation's
PEAK_TARGET = 1.3  # peak memory of a sweep against its state + data
GROWTH_TARGET = 1.0  # growth of the seconds per sweep in n against linear
# the memory table: each measured peak beside bcd_cli.run.memory's estimate of it and their ratio (estimate / measured)
# (with --memory-only on the CPU also the peaks counted in PyTorch's allocator, "alloc", and est/alloc)
SHOWN_MEMORY = [
    ("case", "case"), ("n", "n"), ("dtype", "dtype"), ("overrides", "overrides"),
    ("state_and_data_mb", "state+data MiB"),
    ("alloc_build_mb", "build alloc"), ("estimate_build_mb", "est."), ("estimate_build_alloc_ratio", "est/alloc"),
    ("peak_sweep_mb", "sweep MiB"), ("alloc_sweep_mb", "alloc"), ("estimate_sweep_mb", "est."),
    ("estimate_sweep_ratio", "est/peak"), ("estimate_sweep_alloc_ratio", "est/alloc"),
    ("peak_eval_mb", "eval MiB"), ("alloc_eval_mb", "alloc"), ("estimate_eval_mb", "est."),
    ("estimate_eval_ratio", "est/peak"), ("estimate_eval_alloc_ratio", "est/alloc"),
    ("peak_eval_no_grad_mb", "no grad MiB"), ("alloc_eval_no_grad_mb", "alloc"), ("estimate_eval_no_grad_mb", "est."),
    ("estimate_eval_no_grad_ratio", "est/peak"), ("estimate_eval_no_grad_alloc_ratio", "est/alloc"),
]  # fmt: skip


def memory_table(rows: list[dict]) -> str:
    """The measured peaks of ``rows`` beside their estimates (``SHOWN_MEMORY``), and the worst ratios."""
    import pandas as pd

    shown = [(key, label) for key, label in SHOWN_MEMORY if any(key in row for row in rows)]
    table = pd.DataFrame([[row.get(key) for key, _ in shown] for row in rows], columns=[label for _, label in shown])
    lines = [
        "peak memory measured (MiB: the resident set on the CPU, torch.cuda.max_memory_allocated on CUDA; alloc: "
        "PyTorch's CPU allocator) beside bcd_cli.run.memory's estimate (a ratio above 1: on the safe side)",
        table.to_string(index=False, float_format=lambda x: f"{x:.3g}"),
    ]
    for suffix, what in (("ratio", "est/peak"), ("alloc_ratio", "est/alloc")):
        ratios = [row[f"estimate_{phase}_{suffix}"] for row in rows for phase in ("sweep", "eval", "eval_no_grad")
                  if math.isfinite(row.get(f"estimate_{phase}_{suffix}", math.nan))]  # fmt: skip
        if ratios:
            lines.append(f"{what} from {min(ratios):.2f} to {max(ratios):.2f}")
    return "\n".join(lines)


def run_in_subprocess(case: Case, task: str) -> dict:
    """``time_case`` (task ``time``), ``memory_case`` (``memory``) or ``allocator_case`` (``allocator``) in a
    fresh interpreter: the memory high-water mark is the case's own, and the memory run starts with glibc's
    mmap threshold fixed (128 KiB) while the others keep the default allocator, as ``bcd-train`` runs."""
    command = [sys.executable, str(Path(__file__).resolve()), f"--{task}-case", json.dumps(asdict(case))]
    env = os.environ | ({"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)} if task == "memory" else {})
    result = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)
    if result.returncode != 0:
        raise SystemExit(f"case {case.name} failed in its {task} run (exit status {result.returncode})")
    return json.loads(result.stdout.strip().splitlines()[-1])


def select_cases(args: argparse.Namespace, cuda: bool) -> list[Case]:
    device = args.device if args.device != "auto" else None
    if args.quick:
        cases = [replace(QUICK, device=device or "cpu")]
    elif args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
        cases = [Case(args.scheme or "three", sizes, args.n or 8000, device=device or ("cuda" if cuda else "cpu"))]
    else:
        cases = []
        if device in (None, "cpu"):
            cases += STANDARD_CPU
        if device == "cuda" or (device is None and cuda):
            cases += STANDARD_GPU
        cases = [c for c in cases if args.scheme in (None, c.scheme)]
        if not cases:
            raise SystemExit(f"no standard case for --scheme {args.scheme} on {args.device}: give --sizes")
    changes = {"n": args.n, "n_test": args.n_test, "sweeps": args.sweeps, "warmup": args.warmup}
    changes |= {"dtype": args.dtype, "solve_dtype": args.solve_dtype, "extra": tuple(args.set) or None}
    cases = [replace(c, **{k: v for k, v in changes.items() if v is not None}) for c in cases]
    for case in cases:
        try:
            case.overrides()
        except ValueError as err:
            raise SystemExit(f"--sizes: {err}") from None
    return cases


def machine() -> dict:
    import torch

    return {
        "platform": platform.platform(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }  # fmt: skip


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scheme", choices=SCHEMES, help="default: every standard case; three with --sizes")
    parser.add_argument("--sizes", help="layer sizes, e.g. 784,1024,1024,10 (default: the standard cases)")
    parser.add_argument("--n", type=int, help="training samples (default: each case's)")
    parser.add_argument("--n-test", type=int, help="test samples of the evaluation (default: n // 6)")
    parser.add_argument("--sweeps", type=int, help="timed sweeps, median reported (default: 1 or 2, 5 with --sizes)")
    parser.add_argument("--warmup", type=int, help="untimed sweeps first (default: 1)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto: CPU, and CUDA too")
    parser.add_argument("--dtype", choices=["float32", "float64"], help="dtype of every tensor (default: float32)")
    parser.add_argument("--solve-dtype", choices=["float32", "float64"], help="Cholesky dtype (default: trainer's)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further bcd-train override for every case, e.g. trainer.state_solve_dtype=float64",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"one small case instead of the standard ones ({QUICK.name}, n={QUICK.n}, {QUICK.warmup} warm-up + "
        f"{QUICK.sweeps} timed sweeps, naive and memory included): well under a minute",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="folder of sweep.csv, sweep.json")
    parser.add_argument("--time-case", help=argparse.SUPPRESS)  # internal: time one case, print its row
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: measure one case's memory
    parser.add_argument("--allocator-case", help=argparse.SUPPRESS)  # internal: the same in PyTorch's allocator
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the peak memory of each case beside bcd_cli.run.memory's estimate (memory.csv, memory.json)",
    )
    args = parser.parse_args(argv)
    if args.quick and (args.sizes or args.scheme):
        parser.error("--quick runs its own case: leave out --sizes and --scheme")
    internal = {"time": args.time_case, "memory": args.memory_case, "allocator": args.allocator_case}
    for name, task in (("time", time_case), ("memory", memory_case), ("allocator", allocator_case)):
        if internal[name]:
            print(json.dumps(task(Case(**json.loads(internal[name])))))
            return []

    import pandas as pd
    import torch

    cuda = torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        raise SystemExit("--device cuda: CUDA is not available")
    rows = []
    if args.memory_only:
        for case in select_cases(args, cuda):
            print(f"{case.name}, n={case.n}, {case.device}: peak memory of a sweep and an evaluation", flush=True)
            rows.append(run_in_subprocess(case, "memory") | run_in_subprocess(case, "allocator"))
        print(memory_table(rows))
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(args.out / "memory.csv", index=False)
        (args.out / "memory.json").write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
        print(f"written: {args.out / 'memory.csv'}, {args.out / 'memory.json'}")
        return rows
    for case in select_cases(args, cuda):
        print(f"{case.name}, n={case.n}, {case.device}: {case.warmup} warm-up + {case.sweeps} timed sweeps", flush=True)
        rows.append(run_in_subprocess(case, "time") | run_in_subprocess(case, "memory"))
    table = pd.DataFrame([{label: row[key] for key, label in SHOWN} for row in rows])
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3g}"))
    print("\n".join(summary_lines(rows)))
    print(memory_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{k: v for k, v in row.items() if k != "gemm_rates"} for row in rows]).to_csv(
        args.out / "sweep.csv", index=False
    )
    report = {"machine": machine(), "rows": rows}
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out / 'sweep.csv'}, {args.out / 'sweep.json'}")
    failed = [row for row in rows if row["naive_check"] == "failed"]
    if failed:
        raise SystemExit("\n".join(
            f"{row['case']}, n={row['n']}: the naive implementation fails its check against the engine: "
            f"{naive_float64(row)}; after {row['naive_check_sweeps']} timed sweeps in {row['dtype']} its blocks are "
            f"within {row['naive_max_rel_diff']:.2e} of the engine's (block {row['naive_max_rel_diff_block']}; must be "
            "finite)"
            for row in failed
        ))  # fmt: skip
    return rows


def naive_float64(row: dict) -> str:
    """The float64 check of ``row``'s naive: the block closest to its derived tolerance and the largest difference."""
    return (
        f"float64, each block from the engine's inputs: {row['naive_float64_block']} differs by "
        f"{row['naive_float64_diff']:.2e} against its derived tolerance {row['naive_float64_tolerance']:.2e} (ratio "
        f"{row['naive_float64_ratio']:.1e}, the closest of all blocks), the largest difference "
        f"{row['naive_float64_max_diff']:.2e} ({row['naive_float64_max_diff_block']})"
    )


def _meets(ok: bool) -> str:
    return "meets" if ok else "misses"


def summary_lines(rows: list[dict]) -> list[str]:
    """Each row against the targets: the GEMM rate (on the executed and on the minimum work), the naive
    implementation, the peak memory; then, for each scheme and sizes timed at two n, the growth of the
    seconds per sweep against linear."""
    lines = []
    for row in rows:
        line = (
            f"{row['case']}, n={row['n']}: sweep at {row['ratio_to_gemm']:.2f} of the GEMM rate on the work it runs, "
            f"{row['ratio_to_gemm_min']:.2f} on the minimum work ({_meets(row['ratio_to_gemm_min'] >= GEMM_TARGET)} "
            f"the target {GEMM_TARGET} of the GEMM rate on the minimum work)"
        )
        if math.isfinite(row["total_ratio"]):
            line += (
                f"; sweep + evaluation at {row['total_ratio']:.2f}x the naive implementation's "
                f"({_meets(row['total_ratio'] <= TOTAL_RATIO_TARGET)} the target {TOTAL_RATIO_TARGET}x), "
                f"the sweep alone {1 / row['speedup_sweep']:.2f}x; the naive's blocks within "
                f"{row['naive_max_rel_diff']:.1e} of the engine's after the timed sweeps ({row['dtype']}); "
                f"{naive_float64(row)}: check {row['naive_check']}"
            )
        line += f"; peak {row['peak_ratio']:.2f}x state + data ({_meets(row['peak_ratio'] <= PEAK_TARGET)} the "
        line += f"{PEAK_TARGET}x target)"
        lines.append(line)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["case"], row["device"], row["dtype"], row["overrides"]), []).append(row)
    for (name, *_), group in groups.items():
        small, large = min(group, key=lambda r: r["n"]), max(group, key=lambda r: r["n"])
        if small["n"] == large["n"]:
            continue
        growth = (large["seconds_per_sweep"] / small["seconds_per_sweep"]) / (large["n"] / small["n"])
        peaks = ", ".join(f"{r['peak_ratio']:.2f}x at n={r['n']}" for r in sorted(group, key=lambda r: r["n"]))
        lines.append(
            f"{name}: seconds per sweep from n={small['n']} to n={large['n']} grow {growth:.2f}x linear "
            f"({_meets(growth <= GROWTH_TARGET)} the target <= {GROWTH_TARGET}); sweep peak / (state + data) "
            f"{peaks} (target {PEAK_TARGET}x)"
        )
    return lines


if __name__ == "__main__":
    main()
