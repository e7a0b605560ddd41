"""Regularizers r_i(W_i) on weights and s_i(V_i) on states.

A regularizer is ``ridge/2 ||X||_F^2 + h(X)`` with ``h`` convex. The block
solvers fold the quadratic part ``ridge`` into their linear systems exactly;
the entries here are purely quadratic (h = 0), so every block that carries them
keeps its closed form. Each entry also has ``prox(Z, t)``, which returns
``argmin_X r(X) + 1/(2t) ||X - Z||_F^2``. Biases are never regularized.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from bcd_cli.catalogue._checks import require


@dataclass(frozen=True)
class NoReg:
    """r(X) = 0."""

    ridge: ClassVar[float] = 0.0

    def __call__(self, X: Tensor) -> Tensor:
        return X.new_zeros(())

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X 1/(2t) ||X - Z||^2 = Z."""
        return Z


@dataclass(frozen=True)
class L2:
    """r(X) = lam/2 ||X||_F^2 (squared l2, weight decay)."""

    lam: float = 1e-4

    def __post_init__(self) -> None:
        require(
            isinstance(self.lam, int | float) and 0 <= self.lam < float("inf"), "lam", self.lam, "a finite number >= 0"
        )

    @property
    def ridge(self) -> float:
        return self.lam

    def __call__(self, X: Tensor) -> Tensor:
        return 0.5 * self.lam * X.square().sum()

    def prox(self, Z: Tensor, t: float) -> Tensor:
        """Returns argmin_X lam/2 ||X||^2 + 1/(2t) ||X - Z||^2 = Z / (1 + t lam)."""
        return Z / (1 + t * self.lam)
