"""Seconds per BCD sweep against the machine's measured GEMM rate; FLOP count and peak memory of the sweep.

    python scripts/bench_sweep.py                          # the standard cases (CPU; the GPU ones too with CUDA)
    python scripts/bench_sweep.py --scheme two             # the standard cases of one scheme
    python scripts/bench_sweep.py --scheme resnet --sizes 784,1024,1024,1024,10 --n 8000 --sweeps 3
    python scripts/bench_sweep.py --sizes 784,1500,1500,1500,10 --n 60000 --device cuda
    python scripts/bench_sweep.py --memory-only --device cpu          # peak memory beside its estimate only
    python scripts/bench_sweep.py --memory-only --sizes 784,1024,1024,1024,10 --n 8000 --set trainer=sgd

Each case runs in two fresh Python processes. The first builds the algorithm from the real
``conf/`` as ``bcd_cli.train.build_algorithm`` does, on random data (timing does not depend on
the values; the inner-iteration count of two-splitting does a little), runs ``--warmup``
sweeps, then times each of ``--sweeps`` sweeps and the evaluation ``bcd-train`` runs after
every sweep (``bcd_cli.train._evaluate``); the fp rate of every matrix-product shape of the
sweep is measured in the same process before the first timed sweep and after each one, and
each sweep is compared with the rates measured around it (the load of a shared machine
changes). FLOP counts come from the shapes (``three_splitting_terms``, ``two_splitting_terms``,
``resnet_terms``, ``evaluation_terms``). The second process measures the peak memory of one
sweep and of one evaluation (``memory_case``): on the CPU with glibc's mmap threshold fixed,
so that the resident set follows the live tensors (by default glibc keeps freed buffers under
32 MiB in its heap), minus what stays resident once every tensor is freed (PyTorch's own
libraries); on CUDA ``torch.cuda.max_memory_allocated``. Beside each peak stands what
``bcd_cli.memory.estimate_for`` predicts for it before anything is allocated, and their ratio.
``--memory-only`` skips the timing and adds a third process on the CPU, ``allocator_case``: the
same peaks counted in PyTorch's allocator (exact bytes of tensors; the resident set is coarse
for runs of a few MiB). The baselines run through ``--set trainer=sgd`` (or adam).

Results are printed and written as CSV and JSON to ``--out`` (default outputs/bench/).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

SCHEMES = ("three", "two", "resnet")
POWER_ITERATIONS = 30  # bcd_cli.engine.inner.spectral_norm_squared's default


# ------------------------------------------------------------------------------------------------ FLOP count


@dataclass(frozen=True)
class Term:
    """One kind of dense work in a block update, done ``calls`` times.

    op: ``gemm`` / ``gram`` / ``matvec``: an (m x k) by (k x n) product, 2 m k n flops (a Gram
    product X X^T runs as a full GEMM, so it is counted as one); ``cholesky``: the factorisation
    of an m x m SPD matrix, m^3/3; ``solve``: the two triangular solves with that factor for n
    right-hand sides, 2 m^2 n.
    """

    block: str  # the paper's block name (V3, U3, W3) or "eval"
    op: str
    what: str
    m: int
    k: int = 0
    n: int = 0
    calls: int = 1

    @property
    def flops(self) -> float:
        if self.op == "cholesky":
            return self.calls * self.m**3 / 3
        if self.op == "solve":
            return self.calls * 2.0 * self.m**2 * self.n
        return self.calls * 2.0 * self.m * self.k * self.n


def _weights_block(i: int, d: int, m: int, n: int) -> list[Term]:
    """The closed-form W_i block (``blocks.update_weights``, r = 0 or ridge): input width d, output m."""
    return [
        Term(f"W{i}", "gram", "V V^T", d, n, d),
        Term(f"W{i}", "gemm", "U V^T", m, n, d),
        Term(f"W{i}", "cholesky", "H = rho [V;1][V;1]^T + alpha I", d + 1),
        Term(f"W{i}", "solve", "Theta H = G", d + 1, n=m),
    ]


def _hidden_state_block(i: int, m: int, p: int, n: int) -> list[Term]:
    """The closed-form V_i block (``blocks.update_hidden_state``, s = 0 or ridge): width m, next layer's p.

    H = gamma I + rho W^T W (m x m) is factorised when that is cheaper; otherwise, when
    p^2 + 2 p m < m^2 (``linalg.shifted_gram_solve``), its Woodbury form: K = gamma I + rho W W^T
    (p x p), R = K^-1 (W G), V = (G - rho W^T R) / gamma.
    """
    terms = [
        Term(f"V{i}", "gemm", "W^T U_next", m, p, n),
        Term(f"V{i}", "matvec", "W^T b_next", m, p, 1),
    ]
    if p * p + 2 * p * m < m * m:
        return terms + [
            Term(f"V{i}", "gemm", "W W^T", p, m, p),
            Term(f"V{i}", "gemm", "W G", p, m, n),
            Term(f"V{i}", "cholesky", "K = gamma I + rho W W^T", p),
            Term(f"V{i}", "solve", "K R = W G", p, n=n),
            Term(f"V{i}", "gemm", "G - rho W^T R", m, p, n),
        ]
    return terms + [
        Term(f"V{i}", "gemm", "W^T W", m, p, m),
        Term(f"V{i}", "cholesky", "H = gamma I + rho W^T W", m),
        Term(f"V{i}", "solve", "H V = G", m, n=n),
    ]


def three_splitting_terms(sizes: Sequence[int], n: int) -> list[Term]:
    """The dense work of one sweep of Algorithm 2 (``ThreeSplittingBCD.sweep``), layers N down to 1.

    With d = d_{i-1} (input), m = d_i (output), p = d_{i+1} and n samples, layer i costs:

    - V_i (i < N): W^T U_{i+1} (m x p by p x n); W^T b_{i+1} (matvec); W^T W (m x p by p x m);
      Cholesky of H = gamma I + rho W^T W (m x m); H V = G, two triangular solves, n right-hand sides;
      or, for a narrow next layer, the Woodbury form (``_hidden_state_block``); V_N is elementwise.
    - U_i: W_i V_{i-1} + b_i (m x d by d x n); the prox itself is elementwise;
    - W_i: the Gram product V V^T (d x n by n x d, run as a full GEMM); U V^T (m x n by n x d);
      Cholesky of the (d+1) x (d+1) matrix H; Theta H = G, m right-hand sides.

    Not counted: elementwise work (activations, proxes, sums, ||P^k - P^(k-1)||^2), O(d n) each.
    """
    N = len(sizes) - 1
    terms: list[Term] = []
    for l in reversed(range(N)):
        i, d, m = l + 1, sizes[l], sizes[l + 1]
        if l < N - 1:
            terms += _hidden_state_block(i, m, sizes[l + 2], n)
        terms.append(Term(f"U{i}", "gemm", "W V_prev + b", m, d, n))
        terms += _weights_block(i, d, m, n)
    return terms


def resnet_terms(sizes: Sequence[int], n: int) -> list[Term]:
    """The dense work of one sweep of Algorithm 3 (``ResNetBCD``): that of Algorithm 2 on the same sizes.

    The residual terms only change the targets of the V_i and U_i blocks (the weight of
    ||V - target||^2 becomes 2 gamma, the target gains V_{i-1} and V_{i+1} - sigma(U_{i+1})):
    elementwise work, so every product, factorisation and solve is that of ``three_splitting_terms``.
    """
    return three_splitting_terms(sizes, n)


def two_splitting_terms(
    sizes: Sequence[int], n: int, inner: Sequence[tuple[int, int]] | None = None, *, inner_iters: int = 20
) -> list[Term]:
    """The dense work of one sweep of Algorithm 1 (``TwoSplittingBCD.sweep``) with a nonlinear sigma
    on every hidden layer (ReLU) and sigma_N = Id.

    With d = d_{i-1}, m = d_i, p = d_{i+1} and n samples, layer i costs:

    - its target: W_i V_{i-1} + b_i (m x d by d x n), for V_i (i < N) and V_N alike;
    - V_N: elementwise. V_{N-1} (sigma_N = Id): the closed form of three-splitting's V block
      (W^T V_N, W^T b, W^T W, Cholesky (m x m), solves with n right-hand sides);
    - V_i, i < N-1 (``blocks.update_hidden_state_nonlinear``): power iteration for ||W_{i+1}||^2,
      30 x 2 matvecs (p x m); then per inner evaluation of the smooth part W_{i+1} V + b
      (p x m by m x n) and per gradient W_{i+1}^T residual (m x p by p x n);
    - W_N (sigma_N = Id): the closed form of three-splitting's W block (V V^T, V_N V^T, Cholesky, solves);
    - W_i, i < N (``blocks.update_weights_nonlinear``): power iteration for ||V_{i-1}||^2, 30 x 2
      matvecs (d x n); per smooth evaluation W V_{i-1} + b (m x d by d x n) and per gradient
      residual V_{i-1}^T (m x n by n x d).

    ``inner`` gives (smooth evaluations, gradient evaluations) of each nonlinear block in the
    order the sweep visits them (W_{N-1}, then V_i, W_i for i = N-2 .. 1), as measured by
    ``count_inner_steps``; the proximal-gradient solver (``inner.prox_gradient``) evaluates the
    smooth part once at the start and once per trial step, the gradient once per iteration.
    Without ``inner``: ``inner_iters`` iterations, each accepting its first trial, i.e.
    (inner_iters + 1, inner_iters) per block. Elementwise work is not counted.
    """
    N = len(sizes) - 1
    visits = [(i, kind) for i in range(N - 1, 0, -1) for kind in ("V", "W") if not (kind == "V" and i == N - 1)]
    counts = list(inner) if inner is not None else [(inner_iters + 1, inner_iters)] * len(visits)
    if len(counts) != len(visits):
        raise ValueError(f"{len(counts)} inner-solver counts for the {len(visits)} nonlinear blocks of {sizes}")
    nonlinear = dict(zip(visits, counts, strict=True))
    terms: list[Term] = []
    for l in reversed(range(N)):
        i, d, m = l + 1, sizes[l], sizes[l + 1]
        terms.append(Term(f"V{i}", "gemm", "W V_prev + b (target)", m, d, n))
        if i == N - 1:
            terms += _hidden_state_block(i, m, sizes[l + 2], n)
        elif i < N - 1:
            p = sizes[l + 2]
            smooth, grad = nonlinear[(i, "V")]
            terms += [
                Term(f"V{i}", "matvec", "power iteration on W_next", p, m, 1, calls=POWER_ITERATIONS),
                Term(f"V{i}", "matvec", "power iteration on W_next^T", m, p, 1, calls=POWER_ITERATIONS),
                Term(f"V{i}", "gemm", "W_next V + b_next (smooth part)", p, m, n, calls=smooth),
                Term(f"V{i}", "gemm", "W_next^T residual (gradient)", m, p, n, calls=grad),
            ]
        if i == N:
            terms += _weights_block(i, d, m, n)
        else:
            smooth, grad = nonlinear[(i, "W")]
            terms += [
                Term(f"W{i}", "matvec", "power iteration on V_prev", d, n, 1, calls=POWER_ITERATIONS),
                Term(f"W{i}", "matvec", "power iteration on V_prev^T", n, d, 1, calls=POWER_ITERATIONS),
                Term(f"W{i}", "gemm", "W V_prev + b (smooth part)", m, d, n, calls=smooth),
                Term(f"W{i}", "gemm", "residual V_prev^T (gradient)", m, n, d, calls=grad),
            ]
    return terms


def evaluation_terms(sizes: Sequence[int], n: int, n_test: int, *, gradient: bool = True) -> list[Term]:
    """The dense work of the evaluation ``bcd-train`` runs after every sweep (``train._evaluate``).

    Per layer (m = d_i, d = d_{i-1}): the objective's W_i V_{i-1} + b_i (m x d by d x n); with
    ``gradient`` (a quadratic regularizer: ||grad L|| by autograd) its backward, W_i's gradient
    (m x n by n x d) and, for i > 1, V_{i-1}'s (d x m by m x n; V_0 = X is data); the network's
    forward pass on the training data (m x d by d x n) and on the test data (n_test columns).
    Every scheme's objective has exactly one product W_i V_{i-1} per layer.
    """
    terms: list[Term] = []
    for l in range(len(sizes) - 1):
        d, m = sizes[l], sizes[l + 1]
        terms.append(Term("eval", "gemm", "objective: W V + b", m, d, n))
        if gradient:
            terms.append(Term("eval", "gemm", "backward: dU V^T", m, n, d))
            if l > 0:
                terms.append(Term("eval", "gemm", "backward: W^T dU", d, m, n))
        terms.append(Term("eval", "gemm", "forward pass, training data", m, d, n))
        if n_test:
            terms.append(Term("eval", "gemm", "forward pass, test data", m, d, n_test))
    return terms


def scheme_terms(
    scheme: str, sizes: Sequence[int], n: int, inner: Sequence[tuple[int, int]] | None = None
) -> list[Term]:
    """The terms of one sweep of ``scheme`` (three, two or resnet)."""
    if scheme == "two":
        return two_splitting_terms(sizes, n, inner)
    return resnet_terms(sizes, n) if scheme == "resnet" else three_splitting_terms(sizes, n)


def total_flops(terms: Sequence[Term], ops: Sequence[str] | None = None) -> float:
    return sum(t.flops for t in terms if ops is None or t.op in ops)


# ------------------------------------------------------------------------------------------------ cases


@dataclass
class Case:
    """One benchmark case: a scheme (three, two, resnet) on a network of layer sizes, n training samples."""

    scheme: str
    sizes: list[int]
    n: int
    device: str = "cpu"
    sweeps: int = 5
    warmup: int = 1
    n_test: int | None = None  # default: n // 6, MNIST's 10000 test images for 60000 training ones
    dtype: str = "float32"
    solve_dtype: str | None = None  # default: the trainer's (conf/trainer/bcd.yaml)
    extra: tuple[str, ...] = ()  # further bcd-train overrides, e.g. trainer.state_solve_dtype=float64

    @property
    def name(self) -> str:
        return f"{self.scheme} {size_label(self.sizes)}"

    @property
    def test_samples(self) -> int:
        return self.n // 6 if self.n_test is None else self.n_test


STANDARD_CPU = [
    Case("three", [784, 1024, 1024, 1024, 10], 8000),
    Case("three", [784] + [600] * 10 + [10], 8000),
    Case("two", [784, 1024, 1024, 1024, 10], 8000, sweeps=2),
    Case("resnet", [784, 1024, 1024, 1024, 10], 8000),  # width 1024, two residual layers
]
STANDARD_GPU = [
    Case("three", [784] + [600] * 10 + [10], 60000, device="cuda"),
    Case("three", [784, 1500, 1500, 1500, 10], 60000, device="cuda"),
]


def size_label(sizes: Sequence[int]) -> str:
    """784-1024x3-10 for [784, 1024, 1024, 1024, 10]: runs of equal hidden widths shortened."""
    parts: list[str] = []
    hidden = list(sizes[1:-1])
    while hidden:
        run = next((k for k, w in enumerate(hidden) if w != hidden[0]), len(hidden))
        parts.append(f"{hidden[0]}x{run}" if run > 1 else str(hidden[0]))
        hidden = hidden[run:]
    return "-".join([str(sizes[0]), *parts, str(sizes[-1])])


def overrides(case: Case) -> list[str]:
    """The ``bcd-train`` overrides of ``case``'s network and scheme."""
    hidden = case.sizes[1:-1]
    if case.scheme == "resnet":
        if len(hidden) < 2 or len(set(hidden)) != 1:
            raise SystemExit(f"--scheme resnet needs sizes d0,w,...,w,classes (one width, twice or more): {case.sizes}")
        model = ["model=resnet", f"model.width={hidden[0]}", f"model.depth={len(hidden) - 1}"]
    else:
        model = [f"splitting={case.scheme}", f"model.widths=[{','.join(map(str, hidden))}]"]
    solve = [f"trainer.solve_dtype={case.solve_dtype}"] if case.solve_dtype else []
    return [*model, f"device={case.device}", f"dtype={case.dtype}", *solve, *case.extra]


