"""Regularizers r_i(W_i) on weights and s_i(V_i) on states.

A regularizer is ``r(X) = ridge/2 ||X||_F^2 + h(X)`` with h convex and elementwise
separable (an indicator takes the value 0 on its set and +inf off it, compared
exactly). When h = 0 (``quadratic`` is True) the block solvers fold ``ridge`` into
their linear systems and keep their closed forms; otherwise they run a proximal
gradient method with ``prox``. Biases are never regularized.

Each entry has

- ``prox(Z, t)``: ``argmin_X r(X) + 1/(2t) ||X - Z||_F^2`` for t > 0 (the whole r,
  ridge included); for t = 0 it is the projection of Z onto the domain of r, which
  is Z itself when r is finite everywhere and the clamp onto the set for an
  indicator (``prox(X, 0.0)`` makes a starting point feasible);
- ``prox_with(prox_f, center, weight)``: ``argmin_X f(X) + r(X) + weight/2 ||X - center||^2``
  for a convex elementwise-separable f given by its own prox
  ``prox_f(center, weight) = argmin_X f(X) + weight/2 ||X - center||^2`` (the V_N
  block with an exact loss prox and a state regularizer).
- ``memory``: a ``RegularizerMemory``, what its prox allocates, for the memory estimate.

docs/math.md §3.3 lists every entry's prox and derives ``prox_with``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from bcd_cli.catalogue._memory import RegularizerMemory
from bcd_cli.errors import require

ProxF = Callable[[Tensor, float], Tensor]


def _check_weight(field: str, value: object) -> None:
    """A regularization weight: a finite number >= 0."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < math.inf
    require(ok, field, value, "a finite number >= 0")


def _soft_threshold(Z: Tensor, tau: float) -> Tensor:
    """Returns argmin_X tau ||X||_1 + 1/2 ||X - Z||^2 = sign(Z) max(|Z| - tau, 0)."""
    return torch.sign(Z) * torch.relu(Z.abs() - tau)


def _l1_prox_with(prox_f: ProxF, center: Tensor, weight: float, lam: float) -> Tensor:
    """Returns argmin_X f(X) + lam ||X||_1 + weight/2 ||X - center||^2 for convex separable f.

    Per element, lam |x| + weight/2 (x - c)^2 equals weight/2 (x - (c -+ lam/weight))^2 up to a
    constant on x >= 0 (x <= 0), and lam |x| is above both of its linear pieces: so
    p = prox_f(c - lam/weight) is the minimiser when p > 0, m = prox_f(c + lam/weight)
    when m < 0, and otherwise (p <= 0 <= m) 0 is optimal. See docs/math.md §3.3.
    """
    p = prox_f(center - lam / weight, weight)
    m = prox_f(center + lam / weight, weight)
    return torch.where(p > 0, p, torch.where(m < 0, m, torch.zeros_like(p)))


@dataclass(frozen=True)
class NoReg:
    """r(X) = 0."""

    ridge: ClassVar[float] = 0.0
    quadratic: ClassVar[bool] = True
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=0, output=0, copies=False)

    def __call__(self, X: Tensor) -> Tensor:
        return X.new_zeros(())

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X 1/(2t) ||X - Z||^2 = Z (also for t = 0)."""
        return Z

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_X f(X) + weight/2 ||X - center||^2 = prox_f(center, weight)."""
        return prox_f(center, weight)


@dataclass(frozen=True)
class L2:
    """r(X) = lam/2 ||X||_F^2 (squared l2, weight decay)."""

    lam: float = 1e-4
    quadratic: ClassVar[bool] = True
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=1, output=1, copies=True)

    def __post_init__(self) -> None:
        _check_weight("lam", self.lam)

    @property
    def ridge(self) -> float:
        return self.lam

    def __call__(self, X: Tensor) -> Tensor:
        return 0.5 * self.lam * X.square().sum()

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X lam/2 ||X||^2 + 1/(2t) ||X - Z||^2 = Z / (1 + t lam) (Z for t = 0)."""
        return Z / (1 + t * self.lam)

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_X f(X) + lam/2 ||X||^2 + weight/2 ||X - center||^2.

        = prox_f(weight center/(weight + lam), weight + lam): the two quadratics sum to
        (weight + lam)/2 ||X - weight center/(weight + lam)||^2 plus a constant.
        """
        total = weight + self.lam
        return prox_f(center * (weight / total), total)


