"""The work a sweep really does, counted as it runs, and the cases the benchmark scripts build.

``record_matrix_ops`` follows the dense linear algebra PyTorch dispatches while it is active (a
``TorchDispatchMode``): every matrix product, Cholesky factorisation and triangular solve, with its
shape and its textbook FLOP count (``MatrixOp``), and the least work that gives the same result (half
for a self-product V V^T or W^T W, whose result is symmetric). A sweep recorded this way is counted
exactly as the engine ran it: the Woodbury form or the d x d system of each V block (``linalg.shifted_gram_solve``),
the inner iterations of two-splitting's nonlinear blocks, the column chunks of the solves and of the
evaluation, the backward pass of the gradient norm. Elementwise work (activations, proxes, sums) is
not counted: O(d n) per block against the O(d^2 n) of the products. ``time_products`` measures the
machine's rate for each product shape so recorded, ``gemm_bound_seconds`` the time the recorded
products would take at those rates.

The rest serves ``scripts/bench_sweep.py`` and ``scripts/profile_sweep.py``: a benchmark ``Case``
(a scheme on a network, n random samples) built from the real ``conf/`` as ``bcd-train`` builds it,
the evaluation ``bcd-train`` runs after each sweep, and readings of this process's memory and of the
machine's CPU time. ``measured_peaks`` counts the bytes PyTorch's CPU allocator holds during each phase of a
run, which ``tests/test_memory.py`` and ``bench_sweep.py --memory-only`` set beside ``bcd_cli.run.memory``'s
estimate.
"""

from __future__ import annotations

import copy
import os
import resource
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bcd_cli.engine.parallel import synchronize

aten = torch.ops.aten

PRODUCT, CHOLESKY, SOLVE, EIGENVALUES = "product", "cholesky", "triangular solve", "eigenvalues"
KINDS = (PRODUCT, CHOLESKY, SOLVE, EIGENVALUES)


# ------------------------------------------------------------------------------------------------ the count


@dataclass(frozen=True)
class MatrixOp:
    """One dense operation as it was dispatched, and its FLOP count.

    ``product``: an (m x k) by (k x n) product (``mm``, ``addmm``, ``mv`` with n = 1, a dot product with
    m = n = 1, ``bmm`` counted per batch entry), 2 m k n. ``symmetric`` marks a self-product, whose second
    operand is the transpose of the first (the same memory with shape and strides swapped: V @ V.T,
    W.T @ W): its result is symmetric, so half of it determines the rest.
    ``cholesky``: the factorisation of an m x m matrix, m^3 / 3. ``triangular solve``: one m x m triangle
    against n right-hand sides, m^2 n (``cholesky_solve``, two triangles, is recorded as two).
    ``eigenvalues``: the eigenvalues of an m x m symmetric matrix, 4 m^3 / 3 (its reduction to
    tridiagonal form). k is m for all but the products.
    """

    kind: str
    m: int
    k: int
    n: int
    symmetric: bool = False

    @property
    def flops(self) -> float:
        """The FLOPs of the operation as it ran: a self-product is counted in full, 2 m k m."""
        if self.kind == PRODUCT:
            return 2.0 * self.m * self.k * self.n
        if self.kind == CHOLESKY:
            return self.m**3 / 3
        if self.kind == SOLVE:
            return float(self.m * self.m * self.n)
        return 4 * self.m**3 / 3

    @property
    def minimum_flops(self) -> float:
        """The least work that gives the operation's result: for a self-product m^2 k, half of the 2 m k m it
        runs (its upper triangle and diagonal take m (m + 1) k; the diagonal's m k is left out, so that a Gram
        product V V^T computed in row blocks V_i, the diagonal blocks V_i V_i^T as self-products and each
        block V_i V_j^T above the diagonal as a plain product, adds up to d^2 n as the whole self-product
        does); ``flops`` for every other operation."""
        if self.kind == PRODUCT and self.symmetric:
            return float(self.m * self.m * self.k)
        return self.flops


