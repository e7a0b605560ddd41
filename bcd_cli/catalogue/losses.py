"""Losses R(V; Y) on the network output V (classes x samples) and their V_N solvers.

``reduction='sum'`` sums over samples (the scaling of the paper's experiments);
``'mean'`` divides that sum by the number of samples n.
Each loss has ``prox(Y, center, weight)``, which returns
``argmin_V R(V; Y) + weight/2 ||V - center||_F^2``: the V_N block of BCD once its
quadratic terms (penalty, proximal term, quadratic state regularizer) are merged.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from bcd_cli.catalogue._checks import require

REDUCTIONS = ("sum", "mean")


def _scale(reduction: str, n: int) -> float:
    """1 for a sum over samples, 1/n for their mean."""
    return 1.0 if reduction == "sum" else 1.0 / n


@dataclass(frozen=True)
class Square:
    """R(V; Y) = s/2 ||V - Y||_F^2 with s = 1 (sum) or 1/n (mean)."""

    reduction: str = "sum"

    def __post_init__(self) -> None:
        require(self.reduction in REDUCTIONS, "reduction", self.reduction, "sum or mean (over samples)")

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return 0.5 * s * (V - Y).square().sum()

    def prox(self, Y: Tensor, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_V s/2 ||V - Y||^2 + weight/2 ||V - center||^2 = (s Y + weight center)/(s + weight)."""
        s = _scale(self.reduction, Y.shape[1])
        return (s * Y + weight * center) / (s + weight)
