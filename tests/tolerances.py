"""Numerical tolerances of the tests, derived from the floating-point format, never tuned to one machine.

The rounding model (Higham, *Accuracy and Stability of Numerical Algorithms*, ch. 2-3): each
elementary operation in a dtype with machine epsilon eps = ``torch.finfo(dtype).eps`` is exact up to
a relative error eps/2 (an elementary function of the kernels, glibc's, SLEEF's or PyTorch's portable
ones, up to about one ulp). A sum or dot product of n terms is then off by at most about
n eps/2 x sum |terms|, in whatever order or vector width the kernels add them (blocking, FMA,
AVX-512 against the portable kernels of ``ATEN_CPU_CAPABILITY=default``, another BLAS), and a
solution of a linear system by at most its condition number times the backward error. So a
tolerance below has the form

    factor x eps x n x cond x scale,

- n: the length of the longest sum behind the compared value, or the number of roundings in a chain;
- cond: the condition number that turns a backward error into a forward one (1 for an evaluation);
- scale: the size of what was rounded, sum |terms| and not |sum|: cancellation does not shrink rounding;
- factor: a small constant (``FACTOR``) for the few roundings per term and the second-order terms.

These are worst-case bounds: the actual errors are typically sqrt(n) times smaller, so a test does not
fail on a machine whose kernels round differently, yet on these small problems the bounds stay
1e-10 relative or far below in float64, many orders of magnitude below the size of a real error.

Two exceptions to eps-linear bounds, each derived where it is used:

- a solver that stops when a step no longer lowers its objective *as computed* (a monotone FISTA,
  backtracking proximal gradient, the activations' safeguarded Newton) can stop anywhere the true
  decrease is below the rounding delta of that value: within ``stall_radius(delta, curvature)`` =
  sqrt(2 delta / curvature) of its fixed point, about sqrt(eps), not eps;
- a comparison with a grid search is limited by the grid spacing.

Bitwise equality (``torch.equal``, ``==``) is asserted only where the very same kernels run on the
very same inputs (the same call twice, a value passed through untouched, exact small integers).

Set ``BCD_TOLERANCE_LOG=<file>`` to append, for every ``assert_le`` call, the worst ratio of an
error to its bound with the caller's file and line: how close the bounds are to failing.
"""

from __future__ import annotations

import inspect
import math
import os
from collections.abc import Sequence

import torch
from torch import Tensor

FACTOR = 4.0  # roundings per term (a product, a sum, a subtraction) and second-order terms of the model above


def eps(dtype: torch.dtype = torch.float64) -> float:
    """Machine epsilon of ``dtype`` (2^-52 for float64, 2^-23 for float32)."""
    return torch.finfo(dtype).eps


def tol(dtype: torch.dtype = torch.float64, *, n: float = 1, cond: float = 1.0, factor: float = FACTOR) -> float:
    """``factor x eps(dtype) x n x cond``: the relative rounding error of a result of ``n`` accumulated
    roundings (a sum of n terms, a chain of n operations), amplified by the condition number ``cond``.
    Multiply by the scale of the rounded terms (see the module docstring)."""
    return factor * eps(dtype) * max(float(n), 1.0) * max(float(cond), 1.0)


def stall_radius(delta: Tensor | float, curvature: Tensor | float) -> Tensor | float:
    """sqrt(2 delta / curvature): how far from its minimiser (or proximal-gradient fixed point) a monotone
    solver may stop when it compares objective values with rounding error ``delta`` near a minimiser of
    curvature (strong convexity, or step size 1/curvature) ``curvature``.

    A step there lowers the objective by about curvature/2 x its length^2; below ``delta`` the computed
    values cannot tell it from a rise, so the solver rejects it and stops."""
    if isinstance(delta, Tensor) or isinstance(curvature, Tensor):
        return torch.sqrt(2 * torch.as_tensor(delta) / torch.as_tensor(curvature))
    return math.sqrt(2 * delta / curvature)


