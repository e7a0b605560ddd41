"""An inner solve that stops at its iteration cap short of its tolerance is counted, and the run records it."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcd_cli.catalogue.regularizers import L1
from bcd_cli.engine.inner import InnerSolver, columnwise_prox_gradient, fista, prox_gradient
from tests.conftest import TINY


def lasso(seed: int = 0, k: int = 12) -> tuple[torch.Tensor, torch.Tensor, float]:
    """H (ill-conditioned, SPD) and G of min 1/2 <x, H x> - <G, x> + lam |x|_1, and the largest eigenvalue of H."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    H = Q @ torch.diag(torch.logspace(-3, 0, k, dtype=torch.float64)) @ Q.T
    G = torch.randn(k, 3, generator=gen, dtype=torch.float64)
    return H, G, 1.0


@pytest.mark.parametrize("iters, capped", [(2, 1), (5000, 0)])
def test_fista_counts_a_solve_left_at_its_cap(iters: int, capped: int) -> None:
    H, G, top = lasso()
    reg = L1(lam=0.01)
    solver = InnerSolver(iters=iters, tol=1e-9)
    fista(lambda X: H @ X, G, torch.zeros_like(G), lipschitz=top, prox=reg.prox, penalty=reg, solver=solver)
    assert solver.count.take() == (1, capped)
    assert solver.count.take() == (0, 0)  # taken: the count starts again


@pytest.mark.parametrize("iters, capped", [(2, 1), (5000, 0)])
def test_prox_gradient_counts_a_solve_left_at_its_cap(iters: int, capped: int) -> None:
    H, G, top = lasso(1)
    reg = L1(lam=0.01)

    def smooth(X: torch.Tensor, rejected) -> tuple[torch.Tensor, torch.Tensor]:
        HX = H @ X
        return 0.5 * (X * HX).sum() - (G * X).sum(), HX

    solver = InnerSolver(iters=iters, tol=1e-9)
    prox_gradient(smooth, lambda X, HX: HX - G, torch.zeros_like(G), step=1.0 / top, prox=reg.prox, penalty=reg,
                  solver=solver)  # fmt: skip
    assert solver.count.take() == (1, capped)


@pytest.mark.parametrize("iters, capped", [(2, 1), (5000, 0)])
def test_columnwise_prox_gradient_counts_a_solve_left_at_its_cap(iters: int, capped: int) -> None:
    H, G, top = lasso(2)
    reg = L1(lam=0.01)

    def local(cols: slice):
        G_cols = G[:, cols]

        def value(Z: torch.Tensor) -> torch.Tensor:
            return 0.5 * (Z * (H @ Z)).sum() - (G_cols * Z).sum()

        def gradient(Z: torch.Tensor, with_value: bool):
            HZ = H @ Z
            return (0.5 * (Z * HZ).sum() - (G_cols * Z).sum() if with_value else None), HZ - G_cols

        return value, gradient

    solver = InnerSolver(iters=iters, tol=1e-9)
    columnwise_prox_gradient(local, torch.zeros_like(G), chunks=[slice(0, 2), slice(2, 3)], step=1.0 / top,
                             prox=reg.prox, penalty=reg, solver=solver)  # fmt: skip
    assert solver.count.take() == (1, capped)


def test_a_run_records_the_inner_solves_left_at_their_cap(tmp_path: Path, bcd_train) -> None:
    # an l1 regularizer on W: the W blocks have no closed form and go to FISTA, here with one step each
    code, stderr = bcd_train(*TINY, "reg@reg_w=l1", "reg_w.lam=0.1", "trainer.inner_iters=1", "trainer.inner_tol=0",
                             "hydra.run.dir=capped", cwd=tmp_path)  # fmt: skip
    assert code == 0, stderr
    metrics = pd.read_csv(tmp_path / "capped" / "metrics.csv")
    capped = metrics["inner_capped"]
    assert pd.isna(capped.iloc[0]) and (capped.iloc[1:] >= 1).all()  # every sweep left W blocks at the cap
    summary = json.loads((tmp_path / "capped" / "summary.json").read_text())
    assert summary["inner_capped_solves"] == int(capped.iloc[1:].sum())
    # without a regularizer every block has a closed form: nothing to count, and the column says 0
    code, stderr = bcd_train(*TINY, "hydra.run.dir=plain", cwd=tmp_path)
    assert code == 0, stderr
    assert (pd.read_csv(tmp_path / "plain" / "metrics.csv")["inner_capped"].iloc[1:] == 0).all()
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["inner_capped_solves"] == 0
