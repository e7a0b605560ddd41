"""Vectorised solvers of one-dimensional problems, applied to every element of a tensor at once.

Each solver loops only over a fixed small number of grid points or iterations; every
step is one elementwise operation on the whole tensor (or on the subset of elements
that still needs work), in the dtype and on the device of its inputs. docs/math.md §3.2
describes the search of ``nonconvex_argmin``; §3.1 the losses that use ``increasing_root``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor

# evaluations of increasing_root that place a root of sigma = v inside its grid interval: they leave a bracket
# at most 1/16 of the grid step (the width halves every two), and Newton's convergence, where it applies, far less
ROOT_STEPS = 8
TIGHT = 4  # increasing_root stops once every bracket is within TIGHT eps of its ends' magnitude (rounding level)
PUSH = 2  # increasing_root moves a Newton point at least PUSH eps |end| off the end it starts from
RESCANS = 2  # extra grid scans of a bracket that the first scans shrank by more than SHRINK
LEVELS = 2  # narrower scans around b of a sigma that is not monotone: radius / grid, radius / grid^2
SHRINK = 0.25  # rescan when the bracket radius fell below this fraction (the old grid had < ~grid/4 points in it)


class SmoothActivation(Protocol):
    """An elementwise sigma with its first two derivatives."""

    def __call__(self, u: Tensor) -> Tensor: ...

    def derivative(self, u: Tensor) -> Tensor: ...

    def second_derivative(self, u: Tensor) -> Tensor: ...


def nonconvex_argmin(
    act: SmoothActivation,
    v: Tensor,
    b: Tensor,
    c: float,
    start: Tensor | None = None,
    *,
    grid: int = 32,
    newton_steps: int = 12,
    increasing: bool = False,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> Tensor:
    """Returns argmin_u phi(u) = 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise, for a smooth sigma.

    Bracket: sigma takes values in ``bounds`` = (lo, hi), so 1/2 (sigma(u) - v)^2 >= m =
    1/2 dist(v, [lo, hi])^2 and phi(u) >= m + c/2 (u - b)^2; phi(u*) <= phi(p) for any point
    p (b, ``start``, any point evaluated so far), so |u* - b| <= r = sqrt(2 (min phi(p) - m) / c)
    (m = 0 for an unbounded sigma; a v far outside sigma's range would otherwise give a bracket
    far wider than the valley). When sigma is nondecreasing (``increasing``), every u on the
    side of b away from v has |sigma(u) - v| >= |sigma(b) - v| and so phi(u) >= phi(b): the
    bracket halves to [b - r, b] when sigma(b) > v, else [b, b + r]. Otherwise both sides are
    scanned, and scanned again on brackets ``grid`` and ``grid``^2 times narrower around b
    (``LEVELS``), where a valley narrower than the first grid's spacing may hide near b.

    A scan evaluates phi at ``grid`` equally spaced points of the bracket (one point at
    a time over all elements) and refines, by ``newton_steps`` safeguarded Newton steps
    on phi' = (sigma - v) sigma' + c (u - b) with phi'' = sigma'^2 + (sigma - v) sigma'' + c,
    the two most promising basins among the discrete local minima of the grid and the
    root of sigma = v nearest to b (located inside its grid interval, where a steep
    sigma can hide a narrow valley). Newton takes a gradient step where phi'' <= 0,
    clips every step to a trust radius that starts at the grid spacing and halves on
    rejection, and keeps a step only where it lowers phi. Where the best value found
    shrinks the bracket radius below ``SHRINK`` times its old value, the old grid was
    coarse there: those elements are scanned again on the new bracket (at most
    ``RESCANS`` times). The result is, elementwise, the best point evaluated; it is never
    worse than b or ``start``. See docs/math.md §3.2.
    """
    best_u, best_f = b, 0.5 * (act(b) - v).square()
    if start is not None:
        f_start = 0.5 * (act(start) - v).square() + 0.5 * c * (start - b).square()
        better = f_start < best_f
        best_u = torch.where(better, start, best_u)
        best_f = torch.where(better, f_start, best_f)

    lo, hi = bounds
    # 1/2 dist(v, [lo, hi])^2 <= 1/2 (sigma(u) - v)^2 for every u
    floor = 0.5 * (torch.clamp(lo - v, min=0.0) + torch.clamp(v - hi, min=0.0)).square()
    new_u, new_f = _scan(act, v, b, c, best_u, best_f, floor, grid, newton_steps, increasing)
    if not increasing:
        radius = torch.sqrt((best_f - floor).clamp(min=0.0) * (2.0 / c))
        for level in range(1, LEVELS + 1):
            new_u, new_f = _scan(act, v, b, c, new_u, new_f, floor, grid, newton_steps, increasing,
                                 radius=radius / grid**level)  # fmt: skip
    return _rescan_coarse(act, v, b, c, floor, best_f, new_u, new_f, grid, newton_steps, increasing)


def _rescan_coarse(
    act: SmoothActivation,
    v: Tensor,
    b: Tensor,
    c: float,
    floor: Tensor,
    best_f: Tensor,
    new_u: Tensor,
    new_f: Tensor,
    grid: int,
    newton_steps: int,
    increasing: bool,
) -> Tensor:
    """The rescans of ``nonconvex_argmin``: the elements whose best value ``new_f`` (at ``new_u``) shrank the
    bracket radius below ``SHRINK`` times the radius scanned (from ``best_f``) are scanned again on their new
    bracket, at most ``RESCANS`` times; returns the best point of each element."""
    shape = v.shape
    flat_v, flat_b, flat_floor = v.reshape(-1), b.reshape(-1), floor.reshape(-1)
    for _ in range(RESCANS):
        # elements whose bracket radius sqrt(2 (f - floor) / c) shrank below SHRINK times the scanned one
        coarse = (new_f - floor < SHRINK**2 * (best_f - floor)).reshape(-1)
        best_f = new_f
        todo = coarse.nonzero().squeeze(1)
        if todo.numel() == 0:
            break
        flat_u, flat_f = new_u.reshape(-1).clone(), new_f.reshape(-1).clone()
        sub_u, sub_f = _scan(act, flat_v[todo], flat_b[todo], c, flat_u[todo], flat_f[todo], flat_floor[todo], grid,
                             newton_steps, increasing)  # fmt: skip
        new_f = flat_f.index_put((todo,), sub_f).reshape(shape)
        new_u = flat_u.index_put((todo,), sub_u).reshape(shape)
    return new_u


def _scan(
    act: SmoothActivation,
    v: Tensor,
    b: Tensor,
    c: float,
    best_u: Tensor,
    best_f: Tensor,
    floor: Tensor,
    grid: int,
    newton_steps: int,
    increasing: bool,
    radius: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """One grid scan of the bracket implied by (best_u, best_f = phi(best_u)) and ``floor`` <= 1/2 (sigma - v)^2
    (or of radius ``radius`` around b) and its Newton refinement.

    Returns the best point evaluated (including ``best_u``) and its value phi.
    """

    def phi(u: Tensor) -> Tensor:
        return 0.5 * (act(u) - v).square() + 0.5 * c * (u - b).square()

    r = torch.sqrt((best_f - floor).clamp(min=0.0) * (2.0 / c)) if radius is None else radius
    if increasing:
        first = torch.where(act(b) > v, -r, torch.zeros_like(r))  # offset of the first grid point from b
        step = r / (grid - 1)
    else:
        first = -r
        step = 2.0 * r / (grid - 1)
    minima, roots = _walk_grid(act, v, b, c, first, step, grid, like=best_f)
    min1_f, min1_u, min2_f, min2_u = _with_roots(act, phi, v, step, minima, roots)
    # best grid point (now min1 or min2, unless a better root in its basin displaced it) against the old best
    better = min1_f < best_f
    best_u = torch.where(better, min1_u, best_u)
    best_f = torch.where(better, min1_f, best_f)

    for u0, f0 in ((min1_u, min1_f), (min2_u, min2_f)):
        u, f = _safeguarded_newton(act, phi, v, b, c, u0, f0, step, newton_steps)
        better = f < best_f
        best_u = torch.where(better, u, best_u)
        best_f = torch.where(better, f, best_f)
    return best_u, best_f


_Two = tuple[Tensor, Tensor, Tensor, Tensor]  # the two best of something: value, place, second value, place


def _walk_grid(
    act: SmoothActivation, v: Tensor, b: Tensor, c: float, first: Tensor, step: Tensor, grid: int, *, like: Tensor
) -> tuple[_Two, _Two]:
    """The grid b + first + k step (k < grid) of ``_scan``, walked once: the two best discrete local minima
    of phi (value and place; the best one is the best grid point), and the intervals (distance to b, left
    end) of the two roots of sigma = v nearest to b. ``like`` gives the shape and dtype of the running state.
    """
    # running state over the grid: the previous point (offset from b, sigma - v, phi), whether it is below
    # its left neighbour, the minima and the root intervals so far
    inf = torch.full_like(like, float("inf"))
    min1_f, min1_u, min2_f, min2_u = inf, b, inf, b
    prev_off, prev_gap, prev_f, prev_left = first, v, inf, torch.ones_like(like, dtype=torch.bool)
    root1_d, root1_lo, root2_d, root2_lo = inf, b, inf, b
    for k in range(grid + 1):
        if k < grid:
            off = first + k * step
            gap = act(b + off) - v
            f = 0.5 * torch.addcmul(gap.square(), off, off, value=c)
            is_min = prev_left & (prev_f <= f)
        else:
            is_min = prev_left  # the last grid point has no right neighbour
        if k > 0:  # discrete local minima are two grid steps apart or more: no basin check needed
            min1_f, min1_u, min2_f, min2_u = _keep_two_best(is_min, prev_f, b + prev_off, min1_f, min1_u, min2_f,
                                                            min2_u)  # fmt: skip
        if 0 < k < grid:
            # sigma - v changes sign between two grid points: a valley of phi with value <= c/2 d^2 may hide
            # there, d the farther end's distance to b; keep the two with the smallest d
            d = torch.maximum(prev_off.abs(), off.abs())
            crossing = prev_gap * gap <= 0
            root1_d, root1_lo, root2_d, root2_lo = _keep_two_best(crossing, d, b + prev_off, root1_d, root1_lo,
                                                                  root2_d, root2_lo)  # fmt: skip
        if k < grid:
            prev_left = f < prev_f
            prev_off, prev_gap, prev_f = off, gap, f
    return (min1_f, min1_u, min2_f, min2_u), (root1_d, root1_lo, root2_d, root2_lo)


def _with_roots(
    act: SmoothActivation, phi: Callable[[Tensor], Tensor], v: Tensor, step: Tensor, minima: _Two, roots: _Two
) -> _Two:
    """The two best of the grid's discrete ``minima`` and the roots of sigma = v in the intervals ``roots``
    (one grid step wide, found by ``increasing_root``): they compete for the two Newton starts of ``_scan``."""
    min1_f, min1_u, min2_f, min2_u = minima
    root1_d, root1_lo, root2_d, root2_lo = roots
    inf = torch.full_like(root1_d, float("inf"))
    for root_d, root_lo in ((root1_d, root1_lo), (root2_d, root2_lo)):
        sign = torch.where(act(root_lo) <= v, 1.0, -1.0).to(v.dtype)

        def signed_gap(u: Tensor, sign: Tensor = sign) -> tuple[Tensor, Tensor]:
            return sign * (act(u) - v), sign * act.derivative(u)

        root_u = increasing_root(signed_gap, root_lo, root_lo + step, ROOT_STEPS)
        root_f = torch.where(root_d < inf, phi(root_u), inf)
        min1_f, min1_u, min2_f, min2_u = _keep_two_best(root_f < inf, root_f, root_u, min1_f, min1_u, min2_f, min2_u,
                                                        step)  # fmt: skip
    return min1_f, min1_u, min2_f, min2_u


def _keep_two_best(
    offer: Tensor,
    f: Tensor,
    u: Tensor,
    f1: Tensor,
    u1: Tensor,
    f2: Tensor,
    u2: Tensor,
    sep: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inserts (f, u) where ``offer`` into the pair of best (value, place): returns (f1, u1, f2, u2), f1 <= f2.

    With ``sep``, places within ``sep`` of the best one count as its basin: they replace it or
    are dropped, so the pair stays two different basins.
    """
    new1 = offer & (f < f1)
    new2 = offer & ~new1 & (f < f2)
    demote = new1
    if sep is not None:
        same = (u - u1).abs() <= sep
        new2 = new2 & ~same
        demote = new1 & ~same  # the old best becomes the second unless the new one is in its basin
    f2 = torch.where(demote, f1, torch.where(new2, f, f2))
    u2 = torch.where(demote, u1, torch.where(new2, u, u2))
    return torch.where(new1, f, f1), torch.where(new1, u, u1), f2, u2


