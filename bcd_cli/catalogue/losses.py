"""Losses R(V; Y) on the network output V (classes x samples) and their V_N solvers.

``reduction='sum'`` sums over samples (the scaling of the paper's experiments);
``'mean'`` divides that sum by the number of samples n; below, s is 1 or 1/n.
Y has one-hot columns; the one-vs-all losses use the targets T = 2Y - 1 (+1 for the
true class, -1 for the others).

Every loss has ``grad(V, Y)``, ``lipschitz(n)`` (a Lipschitz constant of grad R for n
samples, None when there is no global one) and ``solver``, the V_N update the engine
uses: ``'exact'`` calls ``prox(Y, center, weight)``, which returns
``argmin_V R(V; Y) + weight/2 ||V - center||_F^2`` (the V_N block once its quadratic
terms are merged); ``'prox_linear'`` takes the prox-linear step of Zeng et al. (2019)
(3.2), which needs only ``grad`` and ``lipschitz``. All exact proxes are elementwise.
``memory`` (a ``LossMemory``) is what its value and its V_N update allocate, for the
memory estimate.
See docs/math.md §3.1 (the losses and their proxes) and §2.1 (the V_N block).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from bcd_cli.catalogue._memory import LossMemory
from bcd_cli.catalogue._scalar import increasing_root
from bcd_cli.errors import require

REDUCTIONS = ("sum", "mean")
SOLVERS = ("prox_linear", "exact")
EXPONENTIAL_STEPS = 8  # monotone Newton steps on y + log y = log a; from the starts used, 5 reach machine precision


def logistic_steps(bound: float, dtype: torch.dtype) -> int:
    """Evaluations of ``increasing_root`` that leave the exact logistic prox's offset y within rounding, for y in
    a bracket of width <= ``bound`` (= s/weight), whatever Newton does (it usually ends far sooner).

    The root y* of weight y = s sigmoid(-(tc + y)) with b = s/weight satisfies y* (1 + e^(tc + y*)) = b,
    so |tc| <= 1 and y* <= 1 force b <= y* (1 + e^2): max(|tc|, y*) >= min(1, b / (1 + e^2)). The result
    z = tc + y* is then rounded to eps/2 max(|tc|, y*) >= eps/2 min(1, b/8.39) at best, and the bracket
    width, at most b 2^-ceil(k/2) after k evaluations, is below that once 2^(k/2) >= max(2 b, 16.8)/eps.
    float64 with b = 1e4 (s = 1, weight = 1e-4) takes 134 evaluations, float32 76.
    """
    halvings = math.ceil(math.log2(max(2.0 * bound, 16.8) / torch.finfo(dtype).eps))
    return 2 * halvings


def _scale(reduction: str, n: int) -> float:
    """1 for a sum over samples, 1/n for their mean."""
    return 1.0 if reduction == "sum" else 1.0 / n


def _check_reduction(reduction: object) -> None:
    require(reduction in REDUCTIONS, "reduction", reduction, "sum or mean (over samples)")


def _log1p_exp(x: Tensor) -> Tensor:
    """log(1 + e^x), elementwise."""
    # max(x, 0) + log1p(e^-|x|): no overflow, and exact to rounding for large |x|
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


@dataclass(frozen=True)
class Square:
    """R(V; Y) = s/2 ||V - Y||_F^2."""

    reduction: str = "sum"
    solver: ClassVar[str] = "exact"
    memory: ClassVar[LossMemory] = LossMemory(output=4, value=2, saved=1)

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return 0.5 * s * (V - Y).square().sum()

    def grad(self, V: Tensor, Y: Tensor) -> Tensor:
        """Returns grad R(V; Y) = s (V - Y)."""
        return _scale(self.reduction, V.shape[1]) * (V - Y)

    def lipschitz(self, n: int) -> float:
        """Returns s, the Lipschitz constant of grad R (R has Hessian s I)."""
        return _scale(self.reduction, n)

    def prox(self, Y: Tensor, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_V s/2 ||V - Y||^2 + weight/2 ||V - center||^2 = (s Y + weight center)/(s + weight)."""
        s = _scale(self.reduction, Y.shape[1])
        return (s * Y + weight * center) / (s + weight)