@dataclass(frozen=True)
class L1:
    """r(X) = lam ||X||_1 (sum of absolute values)."""

    lam: float = 1e-4
    ridge: ClassVar[float] = 0.0
    quadratic: ClassVar[bool] = False
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=3, output=2, copies=True)

    def __post_init__(self) -> None:
        _check_weight("lam", self.lam)

    def __call__(self, X: Tensor) -> Tensor:
        return self.lam * X.abs().sum()

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X lam ||X||_1 + 1/(2t) ||X - Z||^2 = sign(Z) max(|Z| - t lam, 0) (Z for t = 0)."""
        return _soft_threshold(Z, t * self.lam)

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_X f(X) + lam ||X||_1 + weight/2 ||X - center||^2.

        p = prox_f(center - lam/weight, weight) where p > 0, else m = prox_f(center + lam/weight, weight)
        where m < 0, else 0: the minimiser on each sign piece, where lam |x| is linear.
        """
        return _l1_prox_with(prox_f, center, weight, self.lam)


@dataclass(frozen=True)
class ElasticNet:
    """r(X) = l1 ||X||_1 + l2/2 ||X||_F^2."""

    l1: float = 1e-4
    l2: float = 1e-4
    quadratic: ClassVar[bool] = False
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=4, output=2, copies=True)

    def __post_init__(self) -> None:
        _check_weight("l1", self.l1)
        _check_weight("l2", self.l2)

    @property
    def ridge(self) -> float:
        return self.l2

    def __call__(self, X: Tensor) -> Tensor:
        return self.l1 * X.abs().sum() + 0.5 * self.l2 * X.square().sum()

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X l1 ||X||_1 + l2/2 ||X||^2 + 1/(2t) ||X - Z||^2 = soft(Z, t l1) / (1 + t l2) (Z for t = 0).

        The l2 term rescales: l2/2 x^2 + 1/(2t) (x - z)^2 = (1 + t l2)/(2t) (x - z/(1 + t l2))^2 + const,
        so this is the l1 prox with threshold t l1/(1 + t l2) at z/(1 + t l2).
        """
        return _soft_threshold(Z, t * self.l1) / (1 + t * self.l2)

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_X f(X) + l1 ||X||_1 + l2/2 ||X||^2 + weight/2 ||X - center||^2.

        The l2 term folds into the quadratic (weight + l2)/2 ||X - weight center/(weight + l2)||^2,
        then the l1 rule applies: prox_f on each sign piece, else 0.
        """
        total = weight + self.l2
        return _l1_prox_with(prox_f, center * (weight / total), total, self.l1)


@dataclass(frozen=True)
class NonNeg:
    """r(X) = 0 if X >= 0 elementwise, else +inf (the indicator of the nonnegative orthant)."""

    ridge: ClassVar[float] = 0.0
    quadratic: ClassVar[bool] = False
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=1, output=0, copies=True)

    def __call__(self, X: Tensor) -> Tensor:
        return torch.where((X >= 0).all(), 0.0, math.inf).to(X.dtype)

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_{X >= 0} 1/(2t) ||X - Z||^2 = max(Z, 0), the projection (for every t >= 0)."""
        return torch.clamp(Z, min=0.0)

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_{X >= 0} f(X) + weight/2 ||X - center||^2 = max(prox_f(center, weight), 0).

        A strictly convex 1-D function is minimised over an interval by clamping its minimiser.
        """
        return torch.clamp(prox_f(center, weight), min=0.0)


@dataclass(frozen=True)
class Box:
    """r(X) = 0 if lo <= X <= hi elementwise, else +inf; lo < hi (either may be infinite)."""

    lo: float = -1.0
    hi: float = 1.0
    ridge: ClassVar[float] = 0.0
    quadratic: ClassVar[bool] = False
    memory: ClassVar[RegularizerMemory] = RegularizerMemory(quadratic=quadratic, prox=1, output=0, copies=True)

    def __post_init__(self) -> None:
        for field in ("lo", "hi"):
            value = getattr(self, field)
            ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
            require(ok, field, value, "a number (not NaN), lo < hi")
        require(self.lo < self.hi, "hi", self.hi, f"a number larger than lo = {self.lo}")

    def __call__(self, X: Tensor) -> Tensor:
        return torch.where(((X >= self.lo) & (X <= self.hi)).all(), 0.0, math.inf).to(X.dtype)

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_{lo <= X <= hi} 1/(2t) ||X - Z||^2 = clamp(Z, lo, hi), the projection (for every t >= 0)."""
        return torch.clamp(Z, min=self.lo, max=self.hi)

    def prox_with(self, prox_f: ProxF, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_{lo <= X <= hi} f(X) + weight/2 ||X - center||^2 = clamp(prox_f(center, weight), lo, hi).

        A strictly convex 1-D function is minimised over an interval by clamping its minimiser.
        """
        return torch.clamp(prox_f(center, weight), min=self.lo, max=self.hi)
