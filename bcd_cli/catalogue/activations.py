"""Activations sigma and the solver of the elementwise U-block.

Each activation is callable (the forward map), has ``derivative(u)`` (sigma'(u)) and
``prox(v, b, c, start=None)``, which returns
``argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2`` elementwise, with ``c > 0``: the
U-block of three-splitting BCD after its quadratic terms are merged (Zeng et al. 2019,
Algorithm 2 step 4). ``start`` is the block's old value: the returned point is never
worse than it. The piecewise-linear entries solve the problem in closed form (the
global minimiser, so ``start`` is not needed); the smooth ones (which also have
``second_derivative``) use the bracketed grid-and-Newton solver of ``_scalar.py``,
controlled by their fields ``grid`` (points) and ``newton_steps``.

An entry may also have ``prox_(v, b, c, start=None)``: the same minimiser written into b's
memory (b is consumed), which the engine uses when present to save a temporary the size of
the block. ``memory`` (an ``ActivationMemory``) is what its prox and forward map allocate,
for the memory estimate. ``init_gain()`` is the gain g of the variance-preserving initialisation
(``model.init=scaled``, docs/math.md §1): W ~ N(0, g^2 / fan_in), torch's ``calculate_gain`` wherever
torch defines it. See docs/math.md §2.3 (the U-block) and §3.2 (every activation's prox).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from bcd_cli.catalogue._memory import ActivationMemory
from bcd_cli.catalogue._scalar import nonconvex_argmin
from bcd_cli.errors import require


def _check_solver(grid: object, newton_steps: object) -> None:
    """Validates the two solver fields of a smooth activation."""
    require(isinstance(grid, int) and not isinstance(grid, bool) and grid >= 2, "grid", grid, "an integer >= 2")
    require(
        isinstance(newton_steps, int) and not isinstance(newton_steps, bool) and newton_steps >= 0,
        "newton_steps",
        newton_steps,
        "an integer >= 0",
    )


@dataclass(frozen=True)
class Linear:
    """sigma(u) = u."""

    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=0, forward=0, saved=0)

    def init_gain(self) -> float:
        """1, torch's gain for the identity: ``model.init=scaled`` draws W ~ N(0, 1 / fan_in) before it."""
        return float(torch.nn.init.calculate_gain("linear"))

    def __call__(self, u: Tensor) -> Tensor:
        return u

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = 1."""
        return torch.ones_like(u)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (u - v)^2 + c/2 (u - b)^2 = (v + c b) / (1 + c); ``start`` is not needed."""
        return self.prox_(v, b.clone(memory_format=torch.contiguous_format), c)

    def prox_(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """``prox`` written into b."""
        return b.mul_(c / (1 + c)).add_(v, alpha=1 / (1 + c))


@dataclass(frozen=True)
class ReLU:
    """sigma(u) = max(u, 0)."""

    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=1, forward=0, saved=0)

    def init_gain(self) -> float:
        """sqrt(2), torch's gain for ReLU: relu halves the mean square of a symmetric input."""
        return float(torch.nn.init.calculate_gain("relu"))

    def __call__(self, u: Tensor) -> Tensor:
        return torch.relu(u)

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = 1 for u > 0, else 0 (the left derivative at the kink u = 0)."""
        return (u > 0).to(u.dtype)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (relu(u) - v)^2 + c/2 (u - b)^2, elementwise (Lemma 13).

        The u <= 0 piece is minimised by min(b, 0), the u >= 0 piece by p = (v + c b)/(1 + c)
        when p > 0. Comparing the two values (Lemma 13's case table) reduces to one threshold:
        p wins exactly when v >= t with t = -c b for b >= 0 (twice the difference of the
        values is (v + c b)^2 / (1 + c)) and t = -(c + sqrt(c (1 + c))) b for b < 0 (the
        larger root of v^2 + 2 c b v - c b^2), that is t = -c b - sqrt(c (1 + c)) min(b, 0);
        at the threshold both are minimisers. The global minimiser needs no ``start``.
        See docs/math.md §2.3 for the derivation.
        """
        return self.prox_(v, b.clone(memory_format=torch.contiguous_format), c)

    def prox_(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """``prox`` written into b: max(p - BIG [v < t], min(b, 0)), BIG the dtype's largest value over 2.

        Arithmetic passes only (a boolean select costs several times more on the CPU) and one
        temporary the size of v.
        """
        # [v < t] from sign(t - v), t - v = -(c b + sqrt(c (1 + c)) min(b, 0) + v): 1 below the threshold, else 0
        below = torch.clamp(b, max=0.0).mul_(math.sqrt(c * (1 + c))).add_(b, alpha=c).add_(v).neg_().sign_()
        below.clamp_(min=0.0).mul_(-torch.finfo(b.dtype).max / 2).add_(v, alpha=1 / (1 + c))
        below.add_(b, alpha=c / (1 + c))  # p - BIG [v < t]
        return torch.maximum(below, b.clamp_(max=0.0), out=b)


@dataclass(frozen=True)
class LeakyReLU:
    """sigma(u) = u for u >= 0, slope * u for u < 0, with 0 <= slope < 1."""

    slope: float = 0.01
    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=6, forward=1.25, saved=0.25)

    def __post_init__(self) -> None:
        require(
            isinstance(self.slope, int | float) and not isinstance(self.slope, bool) and 0 <= self.slope < 1,
            "slope",
            self.slope,
            "a number in [0, 1)",
        )

    def init_gain(self) -> float:
        """sqrt(2 / (1 + slope^2)), torch's gain for leaky ReLU with this entry's slope."""
        return float(torch.nn.init.calculate_gain("leaky_relu", self.slope))

    def __call__(self, u: Tensor) -> Tensor:
        return torch.where(u > 0, u, self.slope * u)  # at the kink: slope under autograd, as derivative()

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = 1 for u > 0, else slope (the left derivative at the kink u = 0)."""
        return torch.where(u > 0, torch.ones_like(u), self.slope)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise, in closed form.

        On u >= 0 the objective is the quadratic 1/2 (u - v)^2 + c/2 (u - b)^2, minimised
        over the piece by max((v + c b)/(1 + c), 0); on u <= 0 it is
        1/2 (slope u - v)^2 + c/2 (u - b)^2, minimised by min((slope v + c b)/(slope^2 + c), 0).
        The global minimiser is the better of the two (the u >= 0 one on a tie), so
        ``start`` is not needed. See docs/math.md §3.2.
        """
        a = self.slope
        right = torch.clamp((v + c * b) / (1 + c), min=0.0)
        left = torch.clamp((a * v + c * b) / (a * a + c), max=0.0)
        f_right = (right - v).square() + c * (right - b).square()
        f_left = (a * left - v).square() + c * (left - b).square()
        return torch.where(f_right <= f_left, right, left)