@dataclass(frozen=True)
class Hinge:
    """R(V; Y) = s sum_ij max(0, 1 - T_ij V_ij), one-vs-all with T = 2Y - 1."""

    reduction: str = "sum"
    solver: ClassVar[str] = "exact"
    memory: ClassVar[LossMemory] = LossMemory(output=5, value=3, saved=2)

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return s * torch.relu(1 - (2 * Y - 1) * V).sum()

    def grad(self, V: Tensor, Y: Tensor) -> Tensor:
        """Returns a subgradient of R at V: -s T where T V < 1, else 0 (0 at the kink T V = 1)."""
        T = 2 * Y - 1
        return torch.where(T * V < 1, -_scale(self.reduction, V.shape[1]) * T, 0.0).to(V.dtype)

    def lipschitz(self, n: int) -> None:
        """Returns None: the hinge loss is not differentiable, so grad R has no Lipschitz constant."""
        return None

    def prox(self, Y: Tensor, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_V R(V; Y) + weight/2 ||V - center||^2, elementwise (Lemma 14).

        With z = t v, t = +-1 and tc = t center, each element minimises
        s max(0, 1 - z) + weight/2 (z - tc)^2: z = tc + s/weight when tc <= 1 - s/weight,
        z = 1 when 1 - s/weight < tc < 1, z = tc when tc >= 1; that is
        z = max(tc, min(1, tc + s/weight)). See docs/math.md §3.1.
        """
        s = _scale(self.reduction, Y.shape[1])
        T = 2 * Y - 1
        tc = T * center
        return T * torch.maximum(tc, torch.clamp(tc + s / weight, max=1.0))


@dataclass(frozen=True)
class Logistic:
    """R(V; Y) = s sum_ij log(1 + exp(-T_ij V_ij)), one-vs-all with T = 2Y - 1.

    ``solver``: ``'prox_linear'`` (default; grad R is s/4-Lipschitz) or ``'exact'``
    (the elementwise prox, by bracketed Newton).
    """

    reduction: str = "sum"
    solver: str = "prox_linear"

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)
        require(self.solver in SOLVERS, "solver", self.solver, "prox_linear or exact")

    @property
    def memory(self) -> LossMemory:
        """The prox-linear step's temporaries, or the exact prox's (its bracketed Newton keeps more)."""
        if self.solver == "exact":
            return LossMemory(output=18, value=6, saved=4)
        return LossMemory(output=5, value=6, saved=4)

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return s * _log1p_exp(-(2 * Y - 1) * V).sum()

    def grad(self, V: Tensor, Y: Tensor) -> Tensor:
        """Returns grad R(V; Y) = -s T sigmoid(-T V)."""
        T = 2 * Y - 1
        return -_scale(self.reduction, V.shape[1]) * T * torch.sigmoid(-T * V)

    def lipschitz(self, n: int) -> float:
        """Returns s/4: the second derivative of log(1 + e^-x) is sigmoid(x) sigmoid(-x) <= 1/4."""
        return _scale(self.reduction, n) / 4

    def prox(self, Y: Tensor, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_V R(V; Y) + weight/2 ||V - center||^2, elementwise.

        With z = t v and tc = t center each element minimises the strictly convex
        s log(1 + e^-z) + weight/2 (z - tc)^2, whose minimiser z = tc + y solves
        g(y) = weight y - s sigmoid(-(tc + y)) = 0, with b = s/weight. g increases and
        sigmoid(-x) decreases, so y >= 0 gives y <= hi = b sigmoid(-tc), and then
        y >= lo = b sigmoid(-(tc + hi)): g(lo) <= 0 <= g(hi). The root in [lo, hi] is found by
        safeguarded Newton (``_scalar.increasing_root``: a bisection step whenever a Newton point
        leaves the open bracket or the last evaluation did not halve it), with ``logistic_steps``
        evaluations at most, enough for bisection alone. See docs/math.md §3.1.
        """
        s = _scale(self.reduction, Y.shape[1])
        T = 2 * Y - 1
        tc = T * center

        def g_and_slope(y: Tensor) -> tuple[Tensor, Tensor]:
            # sigmoid(-x) itself, not 1 - sigmoid(x): it keeps its digits when it is tiny (tc >> 0)
            q = torch.sigmoid(-(tc + y))
            return weight * y - s * q, weight + s * q * (1 - q)

        # solving for the offset y keeps its digits when |tc| is much larger than y
        bound = s / weight
        hi = bound * torch.sigmoid(-tc)
        lo = bound * torch.sigmoid(-(tc + hi))
        y = increasing_root(g_and_slope, lo, hi, logistic_steps(bound, tc.dtype))
        return T * (tc + y)


@dataclass(frozen=True)
class Exponential:
    """R(V; Y) = s sum_ij exp(-T_ij V_ij), one-vs-all with T = 2Y - 1.

    grad R has no global Lipschitz constant, so the V_N block always uses the exact prox.
    """

    reduction: str = "sum"
    solver: str = "exact"
    memory: ClassVar[LossMemory] = LossMemory(output=9, value=3, saved=2)

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)
        require(self.solver == "exact", "solver", self.solver,
                "exact only: grad R of the exponential loss has no global Lipschitz constant, so Theorem 2's "
                "prox-linear step does not apply")  # fmt: skip

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return s * torch.exp(-(2 * Y - 1) * V).sum()

    def grad(self, V: Tensor, Y: Tensor) -> Tensor:
        """Returns grad R(V; Y) = -s T exp(-T V)."""
        T = 2 * Y - 1
        return -_scale(self.reduction, V.shape[1]) * T * torch.exp(-T * V)

    def lipschitz(self, n: int) -> None:
        """Returns None: the second derivative s exp(-T V) is unbounded."""
        return None

    def prox(self, Y: Tensor, center: Tensor, weight: float) -> Tensor:
        """Returns argmin_V R(V; Y) + weight/2 ||V - center||^2, elementwise.

        With z = t v and tc = t center each element minimises the strictly convex
        s e^-z + weight/2 (z - tc)^2; its minimiser z = tc + y has y e^y = a with
        log a = log(s/weight) - tc, i.e. y > 0 is the root of h(y) = y + log y - log a,
        worked in logs so that no e^(-tc) is formed. Bracket: y <= a (as e^y >= 1), and
        when a >= e, y >= 1 and so y <= log a: y <= min(a, max(log a, 1)). Left ends:
        h(a/(1 + a)) <= 0 (as e^(x/(1+x)) <= 1 + x), and for log a > 1 also
        h(log a - log log a) = log(1 - log log a / log a) < 0. h is increasing and
        concave, so Newton y <- y (1 + log a - log y)/(1 + y) from a left end rises
        monotonically to the root without overshooting; the iterate is also kept in
        the bracket against rounding. See docs/math.md §3.1.
        """
        s = _scale(self.reduction, Y.shape[1])
        T = 2 * Y - 1
        tc = T * center
        log_a = math.log(s / weight) - tc
        tiny = torch.finfo(tc.dtype).tiny
        # a y below the smallest normal number moves no z (a < tiny needs tc > -log tiny + log(s/weight), far
        # above any such y): clamping it, and the bound a, which underflows there, keeps log y finite
        y = torch.where(log_a > 1, log_a - torch.log(log_a.clamp(min=1.0)), torch.sigmoid(log_a)).clamp(min=tiny)
        upper = torch.minimum(torch.exp(log_a), log_a.clamp(min=1.0)).clamp(min=tiny)
        for _ in range(EXPONENTIAL_STEPS):
            y = torch.minimum(torch.maximum(y * (1 + log_a - torch.log(y)) / (1 + y), y), upper)
        return T * (tc + y)


