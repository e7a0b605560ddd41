"""Safeguarded extrapolation of the BCD sweeps (``trainer=bcd_accelerated``; docs/math.md §4.4).

Each sweep of the chosen scheme (Algorithm 1, 2 or 3, unchanged) starts from the extrapolated point

    Q^k = P^k + beta_k (P^k - P^(k-1)),      beta_k = min(beta_max, (t_(k-1) - 1) / t_k),
    t_k = (1 + sqrt(1 + 4 t_(k-1)^2)) / 2,   t_0 = 1                     (Nesterov's weights)

over every block (W, b, V and U). The safeguard keeps Q^k only when

    L(Q^k) <= L(P^k) - c ||Q^k - P^k||^2,

c the margin (``trainer.safeguard`` times Lemma 1's a = min(alpha, gamma) / 2; by default 1e-4 a); otherwise
the sweep starts from P^k itself and the weights restart (t = 1, so the next sweep is not extrapolated
either). With Lemma 1 for the sweep from Q^k, every sweep then lowers the objective by at least

    L(P^k) - L(P^(k+1)) >= c ||Q^k - P^k||^2 + a ||P^(k+1) - Q^k||^2 >= min(a, c) / 2 ||P^(k+1) - P^k||^2,

so L(P^k) never rises and the descent ratio of metrics.csv stays bounded below, as for plain BCD.

The previous point is kept in one extra copy of the state, whose storage also takes the extrapolated
point (Q = (1 + beta) P^k - beta P^(k-1) is written over P^(k-1), and the two swap): the acceleration
costs one state's memory and one evaluation of L per sweep (of Q^k; L(P^k) is the one the run loop
evaluated after the previous sweep, or is computed when no evaluation is known).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from bcd_cli.engine.blocks import squared_distance
from bcd_cli.engine.parallel import all_reduce_sum_


class Point(Protocol):
    """What the extrapolation needs of a scheme (``BCDScheme`` is one): its blocks in one list, the first
    ``n_weights`` (W and b) the same on every rank of a data-parallel run and the others this rank's columns,
    the objective at its current point, and its own sweep."""

    n_weights: int

    def blocks(self) -> list[Tensor]: ...
    def _set_blocks(self, blocks: list[Tensor]) -> None: ...
    def current_objective(self) -> float: ...
    def sweep_blocks(self) -> float: ...


@dataclass
class Extrapolation:
    """The extrapolation weights and the previous point of a scheme's sweeps; see the module docstring.

    ``beta_max`` bounds beta_k (0 < beta_max < 1); ``margin`` is the safeguard's c (> 0).
    ``previous`` holds P^(k-1) in the layout of ``BCDScheme.blocks()`` (None before the first sweep);
    ``t`` is Nesterov's t_(k-1). ``beta`` and ``rejected`` describe the last sweep, for metrics.csv.
    """

    beta_max: float
    margin: float
    previous: list[Tensor] | None = None
    t: float = 1.0
    beta: float = 0.0
    rejected: bool = False

    def next_beta(self) -> tuple[float, float]:
        """(beta_k, t_k) from t_(k-1): Nesterov's weight, at most ``beta_max``."""
        t_next = (1.0 + math.sqrt(1.0 + 4.0 * self.t * self.t)) / 2.0
        return min(self.beta_max, (self.t - 1.0) / t_next), t_next

    def sweep(self, scheme: Point) -> float:
        """One safeguarded sweep of ``scheme`` from its current point P^k; returns D = ||P^(k+1) - P^k||^2."""
        self.beta, self.rejected = 0.0, False
        here = scheme.blocks()
        if self.previous is None:  # the first sweep: nothing to extrapolate from yet
            self.previous = [t.clone() for t in here]
        else:
            beta, t_next = self.next_beta()
            if beta > 0:
                self._try(scheme, here, beta, t_next)
            else:
                self.t = t_next
                for p, x in zip(self.previous, here, strict=True):
                    p.copy_(x)
        del here
        scheme.sweep_blocks()
        return distance(self.previous, scheme.blocks(), scheme.n_weights)

    def _try(self, scheme: Point, here: list[Tensor], beta: float, t_next: float) -> None:
        """Moves ``scheme`` to Q^k when the safeguard accepts it; ``previous`` holds P^k afterwards either way."""
        assert self.previous is not None
        L_here = scheme.current_objective()
        Q = self.previous
        for q, x in zip(Q, here, strict=True):  # Q = (1 + beta) P^k - beta P^(k-1), over P^(k-1)'s storage
            q.mul_(-beta).add_(x, alpha=1.0 + beta)
        step = distance(Q, here, scheme.n_weights)
        scheme._set_blocks(list(Q))
        if scheme.current_objective() <= L_here - self.margin * step:
            self.previous, self.beta, self.t = here, beta, t_next
            return
        scheme._set_blocks(here)  # rejected: the sweep starts from P^k, and the weights restart
        for q, x in zip(Q, here, strict=True):
            q.copy_(x)
        self.previous, self.rejected, self.t = Q, True, 1.0

    def record(self) -> dict[str, float]:
        """The last sweep's columns of metrics.csv: the weight beta_k it used (0 when none or rejected) and
        whether the safeguard rejected the extrapolated point (1) or not (0)."""
        return {"extrapolation": self.beta, "rejected": float(self.rejected)}

    def state_dict(self) -> dict[str, Any]:
        """t_(k-1) and the previous point (None before the first sweep): what a resumed run needs to continue."""
        return {"t": self.t, "previous": self.previous}

    def load_state_dict(self, state: dict[str, Any], like: list[Tensor]) -> None:
        """Puts a ``state_dict`` back, its tensors copied to the devices and dtypes of ``like`` (the scheme's)."""
        self.t = float(state["t"])
        saved = state["previous"]
        self.previous = (
            None
            if saved is None
            else [s.to(device=c.device, dtype=c.dtype, copy=True) for c, s in zip(like, saved, strict=True)]
        )


def distance(A: list[Tensor], B: list[Tensor], n_weights: int) -> float:
    """||A - B||^2 over the blocks: the weights' part once, the shards' parts summed over the ranks."""
    weights = sum(squared_distance(a, b).double() for a, b in zip(A[:n_weights], B[:n_weights], strict=True))
    states = sum(squared_distance(a, b).double() for a, b in zip(A[n_weights:], B[n_weights:], strict=True))
    return float(weights + all_reduce_sum_(A[0].new_zeros((), dtype=torch.float64) + states))