def build_case(case: Case):
    """(algorithm, loss, data, cfg) of ``case``: random data, the algorithm built by ``train.build_algorithm``."""
    from bcd_cli.config import DTYPES
    from bcd_cli.train import build_algorithm

    data, cfg = case_data(case)
    algorithm, loss = build_algorithm(cfg, data, data.X_train.device, DTYPES[cfg.dtype])
    return algorithm, loss, data, cfg


def case_data(case: Case):
    """(data, cfg) of ``case``: its composed and validated config, random data of its shape on its device."""
    import torch
    from hydra import compose, initialize_config_dir

    from bcd_cli.app import config_dir
    from bcd_cli.config import DTYPES, resolve_device, validate
    from bcd_cli.data import Dataset

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides(case))
    validate(cfg)
    device, dtype = resolve_device(cfg), DTYPES[cfg.dtype]
    gen = torch.Generator().manual_seed(0)
    d0, classes = case.sizes[0], case.sizes[-1]

    def split(n: int):
        X = torch.rand(d0, n, generator=gen, dtype=dtype).to(device)
        y = torch.randint(0, classes, (n,), generator=gen).to(device)
        return X, torch.nn.functional.one_hot(y, classes).T.to(dtype).contiguous(), y

    return Dataset("random", *split(case.n), *split(case.test_samples), n_classes=classes), cfg


