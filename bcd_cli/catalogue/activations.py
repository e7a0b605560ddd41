"""Activations sigma and the solver of the elementwise U-block.

Each activation is callable (the forward map) and has ``prox(v, b, c)``, which
returns ``argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2`` elementwise, with
``c > 0``: the U-block of three-splitting BCD after its quadratic terms are
merged (``../bcd-math.md``, Algorithm 2 step 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Linear:
    """sigma(u) = u."""

    def __call__(self, u: Tensor) -> Tensor:
        return u

    def prox(self, v: Tensor, b: Tensor, c: float) -> Tensor:
        """Returns argmin_u 1/2 (u - v)^2 + c/2 (u - b)^2 = (v + c b) / (1 + c)."""
        return (v + c * b) / (1 + c)


@dataclass(frozen=True)
class ReLU:
    """sigma(u) = max(u, 0)."""

    def __call__(self, u: Tensor) -> Tensor:
        return torch.relu(u)

    def prox(self, v: Tensor, b: Tensor, c: float) -> Tensor:
        """Returns argmin_u 1/2 (relu(u) - v)^2 + c/2 (u - b)^2, elementwise (Lemma 13).

        On u <= 0 the minimiser is min(b, 0), with value v^2/2 + c/2 relu(b)^2.
        On u >= 0 it is p = (v + c b)/(1 + c) when p > 0, with value
        c/(2(1 + c)) (v - b)^2; when p <= 0 that piece's minimiser is 0, which
        the first piece already covers. The global minimiser is the better one.
        """
        p = (v + c * b) / (1 + c)
        left = torch.clamp(b, max=0.0)
        # twice the two candidate values, compared in place of Lemma 13's case table
        right_wins = (p > 0) & (c / (1 + c) * (v - b) ** 2 <= v**2 + c * torch.relu(b) ** 2)
        return torch.where(right_wins, p, left)
