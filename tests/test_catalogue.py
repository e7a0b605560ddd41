"""Catalogue entries (activations, losses, regularizers) against independent brute force.

The entries are discovered from the YAML files under ``conf/act``, ``conf/loss`` and
``conf/reg`` and built with Hydra exactly as the CLI builds them, so a new YAML file is
tested here without new test code:

- every activation's ``prox(v, b, c)`` is compared with a dense grid search of
  ``1/2 (sigma(u) - v)^2 + c/2 (u - b)^2`` (nonconvex for ReLU, so no local solver);
- every loss's ``prox(Y, center, weight)`` and every regularizer's ``prox(Z, t)`` is
  compared with L-BFGS on the (strongly convex) proximal objective;
- forward values (``act(u)``, ``loss(V, Y)``, ``reg(X)``, ``reg.ridge``) are compared
  with the reference formulas in the ``REFERENCE_*`` tables below, keyed by class
  name. A new entry without a reference formula fails ``test_*_has_reference``:
  add one row to the table.

Parameter variants (``VARIANTS``) are applied to every entry that has the field, so e.g.
both loss reductions and a regularization weight large enough to matter are covered.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bcd_cli.catalogue.activations import ReLU

CONF = Path(__file__).resolve().parents[1] / "conf"
DT = torch.float64

# field -> values every entry with that field is also tested with (besides its YAML default)
VARIANTS: dict[str, tuple] = {"reduction": ("sum", "mean"), "lam": (0.7, 3.0)}

REFERENCE_ACT = {
    "ReLU": lambda u: u.clamp(min=0.0),
    "Linear": lambda u: u,
}


def _reduction_scale(entry, n: int) -> float:
    return 1.0 / n if entry.reduction == "mean" else 1.0


REFERENCE_LOSS = {
    # R(V; Y) = s/2 sum_ij (V_ij - Y_ij)^2, s = 1 (sum) or 1/n (mean over the n columns)
    "Square": lambda entry, V, Y: (
        0.5 * _reduction_scale(entry, V.shape[1]) * sum(float(x) ** 2 for x in (V - Y).flatten())
    ),
}

REFERENCE_REG = {
    # (value r(X), curvature of the quadratic part)
    "NoReg": (lambda entry, X: 0.0, lambda entry: 0.0),
    "L2": (lambda entry, X: 0.5 * entry.lam * sum(float(x) ** 2 for x in X.flatten()), lambda entry: entry.lam),
}


# ------------------------------------------------------------------ discovery


def _entries(group: str) -> list:
    """pytest params (entry, id) for every YAML file of ``conf/<group>`` and every applicable variant."""
    params = []
    for path in sorted((CONF / group).glob("*.yaml")):
        entry = instantiate(OmegaConf.load(path))
        params.append(pytest.param(entry, id=f"{group}/{path.stem}"))
        fields = {f.name for f in dataclasses.fields(entry)} if dataclasses.is_dataclass(entry) else set()
        for field in sorted(fields & VARIANTS.keys()):
            for value in VARIANTS[field]:
                if getattr(entry, field) != value:
                    variant = dataclasses.replace(entry, **{field: value})
                    params.append(pytest.param(variant, id=f"{group}/{path.stem}-{field}={value}"))
    assert params, f"no YAML files under {CONF / group}"
    return params


ACTS, LOSSES, REGS = _entries("act"), _entries("loss"), _entries("reg")
REGS_WITH_LAM = [p for p in REGS if "lam" in {f.name for f in dataclasses.fields(p.values[0])}]


def test_discovery_finds_the_shipped_entries():
    names = {type(p.values[0]).__name__ for p in ACTS + LOSSES + REGS}
    assert {"ReLU", "Linear", "Square", "NoReg", "L2"} <= names


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


def grid_min(act, v: torch.Tensor, b: torch.Tensor, c: torch.Tensor, lo=-15.0, hi=15.0, points=200_001):
    """Per triple, min over a dense grid on [lo, hi], refined by a second grid around the coarse argmin.

    Returns (minimum value, argmin). The value is an upper bound of the true minimum.
    """
    grid = torch.linspace(lo, hi, points, dtype=DT)
    h = (hi - lo) / (points - 1)
    values, argmins = [], []
    for s in range(0, v.numel(), 8):  # 8 triples at a time: 8 x 200k doubles
        vv, bb, cc = (t[s : s + 8, None] for t in (v, b, c))
        coarse = act_objective(act, grid[None, :], vv, bb, cc)
        centre = grid[coarse.argmin(dim=1)]
        fine = centre[:, None] + torch.linspace(-2 * h, 2 * h, 4001, dtype=DT)[None, :]
        fine_values = act_objective(act, fine, vv, bb, cc)
        best = fine_values.argmin(dim=1)
        values.append(torch.minimum(fine_values.gather(1, best[:, None])[:, 0], coarse.min(dim=1).values))
        argmins.append(fine.gather(1, best[:, None])[:, 0])
    return torch.cat(values), torch.cat(argmins)


def one_hot(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """classes x n one-hot matrix."""
    return torch.nn.functional.one_hot(labels, classes).T.to(DT)


# ------------------------------------------------------------------ activations


def test_every_activation_has_reference():
    missing = {type(p.values[0]).__name__ for p in ACTS} - REFERENCE_ACT.keys()
    assert not missing, f"add a reference sigma to REFERENCE_ACT for {missing}"


@pytest.mark.parametrize("act", ACTS)
def test_activation_forward_matches_reference(act):
    u = torch.cat([torch.linspace(-3, 3, 61, dtype=DT), torch.tensor([0.0, -0.0, 1e-300, -1e-300], dtype=DT)])
    u = torch.cat([u, torch.randn(200, generator=torch.Generator().manual_seed(0), dtype=DT) * 10])
    ref = REFERENCE_ACT[type(act).__name__]
    assert torch.equal(act(u), ref(u))
    assert torch.equal(act(u.reshape(5, -1)), ref(u).reshape(5, -1))  # elementwise on matrices too


def test_relu_and_linear_match_torch():
    u = torch.randn(7, 9, generator=torch.Generator().manual_seed(1), dtype=DT)
    acts = {type(p.values[0]).__name__: p.values[0] for p in ACTS}
    assert torch.equal(acts["ReLU"](u), torch.relu(u))
    assert torch.equal(acts["Linear"](u), u)


@pytest.mark.parametrize("act", ACTS)
def test_activation_prox_is_global_minimiser(act):
    """200 random triples, c log-uniform in [0.05, 20], v, b uniform in [-5, 5]; one c per call, 10 (v, b) each."""
    gen = torch.Generator().manual_seed(2)
    cs = torch.exp(torch.empty(20, dtype=DT).uniform_(math.log(0.05), math.log(20.0), generator=gen))
    v = torch.empty(20, 10, dtype=DT).uniform_(-5, 5, generator=gen)
    b = torch.empty(20, 10, dtype=DT).uniform_(-5, 5, generator=gen)
    u = torch.stack([act.prox(v[k], b[k], float(cs[k])) for k in range(20)])
    assert u.shape == v.shape and u.dtype == DT

    c_full = cs[:, None].expand_as(v)
    f_prox = act_objective(act, u, v, b, c_full)
    f_grid, _ = grid_min(act, v.flatten(), b.flatten(), c_full.flatten())
    tol = 1e-10 * (1 + f_grid.abs())
    assert torch.all(f_prox.flatten() <= f_grid + tol), (f_prox.flatten() - f_grid).max()
    # a few explicit competitors (implied by the grid, but independent of its range)
    for other in (b, v, torch.zeros_like(v), (v + c_full * b) / (1 + c_full)):
        assert torch.all(f_prox <= act_objective(act, other, v, b, c_full) + 1e-12 * (1 + f_prox.abs()))


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


@pytest.mark.parametrize("v, b, c, minimisers, minimum", RELU_CASES)
def test_relu_prox_lemma13_boundaries(v, b, c, minimisers, minimum):
    relu = ReLU()
    vt, bt = torch.tensor([v], dtype=DT), torch.tensor([b], dtype=DT)
    u = relu.prox(vt, bt, c)
    value = float(act_objective(relu, u, vt, bt, c))
    assert value == pytest.approx(minimum, rel=1e-12, abs=1e-15)
    assert any(float(u) == pytest.approx(m, rel=1e-12, abs=1e-15) for m in minimisers), (float(u), minimisers)
    # the YAML-built entry agrees
    relu_yaml = instantiate(OmegaConf.load(CONF / "act" / "relu.yaml"))
    assert torch.equal(relu_yaml.prox(vt, bt, c), u)


def test_relu_prox_handles_matrices_elementwise():
    gen = torch.Generator().manual_seed(3)
    v, b = torch.randn(4, 6, generator=gen, dtype=DT) * 3, torch.randn(4, 6, generator=gen, dtype=DT) * 3
    u = ReLU().prox(v, b, 0.8)
    for i in range(4):
        for j in range(6):
            assert float(u[i, j]) == float(ReLU().prox(v[i, j : j + 1], b[i, j : j + 1], 0.8)[0])


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
    assert float(got) == pytest.approx(REFERENCE_LOSS[type(loss).__name__](loss, V, Y), rel=1e-13)


@pytest.mark.parametrize("weight", [0.05, 1.0, 7.0], ids=lambda w: f"weight={w}")
@pytest.mark.parametrize("loss", LOSSES)
def test_loss_prox_matches_lbfgs(loss, weight):
    gen = torch.Generator().manual_seed(5)
    Y = one_hot(torch.randint(0, 3, (6,), generator=gen), 3)
    center = torch.randn(3, 6, generator=gen, dtype=DT) * 2

    def objective(V):
        return loss(V, Y) + 0.5 * weight * (V - center).square().sum()

    got = loss.prox(Y, center, weight)
    ref = lbfgs_argmin(objective, torch.randn(3, 6, generator=gen, dtype=DT))
    assert got.shape == Y.shape and got.dtype == DT
    assert float(objective(got)) <= float(objective(ref)) + 1e-12 * (1 + abs(float(objective(ref))))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


def test_loss_reduction_mean_is_sum_over_n():
    gen = torch.Generator().manual_seed(6)
    Y = one_hot(torch.randint(0, 3, (9,), generator=gen), 3)
    V = torch.randn(3, 9, generator=gen, dtype=DT)
    for p in LOSSES:
        loss = p.values[0]
        if hasattr(loss, "reduction") and loss.reduction == "mean":
            total = dataclasses.replace(loss, reduction="sum")
            assert float(loss(V, Y)) == pytest.approx(float(total(V, Y)) / 9, rel=1e-13)


@pytest.mark.parametrize("loss", [p for p in LOSSES if hasattr(p.values[0], "reduction")])
def test_loss_rejects_unknown_reduction(loss):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(loss, reduction="median")
    field, value, allowed = info.value.args
    assert (field, value) == ("reduction", "median") and isinstance(allowed, str)


# ------------------------------------------------------------------ regularizers


def test_every_regularizer_has_reference():
    missing = {type(p.values[0]).__name__ for p in REGS} - REFERENCE_REG.keys()
    assert not missing, f"add a reference (value, ridge) to REFERENCE_REG for {missing}"


@pytest.mark.parametrize("reg", REGS)
def test_reg_value_and_ridge_match_formula(reg):
    value, ridge = REFERENCE_REG[type(reg).__name__]
    X = torch.randn(5, 4, generator=torch.Generator().manual_seed(7), dtype=DT)
    assert float(reg(X)) == pytest.approx(value(reg, X), rel=1e-13, abs=1e-300)
    assert reg.ridge == pytest.approx(ridge(reg), rel=1e-15, abs=0)


@pytest.mark.parametrize("reg", REGS)
def test_reg_ridge_is_curvature_of_quadratic_part(reg):
    """Second difference along D: (r(X + sD) - 2 r(X) + r(X - sD)) / s^2 == ridge ||D||^2 for the quadratic part."""
    gen = torch.Generator().manual_seed(8)
    X, D = torch.randn(5, 4, generator=gen, dtype=DT), torch.randn(5, 4, generator=gen, dtype=DT)
    s = 1e-3
    second = (float(reg(X + s * D)) - 2 * float(reg(X)) + float(reg(X - s * D))) / s**2
    expected = reg.ridge * float(D.square().sum())
    assert second == pytest.approx(expected, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("t", [0.1, 1.0, 5.0], ids=lambda t: f"t={t}")
@pytest.mark.parametrize("reg", REGS)
def test_reg_prox_matches_lbfgs(reg, t):
    gen = torch.Generator().manual_seed(9)
    Z = torch.randn(4, 5, generator=gen, dtype=DT) * 2

    def objective(X):
        return reg(X) + (X - Z).square().sum() / (2 * t)

    got = reg.prox(Z, t)
    ref = lbfgs_argmin(objective, torch.randn(4, 5, generator=gen, dtype=DT))
    assert got.shape == Z.shape and got.dtype == DT
    assert float(objective(got)) <= float(objective(ref)) + 1e-12 * (1 + abs(float(objective(ref))))
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("bad", [-0.5, -1e-12, float("inf"), float("nan")], ids=["neg", "tiny-neg", "inf", "nan"])
@pytest.mark.parametrize("reg", REGS_WITH_LAM)
def test_reg_rejects_invalid_lam(reg, bad):
    with pytest.raises(ValueError) as info:
        dataclasses.replace(reg, lam=bad)
    field, value, allowed = info.value.args
    assert field == "lam" and isinstance(allowed, str)
    assert value == bad or (math.isnan(bad) and math.isnan(value))