def is_transpose_of(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the matrix (or batch of matrices) ``b`` is ``a`` transposed in the same memory: the same first
    element, the last two sizes and strides swapped, any batch dimension alike."""
    if a.dim() < 2 or a.dim() != b.dim() or a.data_ptr() != b.data_ptr():
        return False
    swapped = (a.shape[-1], a.shape[-2]) == tuple(b.shape[-2:]) and (a.stride(-1), a.stride(-2)) == b.stride()[-2:]
    return swapped and a.shape[:-2] == b.shape[:-2] and a.stride()[:-2] == b.stride()[:-2]


def _product(a: torch.Tensor, b: torch.Tensor, *args: Any, **kwargs: Any) -> list[MatrixOp]:
    if b.dim() == 1:  # a matrix-vector product
        return [MatrixOp(PRODUCT, a.shape[-2], a.shape[-1], 1)]
    batch = a.shape[0] if a.dim() == 3 else 1
    return [MatrixOp(PRODUCT, a.shape[-2], a.shape[-1], b.shape[-1], is_transpose_of(a, b))] * batch


def _solve_triangular(A: torch.Tensor, B: torch.Tensor, *args: Any, left: bool = True, **kwargs: Any) -> list[MatrixOp]:
    m = A.shape[-1]
    return [MatrixOp(SOLVE, m, m, B.shape[-1] if left else B.shape[-2])]


def _square(kind: str) -> Callable[..., list[MatrixOp]]:
    def ops(A: torch.Tensor, *args: Any, **kwargs: Any) -> list[MatrixOp]:
        return [MatrixOp(kind, A.shape[-1], A.shape[-1], A.shape[-1])]

    return ops


def _cholesky_solve(B: torch.Tensor, L: torch.Tensor, *args: Any, **kwargs: Any) -> list[MatrixOp]:
    m = L.shape[-1]
    return [MatrixOp(SOLVE, m, m, B.shape[-1])] * 2


# the aten ops the engine's dense work dispatches to (``@`` and ``torch.matmul`` arrive as mm, mv or bmm),
# each with the MatrixOps it does given its arguments
FORMULAS: dict[Any, Callable[..., list[MatrixOp]]] = {
    aten.mm: _product,
    aten.mv: _product,
    aten.bmm: _product,
    aten.addmm: lambda bias, a, b, *args, **kwargs: _product(a, b),
    aten.addmm_: lambda bias, a, b, *args, **kwargs: _product(a, b),
    aten.addmv: lambda bias, a, v, *args, **kwargs: _product(a, v),
    aten.addmv_: lambda bias, a, v, *args, **kwargs: _product(a, v),
    aten.baddbmm: lambda bias, a, b, *args, **kwargs: _product(a, b),
    aten.dot: lambda a, b, *args, **kwargs: [MatrixOp(PRODUCT, 1, a.shape[0], 1)],
    aten.vdot: lambda a, b, *args, **kwargs: [MatrixOp(PRODUCT, 1, a.shape[0], 1)],
    aten.linalg_cholesky_ex: _square(CHOLESKY),
    aten.linalg_solve_triangular: _solve_triangular,
    aten.cholesky_solve: _cholesky_solve,
    aten._linalg_eigh: _square(EIGENVALUES),
}


class MatrixOpRecorder(TorchDispatchMode):
    """While active, appends to ``ops`` a ``MatrixOp`` for every dense operation of ``FORMULAS`` that runs,
    in order; every other op runs untouched (one dictionary look-up each)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[MatrixOp] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        formula = FORMULAS.get(func.overloadpacket)
        if formula is not None:
            self.ops.extend(formula(*args, **kwargs))
        return func(*args, **kwargs)


def record_matrix_ops(fn: Callable[[], object]) -> list[MatrixOp]:
    """The dense operations of one call of ``fn``, in the order they ran (autograd's backward included)."""
    with MatrixOpRecorder() as recorder:
        fn()
    return recorder.ops


def replayed_ops(trainer: Any, fn: Callable[[], object]) -> list[MatrixOp]:
    """The dense operations of ``fn()`` (e.g. ``trainer.sweep``) run from the trainer's current state, which is
    then put back (``state_dict``, ``load_state_dict``): a second call of ``fn`` does that same work (the sweep
    is deterministic), and may be timed without the recording's overhead (some 0.1 ms per op dispatched)."""
    saved = copy.deepcopy(trainer.state_dict())
    ops = record_matrix_ops(fn)
    trainer.load_state_dict(saved)
    return ops


def total_flops(ops: Iterable[MatrixOp], kind: str | None = None, *, minimum: bool = False) -> float:
    """FLOPs of ``ops``, or of those of one ``kind``: as they ran (``MatrixOp.flops``), or with ``minimum`` the
    least work that gives their results (``MatrixOp.minimum_flops``: half for a self-product)."""
    return sum(op.minimum_flops if minimum else op.flops for op in ops if kind is None or op.kind == kind)


def product_shapes(ops: Iterable[MatrixOp]) -> Counter[tuple[int, int, int]]:
    """How many products of each (m, k, n) shape ``ops`` holds."""
    return Counter((op.m, op.k, op.n) for op in ops if op.kind == PRODUCT)


def time_products(
    shapes: Iterable[tuple[int, int, int]], device: torch.device, dtype: torch.dtype
) -> dict[tuple[int, int, int], float]:
    """Seconds per (m x k) by (k x n) product of each shape, into a preallocated output, timed after one
    untimed product (a small shape: the mean of up to 50, about 0.2 GFLOP at least)."""
    seconds = {}
    for m, k, n in sorted(set(shapes)):
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        calls = max(1, min(50, int(2e8 / (2 * m * k * n))))
        torch.matmul(a, b, out=out)
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            torch.matmul(a, b, out=out)
        synchronize(device)
        seconds[(m, k, n)] = (time.perf_counter() - start) / calls
    return seconds


def gemm_bound_seconds(ops: Iterable[MatrixOp], seconds: dict[tuple[int, int, int], float]) -> float:
    """The time the products among ``ops`` take at the rates ``time_products`` measured for their shapes."""
    return sum(count * seconds[shape] for shape, count in product_shapes(ops).items())


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

    def overrides(self) -> list[str]:
        """The ``bcd-train`` overrides of the case's network, scheme, device and dtypes."""
        hidden = self.sizes[1:-1]
        if self.scheme == "resnet":
            if len(hidden) < 2 or len(set(hidden)) != 1:
                raise ValueError(
                    f"scheme resnet needs sizes d0,w,...,w,classes (one width, twice or more): {self.sizes}"
                )
            model = ["model=resnet", f"model.width={hidden[0]}", f"model.depth={len(hidden) - 1}"]
        else:
            model = [f"splitting={self.scheme}", f"model.widths=[{','.join(map(str, hidden))}]"]
        solve = [f"trainer.solve_dtype={self.solve_dtype}"] if self.solve_dtype else []
        return [*model, f"device={self.device}", f"dtype={self.dtype}", *solve, *self.extra]


def size_label(sizes: Sequence[int]) -> str:
    """784-1024x3-10 for [784, 1024, 1024, 1024, 10]: runs of equal hidden widths shortened."""
    parts: list[str] = []
    hidden = list(sizes[1:-1])
    while hidden:
        run = next((k for k, w in enumerate(hidden) if w != hidden[0]), len(hidden))
        parts.append(f"{hidden[0]}x{run}" if run > 1 else str(hidden[0]))
        hidden = hidden[run:]
    return "-".join([str(sizes[0]), *parts, str(sizes[-1])])


def case_data(case: Case) -> tuple[Any, Any]:
    """(data, cfg) of ``case``: its composed and validated config, random data of its shape on its device
    (the time of a sweep does not depend on the values; two-splitting's inner iterations do a little)."""
    from bcd_cli.app import compose
    from bcd_cli.data.loaders import Dataset
    from bcd_cli.run.spec import resolve

    cfg = compose(*case.overrides())
    spec = resolve(cfg)
    device, dtype = spec.device.torch_device(), spec.dtype
    gen = torch.Generator().manual_seed(0)
    d0, classes = case.sizes[0], case.sizes[-1]

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        X = torch.rand(d0, n, generator=gen, dtype=dtype).to(device)
        y = torch.randint(0, classes, (n,), generator=gen).to(device)
        return X, torch.nn.functional.one_hot(y, classes).T.to(dtype).contiguous(), y

    return Dataset("random", *split(case.n), *split(case.test_samples), n_classes=classes), cfg


def build_case(case: Case) -> tuple[Any, Any, Any]:
    """(trainer, data, cfg) of ``case``: the trainer built as ``bcd-train`` builds it. The evaluation
    ``bcd-train`` runs after every sweep is ``trainer.evaluate(data, grad_norm=...)``."""
    from bcd_cli.run.spec import resolve
    from bcd_cli.run.train import build_trainer

    data, cfg = case_data(case)
    trainer = build_trainer(resolve(cfg), data)
    return trainer, data, cfg


def state_bytes(algorithm: Any, data: Any) -> int:
    """Bytes of the BCD state (W, b, V_1.., U; for the SGD/Adam baselines W and b, and their gradients and
    optimizer state once they exist) plus the data (X, Y, labels, train and test)."""
    tensors = [*algorithm.state_tensors(), data.X_train, data.Y_train, data.y_train, data.X_test, data.Y_test]
    tensors.append(data.y_test)
    return sum(t.numel() * t.element_size() for t in tensors)


# ------------------------------------------------------------------------------------------------ this process


def status_mb(key: str) -> float:
    """VmRSS or VmHWM of this process, in MiB (Linux /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    raise KeyError(f"{key} is not in /proc/self/status")


def reset_high_water_mark() -> bool:
    """Resets VmHWM to the current resident set (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process) so far (Linux /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]  # guest: in user
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return busy / os.sysconf("SC_CLK_TCK"), usage.ru_utime + usage.ru_stime


def measured_peaks(phases: dict[str, Callable[[], object]]) -> dict[str, int]:
    """The most bytes PyTorch's CPU allocator holds during each of ``phases`` (run in order, in one
    ``torch.profiler`` session with ``profile_memory=True``), counting only what the phases allocate: every
    allocation is followed by its address until it is freed. Exact, and independent of the machine's malloc,
    page size, thread count or load. For the tests and ``bench_sweep.py``, against ``bcd_cli.run.memory``'s
    estimate; a run does not call it."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, run in phases.items():
            with record_function(f"phase:{name}"):
                run()
    events: list[tuple[int, int, int, int, str]] = []

    def walk(nodes: Any, phase: str) -> None:
        for node in nodes:
            if node.name.startswith("phase:"):
                phase = node.name.removeprefix("phase:")
            fields = node.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device) == "cpu":
                events.append((node.start_time_ns, len(events), fields.ptr, fields.alloc_size, phase))
            walk(node.children, phase)

    walk(prof.profiler.kineto_results.experimental_event_tree(), "")
    live: dict[int, int] = {}
    total, peaks = 0, dict.fromkeys(phases, 0)
    for _, _, ptr, size, label in sorted(events):
        if size > 0:
            live[ptr] = size
            total += size
        else:
            total -= live.pop(ptr, 0)  # memory allocated before the session is not followed
        if label in peaks:
            peaks[label] = max(peaks[label], total)
    return peaks