def assert_le(error: Tensor | float, bound: Tensor | float, what: str = "") -> None:
    """error <= bound, elementwise for tensors (broadcasting); the message gives the worst ratio error / bound."""
    error_t = torch.as_tensor(error, dtype=torch.float64)
    bound_t = torch.as_tensor(bound, dtype=torch.float64)
    error_t, bound_t = torch.broadcast_tensors(error_t, bound_t)
    # a zero bound (an exact computation) has ratio 0 when met, inf when missed
    ratios = torch.where(bound_t > 0, error_t / bound_t, torch.where(error_t <= 0, 0.0, math.inf))
    ratio = float(ratios.max()) if ratios.numel() else -math.inf
    _log(ratio)
    assert bool(torch.all(error_t <= bound_t)), f"{what}: error / bound = {ratio:.3g} > 1"


def assert_within(actual: Tensor, expected: Tensor, bound: Tensor | float, what: str = "") -> None:
    """|actual - expected| <= bound, elementwise (broadcasting), compared in float64."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert_le((actual.double() - expected.double()).abs(), bound, what)


def forward_pass_error(
    W: Sequence[Tensor], b: Sequence[Tensor], X: Tensor, residual: Sequence[bool] | None = None
) -> Tensor:
    """Elementwise bound on the rounding error of a forward pass X -> sigma_N(W_N ... sigma(W_1 X + b_1) ... + b_N)
    computed in X's dtype, for 1-Lipschitz activations with |sigma(u)| <= |u| that are exact or correctly
    rounded (ReLU, identity); a residual layer adds its input to its output.

    With A_0 = |X| and A_{l+1} = |W_l| A_l + |b_l| (+ A_l for a residual layer), the magnitude of every value
    of layer l, a pre-activation W x + b of length-d sums is off by at most (d + 1) eps A_{l+1}, and the
    error e_l of its input grows to |W_l| e_l (+ e_l + eps A_{l+1} for a residual layer). Two
    implementations (another order of the sums, another kernel) differ by at most twice the returned bound.
    First order in eps; (d + 1) eps per sum is twice the worst case (d + 1) eps/2, which covers the rest.
    """
    unit = eps(X.dtype)
    residual = list(residual) if residual else [False] * len(W)
    A = X.double().abs()
    e = torch.zeros_like(A)
    for W_l, b_l, res in zip(W, b, residual, strict=True):
        Wa, ba = W_l.double().abs(), b_l.double().abs()[:, None]
        pre = Wa @ A + ba
        e_next = Wa @ e + (W_l.shape[1] + 1) * unit * pre
        if res:
            A_next = pre + A
            e_next = e_next + e + unit * A_next
        else:
            A_next = pre
        A, e = A_next, e_next
    return e


def activation_size(act, u: Tensor, u_size: Tensor | float = 0.0) -> Tensor:
    """The size of what is rounded in evaluating sigma(u), u itself known to within rounding of ``u_size``:
    |sigma(u)| + |sigma'(u)| u_size, plus, for a polynomial sum_k a_k u^k, its terms sum_k |a_k| |u|^k (Horner's
    rule rounds them, not their sum). Elementary functions (exp, tanh, log1p) are within an ulp or so."""
    size = act(u).abs() + act.derivative(u).abs() * u_size
    if hasattr(act, "coefficients"):
        size = size + sum(abs(a) * u.abs() ** k for k, a in enumerate(act.coefficients))
    return size


def _log(ratio: float) -> None:
    """Appends ``file:line ratio`` for the caller of ``assert_le`` to $BCD_TOLERANCE_LOG, when set."""
    path = os.environ.get("BCD_TOLERANCE_LOG")
    if not path:
        return
    frame = inspect.currentframe()
    caller = frame.f_back.f_back if frame and frame.f_back else None  # _log <- assert_le <- the test
    while caller is not None and caller.f_code.co_filename == __file__:  # assert_within <- the test
        caller = caller.f_back
    where = f"{os.path.basename(caller.f_code.co_filename)}:{caller.f_lineno}" if caller else "?"
    with open(path, "a") as log:
        log.write(f"{where} {ratio:.6g}\n")
