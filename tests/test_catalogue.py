"""Catalogue entries (activations, losses, regularizers) against independent brute force.

The entries are discovered from the YAML files under ``conf/act``, ``conf/loss`` and
``conf/reg`` and built with Hydra exactly as the CLI builds them, so a new YAML file is
tested here without new test code:

- every activation's ``prox(v, b, c, start)`` is compared with a grid search of
  ``1/2 (sigma(u) - v)^2 + c/2 (u - b)^2`` refined around its lowest local minima (nonconvex, so no local
  solver), and its
  ``derivative`` (and ``second_derivative``) with autograd;
- every loss's ``grad`` is compared with autograd and its ``lipschitz`` constant with
  finite differences of ``grad``; every exact ``prox(Y, center, weight)`` with a dense
  1-D grid per element (all exact proxes are elementwise), with L-BFGS and with the
  optimality condition when the loss is smooth;
- every regularizer's ``prox(Z, t)`` is compared with a dense 1-D grid per element (and
  L-BFGS when it is quadratic), and ``prox_with`` with a dense grid for every pair of
  (loss with an exact prox) x (regularizer);
- forward values (``act(u)``, ``loss(V, Y)``, ``reg(X)``, ``reg.ridge``) are compared
  with the reference formulas in the ``REFERENCE_*`` tables below, keyed by class
  name. A new entry without a reference formula fails ``test_*_has_reference``:
  add one row to the table.

Parameter variants (``VARIANTS``) are applied to every entry that has the field, so e.g.
both loss reductions and a regularization weight large enough to matter are covered;
``INVALID`` lists values every entry with that field must reject.

Tolerances (``tests/tolerances.py``) are tol(dtype, n) x the size of what was rounded: an elementwise
formula of a few operations (n = 4 to 8) on the magnitudes of its terms, a sum over n elements, a
reduction in another order. A solver that keeps a step only if it lowers its objective *as computed*
(the smooth activations' safeguarded Newton) ends within that objective's rounding of the minimum
value; a comparison with a grid search holds up to the rounding of the grid's values.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.func import vmap

from bcd_cli.catalogue.activations import LeakyReLU, ReLU
from bcd_cli.catalogue.losses import CrossEntropy, Exponential, Logistic
from bcd_cli.catalogue.regularizers import Box
from tests.conftest import requires_cuda
from tests.tolerances import activation_size, assert_le, assert_within, eps, stall_radius, tol

CONF = Path(__file__).resolve().parents[1] / "conf"
DT = torch.float64
NAN, INF = float("nan"), float("inf")

# field -> values every entry with that field is also tested with (besides its YAML default)
VARIANTS: dict[str, tuple | dict[str, tuple]] = {
    "reduction": ("sum", "mean"),
    "lam": (0.7, 3.0),
    "l1": (0.7,),
    "l2": (3.0,),
    "lo": (-0.3,),
    "hi": (0.4,),
    "slope": (0.0, 0.3),
    "sharpness": (4.0,),
    "coefficients": ((0.5, -1.0, 0.0, 0.3),),  # a cubic with two local extrema: up to three roots of sigma = v
    "solver": {"Logistic": ("exact",)},  # per class: the only entry with a choice of V_N solver
}

# field -> values every entry with that field must reject with ValueError(field, value, allowed)
INVALID: dict[str, tuple] = {
    "reduction": ("median", None),
    "solver": ("newton", ""),
    "lam": (-0.5, -1e-12, INF, NAN),
    "l1": (-0.5, INF, NAN),
    "l2": (-0.5, INF, NAN),
    "lo": (NAN, "a"),
    "hi": (NAN,),
    "slope": (-0.1, 1.0, 2.0, NAN),
    "sharpness": (0.0, -1.0, INF, NAN),
    "grid": (1, 0, 2.5),
    "newton_steps": (-1, 1.5),
    "coefficients": ((), (NAN,), (1.0, INF), "abc"),
}

REFERENCE_ACT = {
    # scalar sigma(x) for an entry, in plain Python
    "Linear": lambda e, x: x,
    "ReLU": lambda e, x: max(x, 0.0),
    "LeakyReLU": lambda e, x: x if x >= 0 else e.slope * x,
    "Sigmoid": lambda e, x: 1.0 / (1.0 + math.exp(-x)),
    "Tanh": lambda e, x: math.tanh(x),
    "Softplus": lambda e, x: math.log1p(math.exp(e.sharpness * x)) / e.sharpness,
    "Polynomial": lambda e, x: sum(a * x**k for k, a in enumerate(e.coefficients)),
}


def _reduction_scale(entry, n: int) -> float:
    return 1.0 / n if entry.reduction == "mean" else 1.0


def _one_vs_all(V, Y, ell) -> float:
    """sum_ij ell(t_ij v_ij) with t = 2y - 1, in plain Python."""
    return sum(ell((2 * float(y) - 1) * float(v)) for v, y in zip(V.flatten(), Y.flatten(), strict=True))


def _cross_entropy(V, Y) -> float:
    """sum_j (log sum_k e^(v_kj) - v_(y_j) j), in plain Python."""
    total = 0.0
    for j in range(V.shape[1]):
        column = [float(x) for x in V[:, j]]
        top = max(column)
        total += top + math.log(sum(math.exp(x - top) for x in column)) - column[int(Y[:, j].argmax())]
    return total


REFERENCE_LOSS = {
    # (R(V; Y) in plain Python, smooth?) with s = 1 (sum) or 1/n (mean over the n columns)
    "Square": (
        lambda e, V, Y: 0.5 * _reduction_scale(e, V.shape[1]) * sum(float(x) ** 2 for x in (V - Y).flatten()),
        True,
    ),
    "Hinge": (lambda e, V, Y: _reduction_scale(e, V.shape[1]) * _one_vs_all(V, Y, lambda z: max(0.0, 1 - z)), False),
    "Logistic": (
        lambda e, V, Y: _reduction_scale(e, V.shape[1]) * _one_vs_all(V, Y, lambda z: math.log1p(math.exp(-z))),
        True,
    ),
    "Exponential": (lambda e, V, Y: _reduction_scale(e, V.shape[1]) * _one_vs_all(V, Y, lambda z: math.exp(-z)), True),
    "CrossEntropy": (lambda e, V, Y: _reduction_scale(e, V.shape[1]) * _cross_entropy(V, Y), True),
}


def _inside(X, lo: float, hi: float) -> bool:
    return all(lo <= float(x) <= hi for x in X.flatten())


REFERENCE_REG = {
    # (value r(X), curvature of the quadratic part)
    "NoReg": (lambda e, X: 0.0, lambda e: 0.0),
    "L2": (lambda e, X: 0.5 * e.lam * sum(float(x) ** 2 for x in X.flatten()), lambda e: e.lam),
    "L1": (lambda e, X: e.lam * sum(abs(float(x)) for x in X.flatten()), lambda e: 0.0),
    "ElasticNet": (
        lambda e, X: sum(e.l1 * abs(float(x)) + 0.5 * e.l2 * float(x) ** 2 for x in X.flatten()),
        lambda e: e.l2,
    ),
    "NonNeg": (lambda e, X: 0.0 if _inside(X, 0.0, INF) else INF, lambda e: 0.0),
    "Box": (lambda e, X: 0.0 if _inside(X, e.lo, e.hi) else INF, lambda e: 0.0),
}


# ------------------------------------------------------------------ discovery


def _entries(group: str, variants: bool = True) -> list:
    """pytest params (entry, id) for every YAML file of ``conf/<group>`` and every applicable variant."""
    params = []
    for path in sorted((CONF / group).glob("*.yaml")):
        entry = instantiate(OmegaConf.load(path))
        params.append(pytest.param(entry, id=f"{group}/{path.stem}"))
        fields = {f.name for f in dataclasses.fields(entry)} if dataclasses.is_dataclass(entry) else set()
        for field in sorted(fields & VARIANTS.keys()) if variants else ():
            values = VARIANTS[field]
            for value in values.get(type(entry).__name__, ()) if isinstance(values, dict) else values:
                if getattr(entry, field) != value:
                    variant = dataclasses.replace(entry, **{field: value})
                    params.append(pytest.param(variant, id=f"{group}/{path.stem}-{field}={value}"))
    assert params, f"no YAML files under {CONF / group}"
    return params


ACTS, LOSSES, REGS = _entries("act"), _entries("loss"), _entries("reg")
SMOOTH_ACTS = [p for p in ACTS if hasattr(p.values[0], "second_derivative")]
EXACT_LOSSES = [p for p in LOSSES if hasattr(p.values[0], "prox")]
SMOOTH_EXACT_LOSSES = [p for p in EXACT_LOSSES if REFERENCE_LOSS[type(p.values[0]).__name__][1]]


def _invalid_params() -> list:
    """(entry, field, bad value) for every YAML default entry and every field of it listed in INVALID."""
    params = []
    for group in ("act", "loss", "reg"):
        for p in _entries(group, variants=False):
            entry = p.values[0]
            for field in sorted({f.name for f in dataclasses.fields(entry)} & INVALID.keys()):
                for k, bad in enumerate(INVALID[field]):
                    params.append(pytest.param(entry, field, bad, id=f"{p.id}-{field}-{k}"))
    return params


def test_discovery_finds_the_shipped_entries():
    names = {type(p.values[0]).__name__ for p in ACTS + LOSSES + REGS}
    assert {"ReLU", "Linear", "Square", "NoReg", "L2"} <= names
    assert {"LeakyReLU", "Sigmoid", "Tanh", "Softplus", "Polynomial"} <= names
    assert {"Hinge", "Logistic", "Exponential", "CrossEntropy", "L1", "ElasticNet", "NonNeg", "Box"} <= names


def test_entries_are_hashable_frozen_dataclasses():
    for p in ACTS + LOSSES + REGS:
        entry = p.values[0]
        hash(entry)
        with pytest.raises(dataclasses.FrozenInstanceError):
            entry.some_field = 1


@pytest.mark.parametrize("entry, field, bad", _invalid_params())
def test_invalid_parameters_are_rejected(entry, field, bad):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(entry, **{field: bad})
    got_field, value, allowed = info.value.args
    assert got_field == field and isinstance(allowed, str) and allowed
    assert value == bad or value is bad or (isinstance(bad, float) and math.isnan(bad) and math.isnan(value))


# ------------------------------------------------------------------ numerical helpers


def lbfgs_argmin(f, x0: torch.Tensor) -> torch.Tensor:
    """Minimiser of the smooth scalar function f by L-BFGS (strong Wolfe), from x0."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS(
        [x], lr=1.0, max_iter=5000, max_eval=10000, tolerance_grad=1e-14, tolerance_change=1e-18,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        value = f(x)
        value.backward()
        return value

    opt.step(closure)
    return x.detach()