@contextlib.contextmanager
def count_inner_steps() -> Iterator[list[list[int]]]:
    """Records [smooth evaluations, gradient evaluations] of every call of the proximal-gradient
    inner solver (``inner.prox_gradient``, as ``blocks`` calls it), in call order.

    Instrumentation only: wraps the function object ``blocks`` looks up, restored on exit.
    """
    from bcd_cli.engine import blocks

    calls: list[list[int]] = []
    original = blocks.prox_gradient

    def counted(smooth, gradient, x0, **kwargs):
        tally = [0, 0]
        calls.append(tally)

        def counted_smooth(x):
            tally[0] += 1
            return smooth(x)

        def counted_gradient(x, cache):
            tally[1] += 1
            return gradient(x, cache)

        return original(counted_smooth, counted_gradient, x0, **kwargs)

    blocks.prox_gradient = counted
    try:
        yield calls
    finally:
        blocks.prox_gradient = original


# ------------------------------------------------------------------------------------------------ measurement


def _status_mb(key: str) -> float:
    """VmRSS or VmHWM of this process, in MiB (Linux)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{key}:\s+(\d+) kB", text, re.M).group(1)) / 1024  # type: ignore[union-attr]


def _reset_high_water_mark() -> bool:
    """Resets VmHWM to the current resident set (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process) so far (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # guest: in user
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gemm_timings(terms: Sequence[Term], device, dtype) -> dict[tuple[int, int, int], float]:
    """Seconds per product of every distinct (m x k) by (k x n) shape among ``terms``' GEMM and Gram
    terms, into a preallocated output, timed after one untimed product (small shapes: the mean of several)."""
    import torch

    timings = {}
    for m, k, n in sorted({(t.m, t.k, t.n) for t in terms if t.op in ("gemm", "gram")}):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        calls = max(1, min(50, int(2e8 / (2 * m * k * n))))  # ~0.2 GFLOP per timing at least
        torch.matmul(a, b, out=out)
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b, out=out)
        _sync(device)
        timings[(m, k, n)] = (time.perf_counter() - start) / calls
    return timings