@dataclass(frozen=True)
class CrossEntropy:
    """R(V; Y) = s sum_j -log softmax(V[:, j])[y_j], the softmax cross-entropy of each column.

    The V_N block uses the prox-linear step (grad R is s/2-Lipschitz); there is no exact prox.
    See docs/math.md §3.1 (the constant) and §4.2 (the condition it sets on alpha).
    """

    reduction: str = "sum"
    solver: str = "prox_linear"
    memory: ClassVar[LossMemory] = LossMemory(output=3, value=2, saved=1)

    def __post_init__(self) -> None:
        _check_reduction(self.reduction)
        require(self.solver == "prox_linear", "solver", self.solver,
                "prox_linear only: the softmax couples the classes of a column, so there is no elementwise exact "
                "prox")  # fmt: skip

    def __call__(self, V: Tensor, Y: Tensor) -> Tensor:
        s = _scale(self.reduction, V.shape[1])
        return -s * (Y * torch.log_softmax(V, dim=0)).sum()

    def grad(self, V: Tensor, Y: Tensor) -> Tensor:
        """Returns grad R(V; Y) = s (softmax(V) - Y), softmax over the classes of each column."""
        return _scale(self.reduction, V.shape[1]) * (torch.softmax(V, dim=0) - Y)

    def lipschitz(self, n: int) -> float:
        """Returns s/2: each column's Hessian diag(p) - p p^T has eigenvalues <= 1/2 (Gershgorin: 2 p_k (1 - p_k))."""
        return _scale(self.reduction, n) / 2
