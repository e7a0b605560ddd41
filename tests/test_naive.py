"""The benchmark's naive three-splitting BCD (scripts/naive_bcd.py) against the engine and against brute force.

The naive implementation is the reference the benchmark times the engine against: it must run the same
iterates. In a sweep in float64, every block it computes from the engine's inputs is within the rounding
bound of that block (``naive_bcd.BlockCheck``, derived in scripts/naive_bcd.py), and a naive whose
weight is off by one part in a million fails exactly the blocks that weight enters; its evaluation of
the engine's state is the engine's within the rounding of a forward pass; its ReLU prox (the case table
of Lemma 13) is the minimiser found on a dense grid, within the grid's resolution.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch

from bcd_cli.app import compose
from tests.tolerances import assert_le, forward_pass_error, stall_radius, tol

from bench import Case, build_case

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "naive_bcd.py"
spec = importlib.util.spec_from_file_location("naive_bcd", SCRIPT)
assert spec is not None and spec.loader is not None
naive_bcd = importlib.util.module_from_spec(spec)
sys.modules.setdefault("naive_bcd", naive_bcd)
spec.loader.exec_module(naive_bcd)

pytestmark = pytest.mark.usefixtures("one_thread")


def _objective(u: torch.Tensor, v: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.relu(u) - v) ** 2 + 0.5 * c * (u - b) ** 2


GRID = torch.arange(-6, 6, 1e-4, dtype=torch.float64)


def _grid_excess(v: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """How far above the least value the best point of ``GRID`` can be, for minimisers in [-3, 3].

    A minimiser away from 0 (p > 0, or b < 0) is a stationary point of the quadratic piece on its side of 0, of
    curvature at most 1 + c, and the grid has a point on that side within its widest spacing h of it: at most
    (1 + c)/2 h^2 above. The minimiser 0 (b >= 0, p <= 0) is a kink, where the one-sided slopes are at most
    |v| + c |b|, and the grid's point nearest 0 is g0 (not exactly 0: arange rounds), adding (|v| + c |b|) |g0|."""
    h = float(GRID.diff().max())
    g0 = float(GRID.abs().min())
    return (1 + c) / 2 * (h + g0) ** 2 + (v.abs() + c * b.abs()) * g0


def _objective_rounding(v: torch.Tensor, b: torch.Tensor, c: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
    """What rounding can put between the computed ``values`` of ``_objective`` and the exact ones, and between
    the prox's choice and the better of its two candidates: each value is a sum of two squares of differences
    (five roundings, all terms positive: relative to the value itself); the case table compares
    c (v - b)^2 with (1 + c) v^2, whose rounding, over 2 (1 + c), is the most a wrong choice near the tie costs."""
    comparison = (c * (v.abs() + b.abs()) ** 2 + (1 + c) * v**2) / (2 * (1 + c))
    return tol(torch.float64, n=5) * (sum(values) + comparison)


def test_relu_prox_is_the_grid_minimiser():
    """Every case of the table (b >= 0; b < 0 with p <= 0; b < 0 with p > 0 on either side of the tie) against
    the least value over a grid of step 1e-4 on [-6, 6], which holds every minimiser of these v, b, c."""
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(2000, generator=gen, dtype=torch.float64) * 6 - 3
    b = torch.rand(2000, generator=gen, dtype=torch.float64) * 6 - 3
    c = torch.rand(2000, generator=gen, dtype=torch.float64) * 3 + 0.05
    u = torch.stack([naive_bcd.relu_prox(v[k : k + 1], b[k : k + 1], float(c[k])) for k in range(len(v))]).squeeze(1)
    best = torch.stack([_objective(GRID, v[k], b[k], c[k]).min() for k in range(len(v))])
    found = _objective(u, v, b, c)
    rounding = _objective_rounding(v, b, c, found, best)
    assert_le(found - best, rounding, "never worse than the grid")
    assert_le(best - found, _grid_excess(v, b, c) + rounding, "and the grid comes within its resolution of it")
    p = (v + c * b) / (1 + c)
    cases = {
        "b >= 0": b >= 0,
        "b < 0, p <= 0": (b < 0) & (p <= 0),
        "b < 0, p > 0, u = p": (b < 0) & (p > 0) & (u == p),
        "b < 0, p > 0, u = b": (b < 0) & (p > 0) & (u == b),
    }
    assert all(int(mask.sum()) > 20 for mask in cases.values()), {k: int(m.sum()) for k, m in cases.items()}


def test_relu_prox_takes_the_minimiser_when_it_is_unique():
    """Away from the tie the minimiser is unique, and each piece of the objective has curvature at least c: the
    grid's argmin, whose value is within the grid's excess (and rounding) of the least, is within
    sqrt(2 excess / c) of the prox (``stall_radius``)."""
    v = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.2, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, -2.0, -0.5, -0.1, -3.0], dtype=torch.float64)
    c = torch.tensor(0.7, dtype=torch.float64)
    argmin = torch.stack([GRID[_objective(GRID, v[k], b[k], c).argmin()] for k in range(len(v))])
    u = naive_bcd.relu_prox(v, b, float(c))
    excess = _grid_excess(v, b, c) + _objective_rounding(v, b, c, _objective(u, v, b, c), _objective(argmin, v, b, c))
    assert_le((u - argmin).abs(), stall_radius(excess, c), "prox against the grid's argmin")