def gemm_bound_rate(terms: Sequence[Term], seconds: dict[tuple[int, int, int], float]) -> float:
    """GFLOP/s of the products among ``terms`` if each ran at its measured speed (``seconds`` per product
    of its shape): their flops over the sum of their times."""
    products = [t for t in terms if t.op in ("gemm", "gram")]
    return total_flops(products) / sum(t.calls * seconds[(t.m, t.k, t.n)] for t in products) / 1e9


def state_bytes(algorithm, data) -> int:
    """Bytes of the BCD state (W, b, V_1.., U; for the SGD/Adam baselines W and b, and their gradients and
    optimizer state once they exist) plus the data (X, Y, labels, train and test)."""
    if hasattr(algorithm, "optimizer"):
        params = [*algorithm.W, *algorithm.b]
        moments = [v for state in algorithm.optimizer.state.values() for v in state.values() if hasattr(v, "numel")]
        blocks = [*params, *(p.grad for p in params if p.grad is not None), *moments]
    else:
        blocks = algorithm.blocks()
    tensors = [*blocks, data.X_train, data.Y_train, data.y_train, data.X_test, data.Y_test, data.y_test]
    return sum(t.numel() * t.element_size() for t in tensors)


def time_case(case: Case) -> dict:
    """Times ``case`` in this process: warm-up, then each timed sweep and the evaluation after it, with
    the GEMM rates of the sweep's shapes measured before the first timed sweep and after each (the load
    of a shared machine changes: each sweep is compared with the rates measured around it)."""
    import torch

    from bcd_cli.train import _evaluate  # the evaluation bcd-train runs after every sweep

    load_before = os.getloadavg()[0]
    algorithm, loss, data, cfg = build_case(case)
    device, dtype = data.X_train.device, data.X_train.dtype
    shapes = scheme_terms(case.scheme, case.sizes, case.n)  # the shapes do not depend on the inner counts
    with count_inner_steps() as inner_calls:
        for _ in range(case.warmup):
            algorithm.sweep()
            _evaluate(algorithm, loss, data)
        slots = [gemm_timings(shapes, device, dtype)]
        sweep_seconds, eval_seconds, inner_per_sweep = [], [], []
        faults = 0  # page faults (fresh memory) during the sweeps alone
        machine_busy, own_busy, started = *_cpu_seconds(), time.perf_counter()
        for _ in range(case.sweeps):
            done = len(inner_calls)
            _sync(device)
            faults -= resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            start = time.perf_counter()
            algorithm.sweep()
            _sync(device)
            sweep_seconds.append(time.perf_counter() - start)
            faults += resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            inner_per_sweep.append([(s, g) for s, g in inner_calls[done:]])
            slots.append(gemm_timings(shapes, device, dtype))
            start = time.perf_counter()
            _evaluate(algorithm, loss, data)
            _sync(device)
            eval_seconds.append(time.perf_counter() - start)
        faults /= case.sweeps
        machine_now, own_now = _cpu_seconds()
        capacity = (time.perf_counter() - started) * (os.cpu_count() or 1)
        others = (machine_now - machine_busy - (own_now - own_busy)) / capacity  # the other processes' share
    load_after = os.getloadavg()[0]

    sizes, n = case.sizes, case.n
    terms = [scheme_terms(case.scheme, sizes, n, inner or None) for inner in inner_per_sweep]
    flops = [total_flops(t) for t in terms]
    achieved = [f / s / 1e9 for f, s in zip(flops, sweep_seconds, strict=True)]
    around = [math.sqrt(gemm_bound_rate(t, slots[k]) * gemm_bound_rate(t, slots[k + 1])) for k, t in enumerate(terms)]
    gradient = algorithm.reg_w.quadratic and algorithm.reg_v.quadratic  # as BCDScheme.objective decides
    eval_flops = total_flops(evaluation_terms(sizes, n, case.test_samples, gradient=gradient))
    eval_s = statistics.median(eval_seconds)
    two = case.scheme == "two"
    by_op = {op: total_flops(terms[0], [op]) / 1e9 for op in ("gemm", "gram", "matvec", "cholesky", "solve")}
    rates = []  # per product shape (m x k) by (k x cols): the median over every measurement
    for m, k, cols in slots[0]:
        seconds = statistics.median(slot[(m, k, cols)] for slot in slots)
        rates.append({"m": m, "k": k, "n": cols, "gflops": 2 * m * k * cols / seconds / 1e9})
    return {
        "case": case.name, "scheme": case.scheme, "sizes": size_label(sizes), "device": str(device),
        "dtype": cfg.dtype, "solve_dtype": cfg.trainer.solve_dtype,
        "state_solve_dtype": cfg.trainer.get("state_solve_dtype") or cfg.dtype,
        "matmul_precision": cfg.device.get("matmul_precision", "highest"), "overrides": " ".join(case.extra),
        "n": n, "n_test": case.test_samples,
        "threads": torch.get_num_threads(), "warmup": case.warmup, "sweeps": case.sweeps,
        "seconds_per_sweep": statistics.median(sweep_seconds),
        "seconds_min": min(sweep_seconds), "seconds_max": max(sweep_seconds),
        "sweep_gflop": statistics.median(flops) / 1e9, "sweep_gflops": statistics.median(achieved),
        "gemm_gflops": statistics.median(around),
        "ratio_to_gemm": statistics.median(a / g for a, g in zip(achieved, around, strict=True)),
        **{f"gflop_{op}": value for op, value in by_op.items()},
        "inner_steps": statistics.median(sum(g for _, g in c) for c in inner_per_sweep) if two else 0,
        "inner_trials": statistics.median(sum(s for s, _ in c) for c in inner_per_sweep) if two else 0,
        "eval_seconds": eval_s, "eval_gflop": eval_flops / 1e9, "eval_gflops": eval_flops / eval_s / 1e9,
        "page_faults_per_sweep": faults, "state_and_data_mb": state_bytes(algorithm, data) / 2**20,
        "process_peak_mb": _status_mb("VmHWM"), "others_cpu_share": max(others, 0.0),
        "load_before": load_before, "load_after": load_after,
        "gemm_rates": rates,
    }  # fmt: skip