def _safeguarded_newton(
    act: SmoothActivation,
    phi: Callable[[Tensor], Tensor],
    v: Tensor,
    b: Tensor,
    c: float,
    u: Tensor,
    f: Tensor,
    radius: Tensor,
    steps: int,
) -> tuple[Tensor, Tensor]:
    """Monotone Newton descent on phi from (u, f = phi(u)); returns the last accepted point and its value."""
    tol = 8 * torch.finfo(u.dtype).eps
    for _ in range(steps):
        s, ds = act(u), act.derivative(u)
        g = (s - v) * ds + c * (u - b)
        h = ds.square() + (s - v) * act.second_derivative(u) + c
        move = torch.where(h > 0, -g / h, -g)
        move = torch.minimum(torch.maximum(move, -radius), radius)
        u_new = u + move
        f_new = phi(u_new)
        ok = f_new < f
        u = torch.where(ok, u_new, u)
        f = torch.where(ok, f_new, f)
        # a rejected step is retried at half its length
        radius = torch.where(ok, radius, 0.5 * move.abs())
        # stop once no element has a step larger than rounding left to take
        if not bool(torch.any(move.abs() > tol * (1 + u.abs()))):
            break
    return u, f


def increasing_root(
    g_and_slope: Callable[[Tensor], tuple[Tensor, Tensor]], lo: Tensor, hi: Tensor, iterations: int
) -> Tensor:
    """Returns a root in [lo, hi] of a continuous g with g(lo) <= 0 <= g(hi), elementwise (unique if g increases).

    ``g_and_slope(z)`` returns g(z) and g'(z); at most ``iterations`` evaluations. Safeguarded Newton:
    the bracket keeps g(lo) <= 0 <= g(hi), each evaluation replacing the end on its side. The next
    point is the Newton point from the end with the shorter Newton step, moved at least ``PUSH`` eps
    times the ends' magnitude off that end (so that a Newton point already at the root closes the
    bracket from its other side too), provided it lies strictly inside the bracket and the last
    evaluation at least halved the bracket; otherwise it is the midpoint. A midpoint evaluation halves
    the bracket and a Newton point only follows a halving, so the width at least halves every two
    evaluations: after k evaluations it is at most (hi - lo) 2^-ceil(k/2), whatever g and its slope do
    (Newton's faster convergence, where it applies, only ends the loop sooner). The loop ends once every
    bracket is within ``TIGHT`` eps of its ends' magnitude (an evaluation at a root closes it). The
    result is the Newton point from the final bracket's chosen end, clipped into the bracket (the end
    itself where that point is not a number), so it is within the bracket's width of a root.
    See docs/math.md §3.1.
    """
    eps = torch.finfo(lo.dtype).eps
    # the Newton step from each end, once evaluated; +-inf before (never chosen over an evaluated end)
    step_lo, step_hi = torch.full_like(lo, math.inf), torch.full_like(hi, -math.inf)
    z = 0.5 * (lo + hi)
    width_before = hi - lo
    for _ in range(iterations):
        g, slope = g_and_slope(z)
        left, right = g <= 0, g >= 0
        step = g.div(slope).neg_()
        del g, slope  # the loop's temporaries are counted in the losses' memory profiles
        lo, step_lo = torch.where(left, z, lo), torch.where(left, step, step_lo)
        hi, step_hi = torch.where(right, z, hi), torch.where(right, step, step_hi)
        del step, z
        width, push = hi - lo, torch.maximum(lo.abs(), hi.abs()).mul_(eps)
        # NaN widths (NaN inputs) compare False: such elements do not hold the loop
        if not bool(torch.any(width > TIGHT * push)):
            break
        from_lo = step_lo.abs() <= step_hi.abs()
        push.mul_(PUSH)
        z = torch.where(from_lo, torch.maximum(step_lo, push), torch.minimum(step_hi, push.neg_()))
        z += torch.where(from_lo, lo, hi)  # the Newton point, pushed off its end
        take = (z > lo) & (z < hi) & (width <= 0.5 * width_before)
        z = torch.where(take, z, torch.add(lo, hi).mul_(0.5))
        width_before = width
    from_lo = step_lo.abs() <= step_hi.abs()
    end = torch.where(from_lo, lo, hi)
    newton = end + torch.where(from_lo, step_lo, step_hi)
    # clipped into the bracket; NaN (0/0 at a flat end) keeps the end
    return torch.where(newton < lo, lo, torch.where(newton > hi, hi, torch.where(newton == newton, newton, end)))
