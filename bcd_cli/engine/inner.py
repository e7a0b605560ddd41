"""Monotone inner solvers for the blocks that have no closed form (an inner solver
never raises its block objective, so the descent of Lemma 1 still holds).

Both start at the block's old value and accept a new iterate only when it lowers the
block objective, so the block objective (with its proximal term) never increases and
Lemma 1's sufficient descent carries over to the whole sweep (docs/math.md §2.6, §4.1).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from bcd_cli.engine import chunking
from bcd_cli.engine.workspace import Tally


@dataclass
class SolveCount:
    """How many inner solves ran, and how many of them stopped at the iteration cap with their last step still
    longer than the tolerance (so their block is not solved to ``tol``): the run records the second per sweep."""

    solves: int = 0
    capped: int = 0

    def add(self, capped: bool) -> None:
        self.solves += 1
        self.capped += int(capped)

    def take(self) -> tuple[int, int]:
        """(solves, capped) since the last call, and the count starts again from zero."""
        counts = (self.solves, self.capped)
        self.solves = self.capped = 0
        return counts


@dataclass(frozen=True)
class InnerSolver:
    """Iteration budget of an inner solver: at most ``iters`` steps, stopping once a step moves the
    iterate by less than ``tol`` relative to its norm. Every solve adds to ``count`` whether it met
    ``tol`` (or found no step that lowers its objective: stationary up to rounding) or ran out of steps."""

    iters: int = 20
    tol: float = 1e-6
    count: SolveCount = field(default_factory=SolveCount, compare=False)


def _dot(A: Tensor, B: Tensor) -> Tensor:
    return torch.vdot(A.flatten(), B.flatten())


def _small_step(step: Tensor, x: Tensor, tol: float) -> bool:
    return bool(torch.linalg.vector_norm(step) <= tol * torch.linalg.vector_norm(x))


def fista(
    apply_H: Callable[[Tensor], Tensor],
    G: Tensor,
    x0: Tensor,
    *,
    lipschitz: float,
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    solver: InnerSolver,
    candidate: Tensor | None = None,
) -> Tensor:
    """A point no worse than x0 for min_X 1/2 <X, H X> - <G, X> + h(X), H symmetric positive definite.

    ``apply_H`` is the linear map X -> H X (or X H), ``lipschitz`` an upper bound on the
    largest eigenvalue of H, ``prox(Z, t) = argmin_X h(X) + 1/(2t) ||X - Z||^2`` and
    ``penalty(X) = h(X)``. Monotone FISTA (Beck and Teboulle's MFISTA) with a momentum
    restart whenever a step would raise the objective. It starts from x0, or from
    ``candidate`` when that is better (e.g. the minimiser without h, mapped into the
    domain of h); both must lie in the domain of h. See docs/math.md §2.6.
    """

    def value_of(X: Tensor, HX: Tensor) -> Tensor:
        return 0.5 * _dot(X, HX) - _dot(G, X) + penalty(X)

    step = 1.0 / lipschitz
    x, Hx = x0, apply_H(x0)
    value = value_of(x, Hx)
    if candidate is not None:
        H_candidate = apply_H(candidate)
        candidate_value = value_of(candidate, H_candidate)
        if bool(candidate_value < value):
            x, Hx, value = candidate, H_candidate, candidate_value
    y, Hy, t = x, Hx, 1.0
    capped = True  # until a stopping test holds
    for _ in range(solver.iters):
        z = prox(y - step * (Hy - G), step)
        Hz = apply_H(z)
        z_value = value_of(z, Hz)
        if not bool(z_value <= value):  # restart the momentum from the best point
            if y is x:
                capped = False
                break  # a plain proximal-gradient step from x failed: x is optimal up to rounding
            y, Hy, t = x, Hx, 1.0
            continue
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        moved = z - x
        x_prev, Hx_prev = x, Hx
        x, Hx, value = z, Hz, z_value
        if _small_step(moved, x, solver.tol):
            capped = False
            break
        y = x + beta * (x - x_prev)
        Hy = Hx + beta * (Hx - Hx_prev)  # H (x + beta (x - x_prev)) by linearity: no extra product
        t = t_next
    solver.count.add(capped)
    return x


# blocks of live iterates (x, H x, y, H y, z, H z, moved, previous x, H x) in monotone FISTA
FISTA_BLOCKS = 10


def fista_workspace(t: Tally, block: float, prox: float) -> None:
    """What ``fista`` on a block of ``block`` bytes allocates besides G, x0 and the candidate: its iterates and
    their products with H, and the ``prox`` bytes of a prox's temporaries."""
    t.touch(FISTA_BLOCKS * block, prox)


def prox_gradient(
    smooth: Callable[[Tensor, Callable[[Tensor], bool] | None], tuple[Tensor, Any]],
    gradient: Callable[[Tensor, Any], Tensor],
    x0: Tensor,
    *,
    step: float,
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    solver: InnerSolver,
    max_backtracks: int = 40,
) -> Tensor:
    """A point no worse than x0 for min_X f(X) + h(X), f smooth but possibly nonconvex.

    ``smooth(X, rejected)`` returns (f(X), cache) and ``gradient(X, cache)`` the gradient of f at X;
    ``prox`` and ``penalty`` are those of h. Proximal gradient with backtracking from
    ``step``: a trial point is accepted when it satisfies the descent-lemma test
    f(z) <= f(x) + <grad, z - x> + ||z - x||^2 / (2 step) and lowers f + h; the step
    grows after each accepted iteration. x0 must lie in the domain of h. See docs/math.md §2.6.

    ``rejected`` (None for x0) says whether a value would fail that test: a ``smooth`` that sums
    nonnegative terms may return a partial sum (a lower bound of f) as soon as ``rejected`` holds
    for it, since the whole sum fails the test too, and skip the rest of its work.
    """
    x = x0
    f_x, cache = smooth(x, None)
    total = f_x + penalty(x)
    capped = True  # until a stopping test holds
    for _ in range(solver.iters):
        g = gradient(x, cache)
        for _ in range(max_backtracks):
            trial = _trial(smooth, prox, penalty, x, g, step, f_x=f_x, total=total)
            if trial is not None:
                break
            step *= 0.5
        else:
            capped = False  # no step lowers the objective: x is stationary up to rounding
            break
        x, f_x, cache, z_penalty, moved_norm = trial
        total = f_x + z_penalty
        if bool(moved_norm <= solver.tol * torch.linalg.vector_norm(x)):
            capped = False
            break
        step *= 2.0
    solver.count.add(capped)
    return x


def _trial(
    smooth: Callable[[Tensor, Callable[[Tensor], bool] | None], tuple[Tensor, Any]],
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    x: Tensor,
    g: Tensor,
    step: float,
    *,
    f_x: Tensor,
    total: Tensor,
) -> tuple[Tensor, Tensor, Any, Tensor, Tensor] | None:
    """The trial point z of ``prox_gradient`` from x with gradient g and ``step``, with f(z), its cache, h(z)
    and ||z - x|| when it passes the backtracking test; None (z freed) when it fails."""
    z = prox(x - step * g, step)
    moved = z - x
    linear, square = _dot(g, moved), _dot(moved, moved)
    del moved  # only its norm and products are needed: one block fewer while f(z) is computed
    model = f_x + linear + square / (2.0 * step)
    z_penalty = penalty(z)
    rejected = functools.partial(_rejected, model=model, penalty=z_penalty, total=total)
    f_z, z_cache = smooth(z, rejected)
    if rejected(f_z):
        return None
    return z, f_z, z_cache, z_penalty, torch.sqrt(square)


def _rejected(value: Tensor, *, model: Tensor, penalty: Tensor, total: Tensor) -> bool:
    """Whether f(z) = ``value`` fails the backtracking test: above the descent-lemma ``model``, or
    f(z) + h(z) above ``total``, f + h at the iterate."""
    return not (bool(value <= model) and bool(value + penalty <= total))


def sample_chunks(n: int, rows: int, *, cpu: bool) -> list[slice]:
    """Column slices of n samples for the solvers that sweep a block's samples chunk by chunk
    (``columnwise_prox_gradient``, the W blocks of two-splitting), ``rows`` the most rows of a
    temporary: on the CPU about ``chunking.CPU_CHUNK_ELEMENTS`` entries of it per chunk, so that
    each temporary stays in cache and the chunk's temporaries together are a few MiB; elsewhere
    ``chunking.column_chunks`` (at most 16 chunks)."""
    if not cpu:
        return chunking.column_chunks(n)
    return chunking.spans(n, max(1, chunking.CPU_CHUNK_ELEMENTS // max(1, rows)))


# the column-wise solver's accumulators, per trial step: f(Z), h(Z), <g, Z - X>, ||Z - X||^2, ||Z||^2
_F, _H, _LINEAR, _SQUARE, _NORM = range(5)
# step sizes a pass of the column-wise solver tries at once, at least (see columnwise_prox_gradient)
TRIAL_STEPS = 3

ColumnValue = Callable[[Tensor], Tensor]
ColumnGradient = Callable[[Tensor, bool], tuple[Tensor | None, Tensor]]


def columnwise_prox_gradient(
    local: Callable[[slice], tuple[ColumnValue, ColumnGradient]],
    x0: Tensor,
    *,
    chunks: list[slice],
    step: float,
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    solver: InnerSolver,
    max_backtracks: int = 40,
) -> Tensor:
    """``prox_gradient`` for an f that is a sum over the columns (samples) of X, with one new block of
    memory: the iterate. x0 is not modified; the result is a new tensor (x0 itself when no step is taken).

    ``local(cols)`` gives, for the columns ``cols`` (one of ``chunks``), ``value(Z)``, f's terms of
    those columns at their values Z, and ``gradient(X, with_value)``, (their value or None, the
    gradient of f in those columns), both sharing what ``local`` computed for the chunk (a target).
    h must be elementwise (its prox and ``penalty`` are applied chunk by chunk, penalties summed).

    The iterates, steps and accept decisions are those of ``prox_gradient`` (up to the rounding
    order of sums over chunks), but neither the gradient nor a trial point is ever held whole: one
    pass over the chunks computes, for each chunk, the gradient at the current iterate and, for
    several step sizes of the backtracking at once (``TRIAL_STEPS``, or as many as the last iteration
    needed), the trial point and its terms of the test, then frees them. Once the test picks a step, the
    next pass first writes that trial point over the iterate, chunk by chunk (each chunk's gradient
    recomputed), then goes on from it. Each chunk's terms are recomputed: work for memory (docs/math.md §2.6).
    """
    x, out = x0, None  # the iterate; the new block it is written into once a step is taken
    pending: float | None = None  # the step of an accepted trial not yet written over the iterate
    f_x = total = x0.new_zeros(())
    first, tries, capped = True, TRIAL_STEPS, True  # capped until a stopping test holds
    for _ in range(solver.iters):
        accepted, tried = None, 0
        while accepted is None and tried < max_backtracks:
            steps = [step * 0.5**k for k in range(min(tries, max_backtracks - tried))]
            write = None if pending is None else (out := torch.empty_like(x0) if out is None else out)
            start, sums = _column_pass(local, x, write, chunks, pending, steps, prox, penalty, first)
            if write is not None:
                x, pending = write, None
            if first:
                f_x, total, first = start[0], start[0] + start[1], False
            accepted = _first_accepted(sums, steps, f_x, total)
            tried += len(steps) if accepted is None else accepted + 1
            step = steps[-1] * 0.5 if accepted is None else steps[accepted]
        if accepted is None:
            capped = False  # no step lowers the objective: the iterate is stationary up to rounding
            break
        trial = sums[accepted]
        pending, f_x, total = step, trial[_F], trial[_F] + trial[_H]
        tries = max(TRIAL_STEPS, tried)
        if bool(torch.sqrt(trial[_SQUARE]) <= solver.tol * torch.sqrt(trial[_NORM])):
            capped = False
            break
        step *= 2.0
    solver.count.add(capped)
    if pending is None:
        return x
    write = torch.empty_like(x0) if out is None else out
    _column_pass(local, x, write, chunks, pending, [], prox, penalty, False)
    return write


def _first_accepted(sums: Tensor, steps: list[float], f_x: Tensor, total: Tensor) -> int | None:
    """The index of the first of ``steps`` whose trial (a row of ``sums``) passes the backtracking test
    of ``prox_gradient`` from an iterate with f = ``f_x`` and f + h = ``total``; None if none does."""
    for k, trial in enumerate(sums):
        model = f_x + trial[_LINEAR] + trial[_SQUARE] / (2.0 * steps[k])
        if not _rejected(trial[_F], model=model, penalty=trial[_H], total=total):
            return k
    return None


def _column_pass(
    local: Callable[[slice], tuple[ColumnValue, ColumnGradient]],
    x: Tensor,
    out: Tensor | None,
    chunks: list[slice],
    pending: float | None,
    steps: list[float],
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    first: bool,
) -> tuple[Tensor, Tensor]:
    """One pass of ``columnwise_prox_gradient`` over the chunks: the trial of step ``pending`` from the
    iterate x written into ``out``, then for each of ``steps`` the sums of the trial's terms (the
    rows of the second result, indexed by _F, _H, ...) and, when ``first``, f and h at the (new) iterate."""
    start = x.new_zeros(2)
    sums = x.new_zeros(len(steps), 5)
    for cols in chunks:  # (each chunk in its own call: its tensors are freed before the next chunk's are made)
        _column_chunk(local(cols), x, out, cols, pending, steps, prox, penalty, start if first else None, sums)
    return start, sums


def _column_chunk(
    local: tuple[ColumnValue, ColumnGradient],
    x: Tensor,
    out: Tensor | None,
    cols: slice,
    pending: float | None,
    steps: list[float],
    prox: Callable[[Tensor, float], Tensor],
    penalty: Callable[[Tensor], Tensor],
    start: Tensor | None,
    sums: Tensor,
) -> None:
    """``_column_pass`` on the columns ``cols``, with their ``local`` value and gradient: adds f and h at the
    iterate to ``start`` (unless None) and the trials' terms to the rows of ``sums``."""
    value, gradient = local
    x_cols = x[:, cols]
    if pending is not None:  # x is x0 (out is new) or out itself: each chunk is read before it is written
        assert out is not None
        _, g = gradient(x_cols, False)
        out[:, cols] = prox(x_cols - pending * g, pending)
        del g
        x_cols = out[:, cols]
    if not steps and start is None:
        return
    f, g = gradient(x_cols, start is not None)
    if start is not None and f is not None:
        start += torch.stack([f, penalty(x_cols)])
    for k, s in enumerate(steps):
        z = prox(x_cols - s * g, s)
        moved = z - x_cols
        terms = [_dot(g, moved), _dot(moved, moved)]
        del moved
        sums[k] += torch.stack([value(z), penalty(z), *terms, _dot(z, z)])
        del z  # before the next trial point is made


def largest_eigenvalue(H: Tensor) -> float:
    """The largest eigenvalue of the symmetric matrix H (the step size of a gradient method on 1/2 <X, H X>)."""
    return float(torch.linalg.eigvalsh(H.double())[-1])


def largest_eigenvalue_workspace(t: Tally, k: int, e: int, *, cpu: bool) -> None:
    """What ``largest_eigenvalue`` of a k x k H of ``e`` bytes an element allocates: H in float64 (unless it is),
    ``eigvalsh``'s copy and LAPACK's (CPU) or cuSOLVER's workspace."""
    work = 4 * k * 8 if cpu else k * k * 8
    t.touch(k * k * 8 if e != 8 else 0, k * k * 8, work)


def spectral_norm_squared(A: Tensor, iters: int = 30) -> float:
    """An estimate of ||A||_2^2 by power iteration on A^T A (a starting step size; backtracking corrects it)."""
    x = torch.ones(A.shape[1], dtype=A.dtype, device=A.device)
    estimate = A.new_zeros(())
    for _ in range(iters):
        Ax = A @ x
        x = A.T @ Ax
        estimate = torch.linalg.vector_norm(x)
        if not bool(estimate > 0):
            return 0.0
        x = x / estimate
    return float(estimate)