def memory_case(case: Case) -> dict:
    """The peak memory of one sweep and of one evaluation of ``case`` (with and without the gradient
    norm), attributable to the run (MiB).

    On the CPU the process must start with glibc's mmap threshold fixed (``MALLOC_MMAP_THRESHOLD_``,
    as ``run_in_subprocess`` starts it): every tensor buffer is then its own mapping, unmapped when
    freed, so the resident set follows the live tensors. The high-water mark of each phase (reset
    through /proc/self/clear_refs) minus the resident set once every tensor is freed (PyTorch's
    libraries, every code path used) is the phase's peak. On CUDA: ``torch.cuda.max_memory_allocated``.
    Beside each peak, what ``bcd_cli.memory.estimate_for`` predicts for it before anything is allocated
    (``estimate_*_mb``) and the ratio estimate / measured (``estimate_*_ratio``; above 1: on the safe side).
    """
    import torch

    from bcd_cli import memory
    from bcd_cli.train import _evaluate

    algorithm, loss, data, cfg = build_case(case)
    estimate = memory.estimate_for(cfg, data)
    device = data.X_train.device
    state = state_bytes(algorithm, data) / 2**20
    cpu = device.type == "cpu"
    fixed = os.environ.get("MALLOC_MMAP_THRESHOLD_") is not None
    peaks, resettable = [], True
    phases = (
        algorithm.sweep,
        functools.partial(_evaluate, algorithm, loss, data),
        functools.partial(_evaluate, algorithm, loss, data, grad_norm=False),  # bcd-train grad_norm=false
    )
    for phase in phases:
        _sync(device)
        if cpu:
            resettable = _reset_high_water_mark()
        else:
            torch.cuda.reset_peak_memory_stats(device)
        phase()
        _sync(device)
        peaks.append(_status_mb("VmHWM") if cpu else torch.cuda.max_memory_allocated(device) / 2**20)
    del algorithm, loss, data, phase, phases  # every tensor of the case freed: what stays resident is PyTorch's own
    gc.collect()
    libraries = _status_mb("VmRSS") if cpu else 0.0
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
    PyTorch's CPU allocator (``bcd_cli.memory.measured_peaks``: every allocation followed by its address until
    freed, through torch.profiler): exact bytes of tensors, without the resident set's page granularity,
    glibc's heap or the libraries; beside them the estimate's ratios to them (``estimate_*_alloc_ratio``).
    On CUDA ``memory_case`` is already exact: nothing to add."""
    from bcd_cli import memory
    from bcd_cli.config import DTYPES
    from bcd_cli.train import _evaluate, build_algorithm

    if case.device != "cpu":
        return {}
    run: dict = {}

    def load() -> None:  # (the data's own temporaries are over before a run estimates its memory)
        run["data"], run["cfg"] = case_data(case)

    def build() -> None:
        data, cfg = run["data"], run["cfg"]
        run["algorithm"], run["loss"] = build_algorithm(cfg, data, data.X_train.device, DTYPES[cfg.dtype])

    def evaluate(grad_norm: bool) -> None:
        _evaluate(run["algorithm"], run["loss"], run["data"], grad_norm=grad_norm)

    phases = {"load": load, "build": build, "sweep": lambda: run["algorithm"].sweep(),
              "eval": lambda: evaluate(True), "eval_no_grad": lambda: evaluate(False)}  # fmt: skip
    peaks = {key: value / 2**20 for key, value in memory.measured_peaks(phases).items()}
    estimate = memory.estimate_for(run["cfg"], run["data"])
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
    ("case", "case"), ("n", "n"), ("seconds_per_sweep", "s/sweep"), ("sweep_gflop", "GFLOP"),
    ("sweep_gflops", "GFLOP/s"), ("gemm_gflops", "GEMM GFLOP/s"), ("ratio_to_gemm", "ratio"),
    ("inner_steps", "inner"), ("eval_seconds", "eval s"), ("state_and_data_mb", "state+data MiB"),
    ("peak_sweep_mb", "peak sweep MiB"), ("peak_ratio", "peak/state"), ("peak_eval_mb", "peak eval MiB"),
    ("peak_eval_no_grad_mb", "eval, no grad MiB"), ("others_cpu_share", "others' CPU"),
]  # fmt: skip
# the memory table: each measured peak beside bcd_cli.memory's estimate of it and their ratio (estimate / measured)
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
        "PyTorch's CPU allocator) beside bcd_cli.memory's estimate (a ratio above 1: on the safe side)",
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
    if args.sizes:
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
    return [replace(c, **{k: v for k, v in changes.items() if v is not None}) for c in cases]


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
    parser.add_argument("--sweeps", type=int, help="timed sweeps, median reported (default: 5; 2 for two-splitting)")
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
    parser.add_argument("--out", type=Path, default=Path("outputs/bench"), help="folder of sweep.csv, sweep.json")
    parser.add_argument("--time-case", help=argparse.SUPPRESS)  # internal: time one case, print its row
    parser.add_argument("--memory-case", help=argparse.SUPPRESS)  # internal: measure one case's memory
    parser.add_argument("--allocator-case", help=argparse.SUPPRESS)  # internal: the same in PyTorch's allocator
    parser.add_argument(
        "--memory-only",
        action="store_true",
        help="only the peak memory of each case beside bcd_cli.memory's estimate (memory.csv, memory.json)",
    )
    args = parser.parse_args(argv)
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
    for row in rows:
        time_ok = "meets" if row["ratio_to_gemm"] >= 0.7 else "misses"
        memory_ok = "meets" if row["peak_ratio"] <= 1.3 else "misses"
        print(f"{row['case']}: sweep at {row['ratio_to_gemm']:.0%} of the GEMM rate ({time_ok} the 70% target); "
              f"peak {row['peak_ratio']:.2f}x state + data ({memory_ok} the 1.3x target)")  # fmt: skip
    print(memory_table(rows))
    args.out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame([{k: v for k, v in row.items() if k != "gemm_rates"} for row in rows]).to_csv(
        args.out / "sweep.csv", index=False
    )
    report = {"machine": machine(), "rows": rows}
    (args.out / "sweep.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {args.out / 'sweep.csv'}, {args.out / 'sweep.json'}")
    return rows


if __name__ == "__main__":
    main()