def _warm_case(overrides: tuple[str, ...] = ()):
    """A 12-9-7-3 network on 50 samples in float64, one sweep on: off the initial state, where U_i = W_i V_{i-1}
    + b_i and V_i = relu(U_i) hold exactly and would hide a wrong weighting of them."""
    trainer, data, _ = build_case(Case("three", [12, 9, 7, 3], 50, n_test=10, dtype="float64", extra=overrides))
    trainer.sweep()
    return trainer, data


SWEEP_ORDER = ["V3", "U3", "W3", "V2", "U2", "W2", "V1", "U1", "W1"]


@pytest.mark.parametrize("overrides", [(), ("gamma=0.5", "rho=2.0", "alpha=3.0")], ids=["default", "weights"])
def test_each_block_is_the_engines_from_the_same_inputs(overrides):
    """A sweep of each from the same state, the naive computing every block from the engine's inputs: each
    block within its derived rounding bound, and every block moved by the sweep far beyond it."""
    trainer, _ = _warm_case(overrides)
    start = naive_bcd.named_blocks(
        {kind: [t.clone() for t in tensors] for kind, tensors in trainer.state_dict().items()}
    )
    checks = naive_bcd.compare_blocks(trainer)
    assert [check.block for check in checks] == SWEEP_ORDER
    for check in checks:
        assert_le(check.difference, check.tolerance, check.block)
        assert math.isfinite(check.tolerance) and check.tolerance > 0
    after = naive_bcd.named_blocks(trainer.state_dict())
    for check in checks:  # not an unchanged state: every block moved by far more than its tolerance
        moved = float(
            torch.linalg.norm(after[check.block] - start[check.block]) / torch.linalg.norm(after[check.block])
        )
        assert moved > 100 * check.tolerance, check.block


def test_a_naive_off_in_one_weight_fails_the_blocks_it_enters():
    """alpha off by one part in a million: the blocks alpha enters (V_N's and U_i's proximal terms, every W block)
    fail their check; those it does not (U_N, the V_i), computed from the engine's inputs, pass."""
    trainer, _ = _warm_case()
    naive = naive_bcd.NaiveThreeSplitting.from_trainer(trainer)
    naive.alpha *= 1 + 1e-6
    trainer.sweep()
    checks = naive.sweep(reference=naive_bcd.named_blocks(trainer.state_dict()))
    assert [check.block for check in checks if not check.passed] == ["V3", "W3", "U2", "W2", "U1", "W1"]


def test_naive_evaluation_is_the_networks():
    """The naive's evaluation of the engine's state against the engine's: the outputs of the two forward passes
    differ by at most twice ``forward_pass_error`` (e) each, so the losses 1/2 ||output - Y||^2 by at most
    sum |output - Y| 2e + (2e)^2 / 2 plus the rounding of the sum itself; the accuracies are equal (counts over
    n, rounded once) when every sample's top two outputs are more than 4 e apart."""
    trainer, data = _warm_case()
    naive = naive_bcd.NaiveThreeSplitting.from_trainer(trainer)
    engine = trainer.evaluate(data, grad_norm=False)
    result = naive.evaluate(data)
    state = trainer.state_dict()
    for X in (data.X_train, data.X_test):
        e = forward_pass_error(state["W"], state["b"], X).max(dim=0).values
        top = naive.output(X).topk(2, dim=0).values
        assert bool((top[0] - top[1] > 4 * e).all()), "no sample's argmax within rounding of a tie"
    residual = (naive.output(data.X_train) - data.Y_train).abs()
    e = 2 * forward_pass_error(state["W"], state["b"], data.X_train)
    loss_rounding = tol(torch.float64, n=residual.numel()) * result["train_loss"]
    assert_le(abs(result["train_loss"] - engine["train_loss"]), float((residual * e + e**2 / 2).sum()) + loss_rounding)
    assert (result["train_acc"], result["test_acc"]) == (engine["train_acc"], engine["test_acc"])


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ((), None),
        (("splitting=two",), "splitting is TwoSplittingBCD"),
        (("model=resnet",), "splitting is ResNetBCD"),
        (("trainer=sgd",), "trainer is sgd"),
        (("act=tanh",), "act is Tanh"),
        (("loss=hinge",), "loss is Hinge"),
        (("loss.reduction=mean",), "loss.reduction is mean"),
        (("reg@reg_w=l2",), "reg_w is L2"),
        (("reg@reg_v=l1",), "reg_v is L1"),
    ],
)
def test_applies_to_three_splitting_relu_square_sum_without_regularizers(overrides, reason):
    why_not = naive_bcd.applies(compose(*overrides))
    assert why_not == reason if reason is None else why_not.startswith(reason)