def act_objective(act, u: torch.Tensor, v: torch.Tensor, b: torch.Tensor, c) -> torch.Tensor:
    """1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise (broadcasting)."""
    return 0.5 * (act(u) - v) ** 2 + 0.5 * c * (u - b) ** 2


def grid_min(act, v: torch.Tensor, b: torch.Tensor, c: torch.Tensor, lo=-15.0, hi=15.0, points=20_001, candidates=3):
    """Per triple, min of 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2 over a grid on [lo, hi], refined twice around each
    of the ``candidates`` lowest local minima of the grid's values.

    A local minimiser of the function lies within one grid step of a local minimum of its samples, so each
    refinement spans two steps either side of its centre (2001 points: the step shrinks 500-fold, to about
    6e-9 after both). Refining several local minima, not only the lowest sample, searches every basin whose
    minimum is within the coarse grid's error of the lowest: the grid cannot pick the wrong one of two near-equal
    minima of a nonconvex sigma. Returns (minimum value, argmin); the value is an upper bound of the true minimum.
    """
    grid = torch.linspace(lo, hi, points, dtype=DT)
    h = (hi - lo) / (points - 1)
    values, argmins = [], []
    for s in range(0, v.numel(), 25):  # 25 triples at a time: 25 x 20k doubles
        vv, bb, cc = (t[s : s + 25, None] for t in (v, b, c))
        coarse = act_objective(act, grid[None, :], vv, bb, cc)
        padded = torch.nn.functional.pad(coarse, (1, 1), value=INF)
        local = (coarse <= padded[:, :-2]) & (coarse <= padded[:, 2:])
        centre = grid[torch.where(local, coarse, INF).topk(candidates, largest=False).indices]  # (triples, candidates)
        step = h
        for _ in range(2):
            x = centre[..., None] + torch.linspace(-2 * step, 2 * step, 2001, dtype=DT)  # the centre included
            f = act_objective(act, x, vv[..., None], bb[..., None], cc[..., None])
            best = f.argmin(dim=-1, keepdim=True)
            centre, value = x.gather(-1, best)[..., 0], f.gather(-1, best)[..., 0]
            step = 4 * step / 2000
        lowest = value.argmin(dim=1, keepdim=True)
        values.append(value.gather(1, lowest)[:, 0])
        argmins.append(centre.gather(1, lowest)[:, 0])
    return torch.cat(values), torch.cat(argmins)


def elementwise_grid_min(objective, lo: torch.Tensor, hi: torch.Tensor, points: int = 20_001):
    """Per element, min of the 1-D function objective(x) (x of the elements' shape + (grid,)) over [lo, hi].

    A dense grid, refined by a second grid around the coarse argmin. Returns (minimum value, argmin);
    the value is an upper bound of the true minimum over [lo, hi].
    """
    steps = torch.linspace(0.0, 1.0, points, dtype=DT)
    x = lo[..., None] + (hi - lo)[..., None] * steps
    coarse = objective(x)
    best = coarse.argmin(dim=-1, keepdim=True)
    h = (hi - lo)[..., None] / (points - 1)
    fine = x.gather(-1, best) + h * torch.linspace(-1.0, 1.0, 2001, dtype=DT)
    fine_values = objective(fine)
    k = fine_values.argmin(dim=-1, keepdim=True)
    value = torch.minimum(fine_values.gather(-1, k), coarse.gather(-1, best))[..., 0]
    return value, fine.gather(-1, k)[..., 0]


def phi_rounding(act, u: torch.Tensor, v: torch.Tensor, b: torch.Tensor, c, dtype: torch.dtype = DT) -> torch.Tensor:
    """tol x what is rounded in 1/2 (sigma(u) - v)^2 + c/2 (u - b)^2, elementwise: the value itself (the difference
    of two floats is correctly rounded, relative to itself) and sigma's own rounding times |sigma(u) - v|. Also
    how far above the minimum value a solver that compares these computed values can stop."""
    return tol(dtype, n=4) * (act_objective(act, u, v, b, c) + (act(u) - v).abs() * activation_size(act, u))


def closed_form_rounding(act, v: torch.Tensor, b: torch.Tensor, c) -> torch.Tensor:
    """tol x the size of the terms of the closed-form minimisers of the piecewise-linear activations' prox:
    (v + c b)/(1 + c) on the right piece, (a v + c b)/(a^2 + c) (slope a; min(b, 0) for ReLU) on the left."""
    a = getattr(act, "slope", 0.0)
    right = (v.abs() + c * b.abs()) / (1 + c)
    left = (a * v.abs() + c * b.abs()) / (a * a + c)
    return tol(DT, n=4) * torch.maximum(right, left)