@dataclass(frozen=True)
class Sigmoid:
    """sigma(u) = 1 / (1 + exp(-u))."""

    grid: int = 32
    newton_steps: int = 12
    increasing: ClassVar[bool] = True
    bounds: ClassVar[tuple[float, float]] = (0.0, 1.0)  # the range of sigma, for the prox's bracket
    # the grid-and-Newton prox (catalogue/_scalar.py) holds ~43 element-sized tensors
    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=48, forward=0, saved=0)

    def __post_init__(self) -> None:
        _check_solver(self.grid, self.newton_steps)

    def init_gain(self) -> float:
        """1, torch's gain for the sigmoid."""
        return float(torch.nn.init.calculate_gain("sigmoid"))

    def __call__(self, u: Tensor) -> Tensor:
        return torch.sigmoid(u)

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = sigma(u) (1 - sigma(u))."""
        s = torch.sigmoid(u)
        return s * (1 - s)

    def second_derivative(self, u: Tensor) -> Tensor:
        """sigma''(u) = sigma(u) (1 - sigma(u)) (1 - 2 sigma(u))."""
        s = torch.sigmoid(u)
        return s * (1 - s) * (1 - 2 * s)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise, never worse than b or ``start``.

        Solved by ``_scalar.nonconvex_argmin`` (bracket, grid, safeguarded Newton).
        """
        return nonconvex_argmin(self, v, b, c, start, grid=self.grid, newton_steps=self.newton_steps, increasing=True,
                                bounds=self.bounds)  # fmt: skip


@dataclass(frozen=True)
class Tanh:
    """sigma(u) = tanh(u)."""

    grid: int = 32
    newton_steps: int = 12
    increasing: ClassVar[bool] = True
    bounds: ClassVar[tuple[float, float]] = (-1.0, 1.0)  # the range of sigma, for the prox's bracket
    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=48, forward=0, saved=0)

    def __post_init__(self) -> None:
        _check_solver(self.grid, self.newton_steps)

    def init_gain(self) -> float:
        """5/3, torch's gain for tanh."""
        return float(torch.nn.init.calculate_gain("tanh"))

    def __call__(self, u: Tensor) -> Tensor:
        return torch.tanh(u)

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = 1 - tanh(u)^2."""
        return 1 - torch.tanh(u).square()

    def second_derivative(self, u: Tensor) -> Tensor:
        """sigma''(u) = -2 tanh(u) (1 - tanh(u)^2)."""
        t = torch.tanh(u)
        return -2 * t * (1 - t.square())

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (tanh(u) - v)^2 + c/2 (u - b)^2, elementwise, never worse than b or ``start``.

        Solved by ``_scalar.nonconvex_argmin`` (bracket, grid, safeguarded Newton).
        """
        return nonconvex_argmin(self, v, b, c, start, grid=self.grid, newton_steps=self.newton_steps, increasing=True,
                                bounds=self.bounds)  # fmt: skip


