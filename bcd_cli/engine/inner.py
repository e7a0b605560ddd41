"""Monotone inner solvers for the blocks that have no closed form (an inner solver
never raises its block objective, so the descent of Lemma 1 still holds).

Both start at the block's old value and accept a new iterate only when it lowers the
block objective, so the block objective (with its proximal term) never increases and
Lemma 1's sufficient descent carries over to the whole sweep (docs/math.md §2.6, §4.1).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class InnerSolver:
    """Iteration budget of an inner solver: at most ``iters`` steps, stopping once a step moves the
    iterate by less than ``tol`` relative to its norm."""

    iters: int = 20
    tol: float = 1e-6


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
    for _ in range(solver.iters):
        z = prox(y - step * (Hy - G), step)
        Hz = apply_H(z)
        z_value = value_of(z, Hz)
        if not bool(z_value <= value):  # restart the momentum from the best point
            if y is x:
                break  # a plain proximal-gradient step from x failed: x is optimal up to rounding
            y, Hy, t = x, Hx, 1.0
            continue
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * t * t)) / 2.0
        beta = (t - 1.0) / t_next
        moved = z - x
        x_prev, Hx_prev = x, Hx
        x, Hx, value = z, Hz, z_value
        if _small_step(moved, x, solver.tol):
            break
        y = x + beta * (x - x_prev)
        Hy = Hx + beta * (Hx - Hx_prev)  # H (x + beta (x - x_prev)) by linearity: no extra product
        t = t_next
    return x


def prox_gradient(
    smooth: Callable[[Tensor], tuple[Tensor, Any]],
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

    ``smooth(X)`` returns (f(X), cache) and ``gradient(X, cache)`` the gradient of f at X;
    ``prox`` and ``penalty`` are those of h. Proximal gradient with backtracking from
    ``step``: a trial point is accepted when it satisfies the descent-lemma test
    f(z) <= f(x) + <grad, z - x> + ||z - x||^2 / (2 step) and lowers f + h; the step
    grows after each accepted iteration. x0 must lie in the domain of h. See docs/math.md §2.6.
    """
    x = x0
    f_x, cache = smooth(x)
    total = f_x + penalty(x)
    for _ in range(solver.iters):
        g = gradient(x, cache)
        for _ in range(max_backtracks):
            z = prox(x - step * g, step)
            moved = z - x
            f_z, z_cache = smooth(z)
            z_total = f_z + penalty(z)
            model = f_x + _dot(g, moved) + _dot(moved, moved) / (2.0 * step)
            if bool(f_z <= model) and bool(z_total <= total):
                break
            step *= 0.5
        else:
            return x  # no step lowers the objective: x is stationary up to rounding
        x, f_x, cache, total = z, f_z, z_cache, z_total
        if _small_step(moved, x, solver.tol):
            break
        step *= 2.0
    return x


def largest_eigenvalue(H: Tensor) -> float:
    """The largest eigenvalue of the symmetric matrix H (the step size of a gradient method on 1/2 <X, H X>)."""
    return float(torch.linalg.eigvalsh(H.double())[-1])


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