def loss_size(loss, V: torch.Tensor, Y: torch.Tensor) -> float:
    """What is rounded in R(V; Y): its value (a sum of nonnegative terms) plus s sum (2 |V| + |Y| + 1), which bounds
    the terms inside each element's or column's formula (1 - t v, log-sum-exp - v_y)."""
    return abs(float(loss(V, Y))) + _reduction_scale(loss, V.shape[1]) * float((2 * V.abs() + Y.abs() + 1).sum())


def loss_curvature(loss, V: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """The diagonal of the Hessian of an elementwise loss at V (d grad / dV, by autograd)."""
    V = V.detach().clone().requires_grad_(True)
    (h,) = torch.autograd.grad(loss.grad(V, Y).sum(), V)
    return h


def assert_matches_lbfgs(objective, got: torch.Tensor, ref: torch.Tensor, *, mu: float, L: float, grad_size: float):
    """got minimises the mu-strongly convex objective (up to rounding) and agrees with the L-BFGS minimiser ref.

    ``grad_size``: the size of the terms of the gradient at got, whose rounding (tol x it, n = the number of
    entries) bounds ||grad objective(got)|| for an accurate minimiser; L-BFGS stops once the value stops changing
    as computed, within stall_radius(tol x |value|, mu) of the minimiser, so its gradient is at most L times that.
    A point x is within ||grad(x)|| / mu of the minimiser: that bounds ||got - ref||.
    """

    def gradient_norm(X):
        X = X.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(objective(X), X)
        return float(torch.linalg.vector_norm(g))

    size = got.numel()
    rounding = tol(DT, n=size) * grad_size
    f_got, f_ref = float(objective(got)), float(objective(ref))
    g_got, g_ref = gradient_norm(got), gradient_norm(ref)
    assert_le(g_got, 2 * rounding, "||grad(got)||: got is optimal")
    assert_le(g_ref, L * stall_radius(tol(DT, n=size) * abs(f_ref), mu) + rounding, "L-BFGS converged")
    assert_le(f_got - f_ref, tol(DT, n=size) * (abs(f_got) + abs(f_ref)), "objective(got) <= objective(ref)")
    assert_le(float(torch.linalg.vector_norm(got - ref)), (g_got + g_ref + 2 * rounding) / mu, "||got - ref||")


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """classes x n one-hot matrix."""
    return torch.nn.functional.one_hot(labels, classes).T.to(DT)


def loss_terms(loss, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """The per-element terms s ell(x; y) of an elementwise loss, for x and y of the same shape, n samples."""
    total = dataclasses.replace(loss, reduction="sum")
    terms = vmap(lambda xx, yy: total(xx.reshape(1, 1), yy.reshape(1, 1)))(x.reshape(-1), y.reshape(-1))
    return terms.reshape(x.shape) * _reduction_scale(loss, n)


def reg_terms(reg, x: torch.Tensor) -> torch.Tensor:
    """The per-element terms of a separable regularizer, for every element of x."""
    return vmap(lambda xx: reg(xx.reshape(1, 1)))(x.reshape(-1)).reshape(x.shape)


# ------------------------------------------------------------------ activations


def test_every_activation_has_reference():
    missing = {type(p.values[0]).__name__ for p in ACTS} - REFERENCE_ACT.keys()
    assert not missing, f"add a reference sigma to REFERENCE_ACT for {missing}"


@pytest.mark.parametrize("act", ACTS)
def test_activation_forward_matches_reference(act):
    u = torch.cat([torch.linspace(-3, 3, 61, dtype=DT), torch.tensor([0.0, -0.0, 1e-300, -1e-300], dtype=DT)])
    u = torch.cat([u, torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=DT) * 10])
    ref = torch.tensor([REFERENCE_ACT[type(act).__name__](act, float(x)) for x in u], dtype=DT)
    scale = torch.tensor([sum(abs(a * float(x) ** k) for k, a in enumerate(getattr(act, "coefficients", (0.0,))))
                          for x in u], dtype=DT)  # fmt: skip
    # a handful of operations and elementary functions (each within about an ulp: glibc, SLEEF, the portable
    # kernels) on both sides, relative to the result, or to the terms of a polynomial (Horner's rule rounds
    # those); results below the smallest normal number keep only their absolute accuracy
    ops = 2 * len(getattr(act, "coefficients", ())) + 8
    assert_within(act(u), ref, tol(DT, n=ops) * (ref.abs() + scale) + torch.finfo(DT).tiny, "sigma(u)")
    # elementwise on matrices too: the same kernel on the same contiguous memory, bit for bit
    assert torch.equal(act(u.reshape(5, -1)), act(u).reshape(5, -1))
    assert act(u.float()).dtype == torch.float32


def test_relu_and_linear_match_torch():
    u = torch.randn(7, 9, generator=torch.Generator().manual_seed(1), dtype=DT)
    acts = {type(p.values[0]).__name__: p.values[0] for p in ACTS}
    assert torch.equal(acts["ReLU"](u), torch.relu(u))
    assert torch.equal(acts["Linear"](u), u)


@pytest.mark.parametrize("act", ACTS)
def test_activation_derivatives_match_autograd(act):
    u = torch.randn(300, generator=torch.Generator().manual_seed(10), dtype=DT) * 4
    u = u[u.abs() > 1e-3].requires_grad_(True)  # away from the kink of the piecewise-linear entries
    (first,) = torch.autograd.grad(act(u).sum(), u, create_graph=True)
    # two formulas of a handful of operations each (the entry's and autograd's chain rule), rounded on the
    # sizes of their terms: at most 1 for sigma' and sigma' sigma''-type products of the bounded activations,
    # times the sharpness for softplus' sigma'', and sum_k k |a_k| |u|^(k-1) (and its next derivative) for a
    # polynomial
    x = u.detach()
    coefficients = getattr(act, "coefficients", None)
    sizes = [torch.full_like(x, max(1.0, getattr(act, "sharpness", 1.0)) ** order) for order in (0, 1)]
    if coefficients is not None:
        sizes = [sum(math.perm(k, order + 1) * abs(a) * x.abs() ** (k - order - 1)
                     for k, a in enumerate(coefficients) if k > order) + 0 * x for order in (0, 1)]  # fmt: skip
    ops = 2 * len(coefficients or ()) + 8
    got = act.derivative(x)
    assert_within(got, first.detach(), tol(DT, n=ops) * (first.detach().abs() + sizes[0]), "sigma'")
    if hasattr(act, "second_derivative"):
        (second,) = torch.autograd.grad(first.sum(), u)
        assert_within(act.second_derivative(x), second, tol(DT, n=ops) * (second.abs() + sizes[1]), "sigma''")


def _triples(seed: int, rows: int = 20, cols: int = 10):
    """rows values of c log-uniform in [0.05, 20] (one per prox call), rows x cols (v, b) uniform in [-5, 5]."""
    gen = torch.Generator().manual_seed(seed)
    cs = torch.exp(torch.empty(rows, dtype=DT).uniform_(math.log(0.05), math.log(20.0), generator=gen))
    v = torch.empty(rows, cols, dtype=DT).uniform_(-5, 5, generator=gen)
    b = torch.empty(rows, cols, dtype=DT).uniform_(-5, 5, generator=gen)
    return cs, v, b, gen


@pytest.mark.parametrize("act", ACTS)
def test_activation_prox_is_global_minimiser(act):
    """200 random triples, c log-uniform in [0.05, 20], v, b uniform in [-5, 5]; one c per call, 10 (v, b) each."""
    cs, v, b, _ = _triples(2)
    u = torch.stack([act.prox(v[k], b[k], float(cs[k])) for k in range(20)])
    assert u.shape == v.shape and u.dtype == DT

    c_full = cs[:, None].expand_as(v)
    f_prox = act_objective(act, u, v, b, c_full)
    f_grid, u_grid = grid_min(act, v.flatten(), b.flatten(), c_full.flatten())
    # the solver stops within its own rounding of the minimum value (once more for the test's evaluation of
    # it), and the grid's value is an upper bound of the minimum up to its rounding
    rounding = 2 * phi_rounding(act, u, v, b, c_full).flatten()
    rounding += phi_rounding(act, u_grid, v.flatten(), b.flatten(), c_full.flatten())
    assert_le(f_prox.flatten() - f_grid, rounding, "phi(prox) <= the grid's minimum")
    # a few explicit competitors (implied by the grid, but independent of its range)
    for other in (b, v, torch.zeros_like(v), (v + c_full * b) / (1 + c_full)):
        rounding = 2 * phi_rounding(act, u, v, b, c_full) + phi_rounding(act, other, v, b, c_full)
        assert_le(f_prox - act_objective(act, other, v, b, c_full), rounding, "phi(prox) <= phi(other)")


@pytest.mark.parametrize("act", ACTS)
def test_activation_prox_never_worse_than_start_or_b(act):
    cs, v, b, gen = _triples(11, rows=8)
    for k in range(8):
        c = float(cs[k])
        exact = act.prox(v[k], b[k], c)
        starts = [
            torch.empty_like(v[k]).uniform_(-8, 8, generator=gen),
            exact + 1e-9 * torch.randn(v[k].shape, generator=gen, dtype=DT),  # a start next to the optimum
            exact,
        ]
        for start in starts:
            v_in, b_in, start_in = v[k].clone(), b[k].clone(), start.clone()
            u = act.prox(v_in, b_in, c, start=start_in)
            assert torch.equal(v_in, v[k]) and torch.equal(b_in, b[k]) and torch.equal(start_in, start)  # untouched
            f = act_objective(act, u, v[k], b[k], c)
            # the solver compares its own computed values: each comparison within the rounding of the two
            for other in (start, b[k]):
                rounding = phi_rounding(act, u, v[k], b[k], c) + phi_rounding(act, other, v[k], b[k], c)
                assert_le(f - act_objective(act, other, v[k], b[k], c), 2 * rounding, "never worse")


@pytest.mark.parametrize("act", ACTS)
def test_activation_prox_handles_matrices_elementwise(act):
    cs, v, b, gen = _triples(12, rows=1, cols=24)
    c = float(cs[0])
    V, B = v.reshape(4, 6), b.reshape(4, 6)
    start = torch.randn(4, 6, generator=gen, dtype=DT)
    U = act.prox(V, B, c, start=start)
    assert U.shape == (4, 6) and U.dtype == DT
    single = torch.stack([act.prox(v[0, j : j + 1], b[0, j : j + 1], c, start=start.flatten()[j : j + 1])[0]
                          for j in range(24)]).reshape(4, 6)  # fmt: skip
    f_matrix, f_single = act_objective(act, U, V, B, c), act_objective(act, single, V, B, c)
    # the same minimum value: each call stops within its rounding of it (a smooth activation's Newton solver
    # stops once no element of the call moves, so the two may take different numbers of steps)
    rounding = 2 * (phi_rounding(act, U, V, B, c) + phi_rounding(act, single, V, B, c))
    assert_within(f_matrix, f_single, rounding, "the prox of a matrix")


IN_PLACE = [p for p in ACTS if hasattr(p.values[0], "prox_")]


def test_relu_and_linear_have_in_place_prox():
    assert {type(p.values[0]).__name__ for p in IN_PLACE} >= {"ReLU", "Linear"}


@pytest.mark.parametrize("act", IN_PLACE)
@pytest.mark.parametrize("dtype", [DT, torch.float32], ids=["float64", "float32"])
def test_activation_in_place_prox_writes_the_prox_into_b(act, dtype):
    cs, v, b, _ = _triples(14, rows=6)
    for k in range(6):
        v_in, b_in = v[k].to(dtype, copy=True), b[k].to(dtype, copy=True)
        u = act.prox_(v_in, b_in, float(cs[k]))
        assert u.data_ptr() == b_in.data_ptr() and torch.equal(v_in, v[k].to(dtype))
        # prox is prox_ on a copy of b: the same kernels on the same values, bit for bit
        assert torch.equal(u, act.prox(v[k].to(dtype), b[k].to(dtype), float(cs[k])))


@pytest.mark.parametrize("act", ACTS)
def test_activation_prox_float32(act):
    """float32 in, float32 out, and within float32 accuracy of the float64 minimum (in value)."""
    cs, v, b, gen = _triples(13, rows=8)
    for k in range(8):
        c = float(cs[k])
        start = torch.randn(v[k].shape, generator=gen, dtype=DT)
        u32 = act.prox(v[k].float(), b[k].float(), c, start=start.float())
        assert u32.dtype == torch.float32
        vk, bk = v[k].float().double(), b[k].float().double()
        u64 = act.prox(vk, bk, c)
        f32, f64 = act_objective(act, u32.double(), vk, bk, c), act_objective(act, u64, vk, bk, c)
        # the float32 solver stops within its (float32) rounding of the minimum value, c rounded to float32
        # included; the float64 one within its own, and the test evaluates both in float64
        rounding = 2 * (phi_rounding(act, u32.double(), vk, bk, c, torch.float32) + phi_rounding(act, u64, vk, bk, c))
        assert_le(f32 - f64, rounding, "float32 prox")


# Lemma 13 boundary cases for ReLU: (v, b, c, the minimisers (by hand), the minimum value (by hand))
RELU_CASES = [
    pytest.param(2.0, 0.0, 1.0, (1.0,), 1.0, id="b=0,v>0"),
    pytest.param(-2.0, 0.0, 1.0, (0.0,), 2.0, id="b=0,v<0"),
    pytest.param(0.0, 0.0, 1.0, (0.0,), 0.0, id="b=0,v=0"),
    pytest.param(1.0, -1.0, 1.0, (-1.0,), 0.5, id="p=0,b<0"),
    pytest.param(-1.0, 1.0, 1.0, (0.0,), 1.0, id="p=0,b>0"),
    pytest.param(0.0, 2.0, 1.0, (1.0,), 1.0, id="v=0,b>0"),
    pytest.param(0.0, -2.0, 1.0, (-2.0,), 0.0, id="v=0,b<0"),
    # tie: b < 0 and c (v - b)^2 == (1 + c) v^2 with c = 1/3: p = 1/2 and u = b are both optimal
    pytest.param(1.0, -1.0, 1 / 3, (0.5, -1.0), 0.5, id="tie-c=1/3"),
    pytest.param(2.0, -2.0, 1 / 3, (1.0, -2.0), 2.0, id="tie-c=1/3-scaled"),
    pytest.param(3.0, 0.7, 1e8, ((3.0 + 0.7e8) / (1 + 1e8),), 0.5 * 1e8 / (1 + 1e8) * 2.3**2, id="large-c,b>0"),
    pytest.param(3.0, -0.7, 1e8, (-0.7,), 4.5, id="large-c,b<0"),
    pytest.param(3.0, -0.7, 1e-8, ((3.0 - 0.7e-8) / (1 + 1e-8),), 0.5 * 1e-8 / (1 + 1e-8) * 3.7**2, id="tiny-c,v>0"),
    pytest.param(-3.0, 0.7, 1e-8, (0.0,), 4.5 + 0.5e-8 * 0.49, id="tiny-c,v<0,b>0"),
    pytest.param(-3.0, -0.7, 1e-8, (-0.7,), 4.5, id="tiny-c,v<0,b<0"),
]


def _check_case(act, yaml_name: str, v, b, c, minimisers, minimum):
    vt, bt = torch.tensor([v], dtype=DT), torch.tensor([b], dtype=DT)
    u = act.prox(vt, bt, c)
    value = float(act_objective(act, u, vt, bt, c))
    # the closed form rounds a few operations on its terms, and so do the value and the hand-worked numbers
    # (in Python floats); a rounded minimiser moves the value only to second order (or not at all: at the kink
    # the minimiser 0 or b is exact)
    value_rounding = float(phi_rounding(act, u, vt, bt, c)) + tol(DT, n=4) * abs(minimum)
    assert_le(abs(value - minimum), value_rounding, "minimum value")
    u_rounding = float(closed_form_rounding(act, vt, bt, c))
    assert any(abs(float(u) - m) <= u_rounding + tol(DT, n=4) * abs(m) for m in minimisers), (float(u), minimisers)
    assert torch.equal(act.prox(vt, bt, c, start=torch.tensor([5.0], dtype=DT)), u)  # start is not needed
    if yaml_name:  # the YAML-built entry agrees
        act_yaml = instantiate(OmegaConf.load(CONF / "act" / f"{yaml_name}.yaml"))
        assert torch.equal(act_yaml.prox(vt, bt, c), u)


@pytest.mark.parametrize("v, b, c, minimisers, minimum", RELU_CASES)
def test_relu_prox_lemma13_boundaries(v, b, c, minimisers, minimum):
    _check_case(ReLU(), "relu", v, b, c, minimisers, minimum)


@pytest.mark.parametrize("v, b, c, minimisers, minimum", RELU_CASES)
def test_leaky_relu_with_slope_zero_is_relu(v, b, c, minimisers, minimum):
    _check_case(LeakyReLU(slope=0.0), "", v, b, c, minimisers, minimum)


# Leaky ReLU, slope a: right piece p = max((v + c b)/(1 + c), 0), left piece q = min((a v + c b)/(a^2 + c), 0).
# (slope, v, b, c, the minimisers (by hand), the minimum value (by hand))
LEAKY_CASES = [
    pytest.param(0.5, 2.0, 0.0, 1.0, (1.0,), 1.0, id="b=0,v>0"),  # p = 1: 1/2 + 1/2; q = 0.8 -> 0 gives 2
    pytest.param(0.5, -2.0, 0.0, 1.0, (-0.8,), 1.6, id="b=0,v<0"),  # q = -0.8: (1.6)^2/2 + 0.32; p -> 0 gives 2
    pytest.param(0.5, 0.0, 0.0, 1.0, (0.0,), 0.0, id="b=0,v=0"),
    pytest.param(0.5, 1.0, -1.0, 1.0, (-0.4,), 0.9, id="p=0"),  # p = 0 gives 1; q = -0.4: 0.72 + 0.18
    pytest.param(0.5, 2.0, -1.0, 1.0, (0.5,), 2.25, id="q=0"),  # q = 0 gives 2.5; p = 0.5: 1.125 + 1.125
    # tie: (a^2 + c)(v - b)^2 == (1 + c)(v - a b)^2 with a = 1/2, c = 0.35 (ratio 1.5^2), v = 1, b = -2:
    # p = 2/9 and q = -1/3, both with value 7/6
    pytest.param(0.5, 1.0, -2.0, 0.35, (2 / 9, -1 / 3), 7 / 6, id="tie"),
    pytest.param(0.5, 3.0, -0.7, 1e8, ((1.5 - 0.7e8) / (0.25 + 1e8),), 0.5e8 / (0.25 + 1e8) * 3.35**2, id="large-c"),
    pytest.param(
        0.3, -3.0, 0.7, 1e-8, ((-0.9 + 0.7e-8) / (0.09 + 1e-8),), 0.5e-8 / (0.09 + 1e-8) * 3.21**2, id="tiny-c,v<0"
    ),  # fmt: skip
]


@pytest.mark.parametrize("slope, v, b, c, minimisers, minimum", LEAKY_CASES)
def test_leaky_relu_prox_boundaries(slope, v, b, c, minimisers, minimum):
    _check_case(LeakyReLU(slope=slope), "", v, b, c, minimisers, minimum)


def test_relu_prox_handles_matrices_elementwise():
    gen = torch.Generator().manual_seed(3)
    v, b = torch.randn(4, 6, generator=gen, dtype=DT) * 3, torch.randn(4, 6, generator=gen, dtype=DT) * 3
    u = ReLU().prox(v, b, 0.8)
    single = torch.stack([ReLU().prox(v[i, j : j + 1], b[i, j : j + 1], 0.8)[0] for i in range(4) for j in range(6)])
    # one element at a time runs the kernels' scalar tails, a matrix their vector bodies (with or without fused
    # multiply-adds): the same formula, rounded alike only up to a few operations (generic data: no ties)
    assert_within(u, single.reshape(4, 6), closed_form_rounding(ReLU(), v, b, 0.8), "elementwise")


# ------------------------------------------------------------------ losses


def test_every_loss_has_reference():
    missing = {type(p.values[0]).__name__ for p in LOSSES} - REFERENCE_LOSS.keys()
    assert not missing, f"add a reference formula to REFERENCE_LOSS for {missing}"


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_value_matches_formula(loss):
    gen = torch.Generator().manual_seed(4)
    Y = one_hot(torch.randint(0, 4, (7,), generator=gen), 4)
    V = torch.randn(4, 7, generator=gen, dtype=DT)
    got = loss(V, Y)
    assert got.shape == () and got.dtype == DT
    # a sum of 28 terms (and a log-sum-exp over 4 classes), in another order and with other kernels
    expected = REFERENCE_LOSS[type(loss).__name__][0](loss, V, Y)
    assert_le(abs(float(got) - expected), tol(DT, n=V.numel() + V.shape[0]) * loss_size(loss, V, Y), "R(V; Y)")
    assert loss(V.float(), Y.float()).dtype == torch.float32


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_solver_contract(loss):
    """'exact' needs prox; 'prox_linear' needs a finite positive Lipschitz constant of grad R (Theorem 2)."""
    assert loss.solver in ("exact", "prox_linear")
    if loss.solver == "exact":
        assert callable(getattr(loss, "prox", None))
    else:
        L = loss.lipschitz(10)
        assert isinstance(L, float) and 0 < L < INF


@pytest.mark.parametrize("loss", LOSSES)
def test_loss_grad_matches_autograd(loss):
    gen = torch.Generator().manual_seed(14)
    Y = one_hot(torch.randint(0, 4, (9,), generator=gen), 4)
    T = 2 * Y - 1
    # t v - 1 at least 0.2 away from 0: away from the hinge's kink
    gap = (0.2 + torch.rand(4, 9, generator=gen, dtype=DT) * 2) * torch.where(
        torch.rand(4, 9, generator=gen) < 0.5, -1, 1
    )
    V = (T * (1 + gap)).requires_grad_(True)
    (expected,) = torch.autograd.grad(loss(V, Y), V)
    got = loss.grad(V.detach(), Y)
    assert got.shape == V.shape and got.dtype == DT
    # a few operations per element, relative to the result, plus s x the softmax's rounding (its entries are
    # at most 1, a sum over the 4 classes) where softmax - Y cancels
    s = _reduction_scale(loss, V.shape[1])
    assert_within(got, expected, tol(DT, n=V.shape[0] + 4) * (expected.abs() + s), "grad R")


def _grad_ratios(loss, Y, pairs):
    return [float((loss.grad(A, Y) - loss.grad(B, Y)).norm() / (A - B).norm()) for A, B in pairs]


def _ratio_rounding(loss, Y, pairs):
    """How much rounding can add to each ratio: each gradient is within tol x (|grad| + s) (see
    ``test_loss_grad_matches_autograd``), divided by ||A - B|| (large for the near pairs)."""
    s = _reduction_scale(loss, Y.shape[1])
    t = tol(DT, n=Y.shape[0] + 4)
    return [
        t * float((loss.grad(A, Y).abs() + s).norm() + (loss.grad(B, Y).abs() + s).norm()) / float((A - B).norm())
        for A, B in pairs
    ]


@pytest.mark.parametrize("loss", [p for p in LOSSES if p.values[0].lipschitz(8) is not None])
def test_loss_lipschitz_bound_holds_and_is_nearly_attained(loss):
    gen = torch.Generator().manual_seed(15)
    n, classes = 8, 4
    Y = one_hot(torch.randint(0, classes, (n,), generator=gen), classes)
    L = loss.lipschitz(n)
    random_pairs = [(torch.randn(classes, n, generator=gen, dtype=DT) * scale,
                     torch.randn(classes, n, generator=gen, dtype=DT) * scale) for scale in (0.1, 1.0, 5.0, 30.0)
                    for _ in range(25)]  # fmt: skip
    roundings = _ratio_rounding(loss, Y, random_pairs)
    for ratio, rounding in zip(_grad_ratios(loss, Y, random_pairs), roundings, strict=True):
        assert_le(ratio - L, rounding, "random pairs")
    # candidates for the worst case: small steps at 0, at random points, and at columns with two tied
    # leading entries (the worst case of softmax: Hessian eigenvalue 1/2 along e_1 - e_2)
    tied = torch.full((classes, n), -40.0, dtype=DT)
    tied[:2] = 0.0
    two = torch.zeros(classes, n, dtype=DT)
    two[0], two[1] = 1.0, -1.0
    bases = [torch.zeros(classes, n, dtype=DT), torch.randn(classes, n, generator=gen, dtype=DT), tied]
    directions = [torch.randn(classes, n, generator=gen, dtype=DT), two]
    near_pairs = [(A, A + 1e-5 * D) for A in bases for D in directions]
    ratios = _grad_ratios(loss, Y, near_pairs)
    for ratio, rounding in zip(ratios, _ratio_rounding(loss, Y, near_pairs), strict=True):
        assert_le(ratio - L, rounding, "near pairs")
    assert max(ratios) >= 0.5 * L, f"lipschitz({n}) = {L} is loose: best ratio found {max(ratios)}"


def _prox_problem(seed: int, extreme: bool):
    gen = torch.Generator().manual_seed(seed)
    Y = one_hot(torch.randint(0, 3, (6,), generator=gen), 3)
    center = torch.randn(3, 6, generator=gen, dtype=DT) * 2
    if extreme:  # |center| up to 50, both signs against both targets
        center = torch.tensor([-50.0, -30.0, -10.0, 10.0, 30.0, 50.0], dtype=DT).repeat(3, 1)
        Y = one_hot(torch.tensor([0, 1, 2, 0, 1, 2]), 3)
        Y[:, ::2] = 1 - Y[:, ::2]  # not one-hot any more: every (target, sign of center) pair occurs
    return Y, center, gen


@pytest.mark.parametrize("extreme", [False, True], ids=["center~N(0,4)", "center=+-50"])
@pytest.mark.parametrize("weight", [0.05, 1.0, 7.0], ids=lambda w: f"weight={w}")
@pytest.mark.parametrize("loss", EXACT_LOSSES)
def test_loss_prox_matches_grid(loss, weight, extreme):
    """The exact prox is elementwise: compare with a dense 1-D grid per element between center and the shifted point."""
    Y, center, _ = _prox_problem(5, extreme)
    got = loss.prox(Y, center, weight)
    assert got.shape == Y.shape and got.dtype == DT and torch.isfinite(got).all()
    n = Y.shape[1]

    def objective(x):
        return loss_terms(loss, x, Y[..., None].expand_as(x), n) + 0.5 * weight * (x - center[..., None]) ** 2

    # the minimiser lies between c and c - g/weight for any subgradient g at c (monotone subdifferential)
    shifted = center - loss.grad(center, Y) / weight
    lo, hi = torch.minimum(center, shifted) - 1e-3, torch.maximum(center, shifted) + 1e-3
    lo, hi = lo.clamp(min=center - 60), hi.clamp(max=center + 60)  # the exponential's shift can be huge
    f_grid, x_grid = elementwise_grid_min(objective, lo, hi)
    f_got = objective(got[..., None])[..., 0]
    # an exact prox (closed form, or a root to machine precision: a rounded minimiser moves the value only to
    # second order): the rounding of the two values, each a few operations relative to its terms (the value,
    # and 1 + |x| where the hinge forms 1 - t x)
    s = _reduction_scale(loss, n)
    rounding = tol(DT, n=4) * (f_got.abs() + f_grid.abs() + s * (2 + got.abs() + x_grid.abs()))
    assert_le(f_got - f_grid, rounding, "the prox's value <= the grid's minimum")


@pytest.mark.parametrize("weight", [0.05, 1.0, 7.0], ids=lambda w: f"weight={w}")
@pytest.mark.parametrize("loss", SMOOTH_EXACT_LOSSES)
def test_loss_prox_matches_lbfgs(loss, weight):
    Y, center, gen = _prox_problem(5, extreme=False)

    def objective(V):
        return loss(V, Y) + 0.5 * weight * (V - center).square().sum()

    got = loss.prox(Y, center, weight)
    ref = lbfgs_argmin(objective, torch.randn(3, 6, generator=gen, dtype=DT))
    # strongly convex with mu = weight, curvature at most weight + max R''; the gradient's terms: grad R
    # (and s for the softmax-free losses' 1 - q), weight (|V| + |center|), and the rounding of got itself,
    # (R'' + weight) |V|
    h = loss_curvature(loss, got, Y)
    s = _reduction_scale(loss, Y.shape[1])
    terms = loss.grad(got, Y).abs() + s + weight * (got.abs() + center.abs()) + (h.abs() + weight) * got.abs()
    assert_matches_lbfgs(objective, got, ref, mu=weight, L=weight + float(h.abs().max()), grad_size=float(terms.norm()))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("weight", [0.05, 1.0, 7.0], ids=lambda w: f"weight={w}")
@pytest.mark.parametrize("loss", SMOOTH_EXACT_LOSSES)
def test_loss_prox_optimality_condition(loss, weight, dtype):
    """grad R(V) + weight (V - center) = 0, up to rounding of its two terms, also at centres up to +-50."""
    for extreme in (False, True):
        Y, center, _ = _prox_problem(16, extreme)
        got = loss.prox(Y.to(dtype), center.to(dtype), weight)
        assert got.dtype == dtype and torch.isfinite(got).all()
        V, c = got.double(), center.to(dtype).double()
        g, pull = loss.grad(V, Y), weight * (V - c)
        # V = t (tc + y) with the offset y a root of weight y - s q (q = sigmoid or exp) found in dtype: y is
        # off by its equation's rounding tol x (|pull| + |g|) over its slope >= weight, and V by tol |V| more;
        # the residual moves by (R'' + weight) per unit of V, and is evaluated with the rounding of its two terms
        h = loss_curvature(loss, V, Y)
        V_error = tol(dtype, n=4) * (V.abs() + (g.abs() + pull.abs()) / weight)
        bound = (h.abs() + weight) * V_error + tol(DT, n=4) * (g.abs() + pull.abs())
        assert_le((g + pull).abs(), bound, "grad R(V) + weight (V - center)")


# Lemma 14 for the hinge loss with s/weight = 1/2: z = t v, tc = t center;
# z = tc + 1/2 for tc <= 1/2, 1 for 1/2 < tc < 1, tc for tc >= 1. (y, center, the minimiser v by hand)
HINGE_CASES = [
    (1.0, 1.0, 1.0),  # tc exactly 1: stays
    (1.0, 0.5, 1.0),  # tc exactly 1 - s/weight: moves up to 1
    (1.0, 0.75, 1.0),  # in between: clipped to 1
    (1.0, 0.25, 0.75),  # below: shifted by s/weight
    (1.0, 2.0, 2.0),  # above: stays
    (1.0, -3.0, -2.5),
    (0.0, -1.0, -1.0),  # t = -1: tc = 1 exactly
    (0.0, -0.5, -1.0),  # tc = 1/2 exactly
    (0.0, -0.75, -1.0),
    (0.0, 0.0, -0.5),
    (0.0, 3.0, 2.5),
    (0.0, -2.0, -2.0),
]


@pytest.mark.parametrize("reduction, weight", [("sum", 2.0), ("mean", 0.5)])
def test_hinge_prox_lemma14_boundaries(reduction, weight):
    """12 hand-worked elements in a 1 x 12 matrix; s/weight = 1/2 for both (mean: s = 1/4 with 4 columns)."""
    from bcd_cli.catalogue.losses import Hinge

    y, c, v = (torch.tensor([row[k] for row in HINGE_CASES], dtype=DT) for k in range(3))
    columns = 12 if reduction == "sum" else 4
    Y, center, expected = (t.reshape(12 // columns, columns) for t in (y, c, v))
    # dyadic numbers (s/weight = 1/2): every operation of the prox is exact
    assert torch.equal(Hinge(reduction=reduction).prox(Y, center, weight), expected)
    hinge_yaml = instantiate(OmegaConf.load(CONF / "loss" / "hinge.yaml"))
    assert torch.equal(dataclasses.replace(hinge_yaml, reduction=reduction).prox(Y, center, weight), expected)


def test_loss_solver_fields():
    assert Exponential().solver == "exact" and Exponential().lipschitz(10) is None
    with pytest.raises(ValueError) as refused:  # no prox_linear for the exponential loss: Theorem 2 needs L
        Exponential(solver="prox_linear")
    assert refused.value.args[:2] == ("solver", "prox_linear") and "Lipschitz" in refused.value.args[2]
    with pytest.raises(ValueError) as refused:  # no exact prox for the softmax cross-entropy
        CrossEntropy(solver="exact")
    assert refused.value.args[:2] == ("solver", "exact")
    assert Logistic().solver == "prox_linear" and Logistic(solver="exact").solver == "exact"
    assert instantiate(OmegaConf.load(CONF / "loss" / "logistic.yaml")).solver == "prox_linear"
    with pytest.raises(ValueError) as info:
        Logistic(solver="newton")
    assert info.value.args[:2] == ("solver", "newton")


def test_loss_reduction_mean_is_sum_over_n():
    gen = torch.Generator().manual_seed(6)
    Y = one_hot(torch.randint(0, 3, (9,), generator=gen), 3)
    V = torch.randn(3, 9, generator=gen, dtype=DT)
    for p in LOSSES:
        loss = p.values[0]
        if loss.reduction == "mean":
            total = dataclasses.replace(loss, reduction="sum")
            # the same sums, scaled by 1/9 (a rounded constant, then a product) instead of divided by 9
            rel = tol(DT, n=3)
            assert float(loss(V, Y)) == pytest.approx(float(total(V, Y)) / 9, rel=rel, abs=0)
            torch.testing.assert_close(loss.grad(V, Y), total.grad(V, Y) / 9, rtol=rel, atol=0)
            if total.lipschitz(9) is not None:
                assert loss.lipschitz(9) == pytest.approx(total.lipschitz(9) / 9, rel=rel, abs=0)


# ------------------------------------------------------------------ regularizers


def test_every_regularizer_has_reference():
    missing = {type(p.values[0]).__name__ for p in REGS} - REFERENCE_REG.keys()
    assert not missing, f"add a reference (value, ridge) to REFERENCE_REG for {missing}"


def _feasible_interior(seed: int, shape=(5, 4)) -> torch.Tensor:
    """Points in (0.1, 0.3): inside every shipped regularizer's domain, away from 0 (the kink of |x|)."""
    return 0.1 + 0.2 * torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("reg", REGS)
def test_reg_value_and_ridge_match_formula(reg):
    value, ridge = REFERENCE_REG[type(reg).__name__]
    for X in (torch.randn(5, 4, generator=torch.Generator().manual_seed(7), dtype=DT) * 2, _feasible_interior(7)):
        got = reg(X)
        assert got.shape == () and got.dtype == DT
        # sums of 20 nonnegative terms (|x|, x^2), in another order: relative error ~ 20 eps (zero stays zero)
        rel = tol(DT, n=X.numel() + 2)
        assert float(got) == pytest.approx(value(reg, X), rel=rel, abs=0)
        feasible = reg.prox(X, 0.0)
        assert float(reg(feasible)) == pytest.approx(value(reg, feasible), rel=rel, abs=0)
        assert float(reg(feasible)) < INF
    assert reg.ridge == ridge(reg)  # the same parameter, passed through
    assert isinstance(reg.quadratic, bool)


@pytest.mark.parametrize("reg", REGS)
def test_reg_quadratic_means_ridge_only(reg):
    """quadratic == True promises r(X) = ridge/2 ||X||^2, which the engine's linear systems fold in exactly."""
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(17), dtype=DT) * 3
    value, quadratic = float(reg(X)), 0.5 * reg.ridge * float(X.square().sum())
    rounding = tol(DT, n=X.numel() + 2) * (abs(value) + abs(quadratic))  # two sums of 20 nonnegative terms
    if reg.quadratic:
        assert_le(abs(value - quadratic), rounding, "r(X) = ridge/2 ||X||^2")
    else:
        assert math.isinf(value) or abs(value - quadratic) > rounding  # differs by more than rounding


@pytest.mark.parametrize("reg", REGS)
def test_reg_ridge_is_curvature_of_quadratic_part(reg):
    """Second difference along D at a feasible point off every kink: equals ridge ||D||^2 (h is linear there)."""
    gen = torch.Generator().manual_seed(8)
    X, D = _feasible_interior(8), torch.randn(5, 4, generator=gen, dtype=DT)
    s = 1e-3
    values = [float(reg(X + s * D)), float(reg(X)), float(reg(X - s * D))]
    second = (values[0] - 2 * values[1] + values[2]) / s**2
    expected = reg.ridge * float(D.square().sum())
    # exact for a quadratic (the points stay off every kink): the rounding of the three values (sums of 20
    # nonnegative terms, their points X +- s D themselves rounded: relative tol each), divided by s^2
    rounding = 4 * tol(DT, n=X.numel() + 2) * max(abs(x) for x in values) / s**2
    assert_le(abs(second - expected), rounding, "second difference")


@pytest.mark.parametrize("t", [0.1, 1.0, 5.0], ids=lambda t: f"t={t}")
@pytest.mark.parametrize("reg", REGS)
def test_reg_prox_matches_grid(reg, t):
    Z = torch.randn(4, 5, generator=torch.Generator().manual_seed(9), dtype=DT) * 2
    got = reg.prox(Z, t)
    assert got.shape == Z.shape and got.dtype == DT

    def objective(x):
        return reg_terms(reg, x) + (x - Z[..., None]) ** 2 / (2 * t)

    # every minimiser lies within |z| of z (0 is no worse than anything farther, when 0 is feasible) ...
    radius = Z.abs() + 1e-3
    f_grid, _ = elementwise_grid_min(objective, Z - radius, Z + radius)
    # ... or, for a set away from 0, at its nearest point: also scan a wide fixed interval
    f_wide, _ = elementwise_grid_min(objective, torch.full_like(Z, -20.0), torch.full_like(Z, 20.0))
    f_ref = torch.minimum(f_grid, f_wide)
    f_got = objective(got[..., None])[..., 0]
    # closed forms (a rounded minimiser moves the value only to second order, and the kinks 0 and the bounds
    # are exact): the rounding of the two values, a few operations on nonnegative terms
    assert_le(f_got - f_ref, tol(DT, n=4) * (f_got.abs() + f_ref.abs()), "the prox's value <= the grid's minimum")


@pytest.mark.parametrize("t", [0.1, 1.0, 5.0], ids=lambda t: f"t={t}")
@pytest.mark.parametrize("reg", [p for p in REGS if p.values[0].quadratic])
def test_reg_prox_matches_lbfgs(reg, t):
    gen = torch.Generator().manual_seed(9)
    Z = torch.randn(4, 5, generator=gen, dtype=DT) * 2

    def objective(X):
        return reg(X) + (X - Z).square().sum() / (2 * t)

    got = reg.prox(Z, t)
    ref = lbfgs_argmin(objective, torch.randn(4, 5, generator=gen, dtype=DT))
    # ridge/2 ||X||^2 + ||X - Z||^2 / (2 t): Hessian (ridge + 1/t) I; the gradient's terms ridge |X| and
    # (|X| + |Z|) / t, and the rounding of got itself, (ridge + 1/t) |X|
    mu = reg.ridge + 1 / t
    terms = reg.ridge * got.abs() + (got.abs() + Z.abs()) / t + mu * got.abs()
    assert_matches_lbfgs(objective, got, ref, mu=mu, L=mu, grad_size=float(terms.norm()))


@pytest.mark.parametrize("reg", REGS)
def test_reg_prox_at_zero_step_is_the_projection(reg):
    Z = torch.randn(4, 5, generator=torch.Generator().manual_seed(18), dtype=DT) * 3
    Z_in = Z.clone()
    P = reg.prox(Z_in, 0.0)
    assert torch.equal(Z_in, Z)  # untouched
    assert float(reg(P)) < INF
    if float(reg(Z)) < INF:
        assert torch.equal(P, Z)  # Z / 1, a threshold of 0, a clamp that does not apply: exact
    # the nearest feasible point, per element: no feasible grid point is closer
    grid = torch.linspace(-20, 20, 40_001, dtype=DT)
    feasible = torch.isfinite(reg_terms(reg, grid))
    distance = torch.where(feasible, (grid - Z[..., None]).abs(), INF).min(dim=-1).values
    # |P - Z| and the distances are each one rounded subtraction (eps/2 relative)
    assert_le((P - Z).abs() - distance, eps(DT) * ((P - Z).abs() + distance), "the nearest feasible point")
    assert torch.equal(reg.prox(P, 0.0), P)  # a clamp of a feasible point: exact


@pytest.mark.parametrize("reg", REGS)
@pytest.mark.parametrize("loss", EXACT_LOSSES)
def test_reg_prox_with_loss_matches_grid(loss, reg):
    """argmin_X f(X) + r(X) + weight/2 ||X - center||^2, f the loss, against a dense 1-D grid per element."""
    gen = torch.Generator().manual_seed(19)
    Y = one_hot(torch.randint(0, 3, (4,), generator=gen), 3)
    center = torch.randn(3, 4, generator=gen, dtype=DT) * 1.5
    n = Y.shape[1]
    for weight in (0.3, 2.0):
        got = reg.prox_with(lambda c, w: loss.prox(Y, c, w), center, weight)
        assert got.shape == Y.shape and got.dtype == DT

        def objective(x, weight=weight):
            f = loss_terms(loss, x, Y[..., None].expand_as(x), n)
            return f + reg_terms(reg, x) + 0.5 * weight * (x - center[..., None]) ** 2

        f_grid, x_grid = elementwise_grid_min(objective, torch.full_like(center, -12.0), torch.full_like(center, 12.0))
        f_got = objective(got[..., None])[..., 0]
        # exact proxes combined in closed form: the rounding of the two values (see test_loss_prox_matches_grid)
        s = _reduction_scale(loss, n)
        rounding = tol(DT, n=4) * (f_got.abs() + f_grid.abs() + s * (2 + got.abs() + x_grid.abs()))
        assert_le(f_got - f_grid, rounding, "the prox's value <= the grid's minimum")


def test_box_bounds():
    for lo, hi in ((1.0, 1.0), (2.0, 1.0), (0.0, -INF), (INF, INF)):
        with pytest.raises(ValueError) as info:
            Box(lo=lo, hi=hi)
        assert info.value.args[0] in ("lo", "hi")
    box = Box(lo=-INF, hi=0.5)
    Z = torch.tensor([-1e300, 0.0, 0.5, 3.0], dtype=DT)
    assert torch.equal(box.prox(Z, 1.0), torch.tensor([-1e300, 0.0, 0.5, 0.5], dtype=DT))  # a clamp: exact
    assert float(box(Z)) == INF and float(box(box.prox(Z, 0.0))) == 0.0


# ------------------------------------------------------------------ CUDA


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_catalogue_on_cuda_matches_cpu(dtype):
    gen = torch.Generator().manual_seed(20)
    v, b, start = (torch.randn(64, 300, generator=gen, dtype=dtype) * 3 for _ in range(3))
    eps = torch.finfo(dtype).eps
    for p in ACTS:
        act = p.values[0]
        u_cpu = act.prox(v, b, 0.7, start=start)
        u_gpu = act.prox(v.cuda(), b.cuda(), 0.7, start=start.cuda())
        assert u_gpu.is_cuda and u_gpu.dtype == dtype
        f_cpu = act_objective(act, u_cpu.double(), v.double(), b.double(), 0.7)
        f_gpu = act_objective(act, u_gpu.cpu().double(), v.double(), b.double(), 0.7)
        assert torch.all(f_gpu <= f_cpu + 1e3 * eps * (1 + f_cpu.abs())), p.id
        torch.testing.assert_close(act.derivative(v.cuda()).cpu(), act.derivative(v))
    Y = one_hot(torch.randint(0, 10, (300,), generator=gen), 10).to(dtype)
    V = torch.randn(10, 300, generator=gen, dtype=dtype) * 3
    for p in LOSSES:
        loss = p.values[0]
        torch.testing.assert_close(loss(V.cuda(), Y.cuda()).cpu(), loss(V, Y))
        torch.testing.assert_close(loss.grad(V.cuda(), Y.cuda()).cpu(), loss.grad(V, Y))
        if hasattr(loss, "prox"):
            torch.testing.assert_close(loss.prox(Y.cuda(), V.cuda(), 0.8).cpu(), loss.prox(Y, V, 0.8))
    square = instantiate(OmegaConf.load(CONF / "loss" / "square.yaml"))
    for p in REGS:
        reg = p.values[0]
        torch.testing.assert_close(reg(V.cuda()).cpu(), reg(V))
        torch.testing.assert_close(reg.prox(V.cuda(), 0.3).cpu(), reg.prox(V, 0.3))
        got = reg.prox_with(lambda c, w: square.prox(Y.cuda(), c, w), V.cuda(), 0.8)
        torch.testing.assert_close(got.cpu(), reg.prox_with(lambda c, w: square.prox(Y, c, w), V, 0.8))
