"""The benchmark's naive three-splitting BCD (scripts/naive_bcd.py) against the engine and against brute force.

The naive implementation is the reference the benchmark times the engine against: it must run the same
iterates. From the same state, after three sweeps, every block of it equals the engine's in float64; its
ReLU prox (the case table of Lemma 13) is the minimiser found on a dense grid.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from bcd_cli.app import compose

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


def test_relu_prox_is_the_grid_minimiser():
    """Every case of the table (b >= 0; b < 0 with p <= 0; b < 0 with p > 0 on either side of the tie) against
    the least value over a grid of step 1e-4 on [-6, 6], which holds every minimiser of these v, b, c."""
    gen = torch.Generator().manual_seed(0)
    v = torch.rand(2000, generator=gen, dtype=torch.float64) * 6 - 3
    b = torch.rand(2000, generator=gen, dtype=torch.float64) * 6 - 3
    c = torch.rand(2000, generator=gen, dtype=torch.float64) * 3 + 0.05
    grid = torch.arange(-6, 6, 1e-4, dtype=torch.float64)
    u = torch.stack([naive_bcd.relu_prox(v[k : k + 1], b[k : k + 1], float(c[k])) for k in range(len(v))]).squeeze(1)
    best = torch.stack([_objective(grid, v[k], b[k], c[k]).min() for k in range(len(v))])
    found = _objective(u, v, b, c)
    assert (found <= best + 1e-12).all()  # never worse than the grid
    assert (found >= best - 1e-7).all()  # and the grid comes within its resolution of it
    p = (v + c * b) / (1 + c)
    cases = {
        "b >= 0": b >= 0,
        "b < 0, p <= 0": (b < 0) & (p <= 0),
        "b < 0, p > 0, u = p": (b < 0) & (p > 0) & (u == p),
        "b < 0, p > 0, u = b": (b < 0) & (p > 0) & (u == b),
    }
    assert all(int(mask.sum()) > 20 for mask in cases.values()), {k: int(m.sum()) for k, m in cases.items()}


def test_relu_prox_takes_the_minimiser_when_it_is_unique():
    """Away from the tie the minimiser is unique: the grid's argmin is the prox, within the grid's step."""
    v = torch.tensor([2.0, -1.0, 0.5, 3.0, 0.2, 1.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, -2.0, -0.5, -0.1, -3.0], dtype=torch.float64)
    c = 0.7
    grid = torch.arange(-6, 6, 1e-4, dtype=torch.float64)
    argmin = torch.stack([grid[_objective(grid, v[k], b[k], torch.tensor(c)).argmin()] for k in range(len(v))])
    assert torch.allclose(naive_bcd.relu_prox(v, b, c), argmin, atol=2e-4)


@pytest.mark.parametrize("overrides", [(), ("gamma=0.5", "rho=2.0", "alpha=3.0")], ids=["default", "weights"])
def test_naive_sweeps_are_the_engines(overrides):
    """Three sweeps of each from the same state of a 12-9-7-3 network on 50 samples, in float64."""
    trainer, _, _ = build_case(Case("three", [12, 9, 7, 3], 50, n_test=10, dtype="float64", extra=overrides))
    start = {kind: [t.clone() for t in tensors] for kind, tensors in trainer.state_dict().items()}
    differences = naive_bcd.compare(trainer, 3)
    assert set(differences) == {f"{kind}{i}" for kind in "WbVU" for i in (1, 2, 3)}
    assert max(differences.values()) <= 1e-9
    moved = naive_bcd.relative_differences(start, trainer.state_dict())
    assert min(moved.values()) > 1e-6  # every block moved far beyond the tolerance: not an unchanged state


def test_naive_evaluation_is_the_networks():
    trainer, data, _ = build_case(Case("three", [12, 9, 7, 3], 50, n_test=10, dtype="float64"))
    naive = naive_bcd.NaiveThreeSplitting.from_trainer(trainer)
    trainer.sweep()
    naive.sweep()
    engine = trainer.evaluate(data, grad_norm=False)
    assert naive.evaluate(data) == pytest.approx({k: engine[k] for k in ("train_loss", "train_acc", "test_acc")})


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