@dataclass(frozen=True)
class Softplus:
    """sigma(u) = log(1 + exp(t u)) / t with sharpness t > 0 (t -> inf approaches ReLU)."""

    sharpness: float = 1.0
    grid: int = 32
    newton_steps: int = 12
    increasing: ClassVar[bool] = True
    bounds: ClassVar[tuple[float, float]] = (0.0, math.inf)  # the range of sigma, for the prox's bracket
    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=48, forward=3, saved=3)

    def __post_init__(self) -> None:
        t = self.sharpness
        require(
            isinstance(t, int | float) and not isinstance(t, bool) and 0 < t < math.inf,
            "sharpness",
            t,
            "a finite number > 0",
        )
        _check_solver(self.grid, self.newton_steps)

    def init_gain(self) -> float:
        """sqrt(2), ReLU's gain (torch defines none for softplus).

        Softplus is ReLU plus a positive bump of height log(2) / t at 0, which it approaches as t grows; the
        bump only adds to the mean square of the layer's output, so a gain above ReLU's would let the signal grow.
        """
        return float(torch.nn.init.calculate_gain("relu"))

    def __call__(self, u: Tensor) -> Tensor:
        tu = self.sharpness * u
        # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow, and exact to rounding for large |x|
        return (torch.relu(tu) + torch.log1p(torch.exp(-tu.abs()))) / self.sharpness

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = 1 / (1 + exp(-t u))."""
        return torch.sigmoid(self.sharpness * u)

    def second_derivative(self, u: Tensor) -> Tensor:
        """sigma''(u) = t s (1 - s) with s = 1 / (1 + exp(-t u))."""
        s = torch.sigmoid(self.sharpness * u)
        return self.sharpness * s * (1 - s)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise, never worse than b or ``start``.

        Solved by ``_scalar.nonconvex_argmin`` (bracket, grid, safeguarded Newton).
        """
        return nonconvex_argmin(self, v, b, c, start, grid=self.grid, newton_steps=self.newton_steps, increasing=True,
                                bounds=self.bounds)  # fmt: skip


@dataclass(frozen=True)
class Polynomial:
    """sigma(u) = sum_k a_k u^k with coefficients (a_0, a_1, ...), evaluated by Horner's rule.

    Not monotone in general (the default u + u^2/4 is not), so the U-block solver
    searches both sides of b.
    """

    coefficients: tuple[float, ...] = (0.0, 1.0, 0.25)
    grid: int = 32
    newton_steps: int = 12
    increasing: ClassVar[bool] = False
    memory: ClassVar[ActivationMemory] = ActivationMemory(prox=48, forward=3, saved=3)

    def __post_init__(self) -> None:
        allowed = "a non-empty list of finite numbers (a_0, a_1, ...)"
        raw = self.coefficients
        ok = not isinstance(raw, str | bytes) and hasattr(raw, "__iter__")
        items = list(raw) if ok else []
        ok = ok and all(isinstance(a, int | float) and not isinstance(a, bool) for a in items)
        ok = ok and len(items) > 0 and all(math.isfinite(a) for a in items)
        require(ok, "coefficients", raw, allowed)
        # Hydra passes a list: a tuple keeps the frozen dataclass hashable
        object.__setattr__(self, "coefficients", tuple(float(a) for a in items))
        _check_solver(self.grid, self.newton_steps)

    @staticmethod
    def _horner(coefficients: tuple[float, ...], u: Tensor) -> Tensor:
        """sum_k coefficients[k] u^k by Horner's rule (zero for no coefficients)."""
        if not coefficients:
            return torch.zeros_like(u)
        out = torch.full_like(u, coefficients[-1])
        for a in reversed(coefficients[:-1]):
            out = out * u + a
        return out

    def init_gain(self) -> float:
        """1, the identity's gain (torch defines none for polynomials).

        The default u + u^2/4 is the identity to first order near 0, where small initial weights put U;
        for other coefficients ``model.init=normal`` with a chosen ``model.init_std`` may suit better.
        """
        return float(torch.nn.init.calculate_gain("linear"))

    def __call__(self, u: Tensor) -> Tensor:
        return self._horner(self.coefficients, u)

    def derivative(self, u: Tensor) -> Tensor:
        """sigma'(u) = sum_k k a_k u^(k-1)."""
        return self._horner(tuple(k * a for k, a in enumerate(self.coefficients))[1:], u)

    def second_derivative(self, u: Tensor) -> Tensor:
        """sigma''(u) = sum_k k (k-1) a_k u^(k-2)."""
        return self._horner(tuple(k * (k - 1) * a for k, a in enumerate(self.coefficients))[2:], u)

    def prox(self, v: Tensor, b: Tensor, c: float, start: Tensor | None = None) -> Tensor:
        """Returns argmin_u 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise, never worse than b or ``start``.

        Solved by ``_scalar.nonconvex_argmin`` (bracket on both sides of b, grid, safeguarded Newton).
        """
        return nonconvex_argmin(self, v, b, c, start, grid=self.grid, newton_steps=self.newton_steps, increasing=False)
