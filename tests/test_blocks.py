"""Every block solver of ``bcd_cli.engine.blocks`` returns the minimiser of its subproblem.

Each block objective is written out below from ``bcd-math.md`` (Algorithm 2) without
calling engine code, minimised independently (L-BFGS for the strongly convex blocks, a
dense 1-D grid per element for the nonconvex ReLU U-block), and compared with the
solver: the argmin must agree and the solver's objective value must be no larger than
the independent one. Also covers ``linalg.spd_solve`` (mixed precision, failure).
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from bcd_cli.catalogue import L2, Linear, NoReg, ReLU, Sigmoid, Square
from bcd_cli.engine import blocks
from bcd_cli.engine.blocks import (
    feasible,
    output_alpha,
    squared_distance,
    update_hidden_state,
    update_hidden_state_nonlinear,
    update_output_state,
    update_preactivation,
    update_weights,
    update_weights_nonlinear,
)
from bcd_cli.engine.linalg import spd_solve
from bcd_cli.errors import NumericalError
from tests.conftest import catalogue_entries

DT = torch.float64
LAM = 0.4  # large enough for the regularizer to move the minimiser visibly
REGS = [pytest.param(NoReg(), 0.0, id="reg=none"), pytest.param(L2(lam=LAM), LAM, id="reg=l2")]


# ------------------------------------------------------------------ helpers


def rand(*shape, gen, scale=1.0):
    return torch.randn(*shape, generator=gen, dtype=DT) * scale


def one_hot(classes: int, n: int, gen) -> torch.Tensor:
    labels = torch.randint(0, classes, (n,), generator=gen)
    return torch.nn.functional.one_hot(labels, classes).T.to(DT)


def sq(A: torch.Tensor) -> torch.Tensor:
    """||A||_F^2 (kept differentiable, unlike the engine's ``squared_distance``)."""
    return (A * A).sum()


def lbfgs_argmin(f, *x0: torch.Tensor) -> list[torch.Tensor]:
    """Minimiser of the smooth scalar function f(*xs) by L-BFGS (strong Wolfe) from x0."""
    xs = [x.clone().requires_grad_(True) for x in x0]
    opt = torch.optim.LBFGS(
        xs, lr=1.0, max_iter=5000, max_eval=10000, tolerance_grad=1e-14, tolerance_change=1e-18,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        value = f(*xs)
        value.backward()
        return value

    opt.step(closure)
    return [x.detach() for x in xs]


def assert_is_minimiser(f, got: list[torch.Tensor], ref: list[torch.Tensor]) -> None:
    """got agrees with ref and f(got) <= f(ref) up to rounding."""
    f_got, f_ref = float(f(*got)), float(f(*ref))
    assert f_got <= f_ref + 1e-12 * (1 + abs(f_ref)), (f_got, f_ref)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-8)


# ------------------------------------------------------------------ V_N (output state)


@pytest.mark.parametrize("reg_v, lam", REGS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("gamma, alpha", [(1.0, 1.0), (0.3, 4.0), (5.0, 0.01)], ids=lambda x: f"{x}")
def test_update_output_state(reduction, reg_v, lam, gamma, alpha):
    """argmin_V s/2 ||V - Y||^2 + lam/2 ||V||^2 + gamma/2 ||V - U_N||^2 + alpha/2 ||V - V_old||^2."""
    gen = torch.Generator().manual_seed(10)
    classes, n = 4, 9
    Y, U_N, V_old = one_hot(classes, n, gen), rand(classes, n, gen=gen, scale=2), rand(classes, n, gen=gen)
    s = 1.0 if reduction == "sum" else 1.0 / n

    def f(V):
        return 0.5 * s * sq(V - Y) + 0.5 * lam * sq(V) + 0.5 * gamma * sq(V - U_N) + 0.5 * alpha * sq(V - V_old)

    got = update_output_state(Square(reduction), reg_v, Y, U_N.clone(), V_old.clone(), gamma=gamma, alpha=alpha)
    ref = lbfgs_argmin(f, rand(classes, n, gen=gen))
    assert_is_minimiser(f, [got], ref)


# ------------------------------------------------------------------ U (pre-activation)


@pytest.mark.parametrize(
    "gamma, rho, alpha",
    [(1.0, 1.0, 0.0), (2.0, 0.5, 0.0), (1.0, 1.0, 1.0), (0.5, 3.0, 0.2), (4.0, 0.7, 10.0)],
    ids=lambda x: f"{x}",
)
def test_update_preactivation_linear(gamma, rho, alpha):
    """argmin_U gamma/2 ||V - U||^2 + rho/2 ||U - Z||^2 + alpha/2 ||U - U_old||^2 (strongly convex)."""
    gen = torch.Generator().manual_seed(11)
    V, Z, U_old = rand(5, 7, gen=gen), rand(5, 7, gen=gen, scale=2), rand(5, 7, gen=gen)

    def f(U):
        return 0.5 * gamma * sq(V - U) + 0.5 * rho * sq(U - Z) + 0.5 * alpha * sq(U - U_old)

    got = update_preactivation(Linear(), V, Z.clone(), U_old, gamma=gamma, rho=rho, alpha=alpha)
    ref = lbfgs_argmin(f, torch.zeros_like(V))
    assert_is_minimiser(f, [got], ref)


def relu_block_elementwise(u, v, z, u_old, gamma, rho, alpha):
    """gamma/2 (relu(u) - v)^2 + rho/2 (u - z)^2 + alpha/2 (u - u_old)^2, elementwise, broadcasting."""
    return 0.5 * gamma * (u.clamp(min=0) - v) ** 2 + 0.5 * rho * (u - z) ** 2 + 0.5 * alpha * (u - u_old) ** 2


@pytest.mark.parametrize(
    "gamma, rho, alpha",
    [(1.0, 1.0, 0.0), (1.0, 1.0, 1.0), (3.0, 0.5, 0.1), (0.2, 2.0, 5.0), (10.0, 0.3, 0.05)],
    ids=lambda x: f"{x}",
)
def test_update_preactivation_relu_against_grid(gamma, rho, alpha):
    """The ReLU U-block is nonconvex: compare each element with a dense grid on [-12, 12], then a refined one."""
    gen = torch.Generator().manual_seed(12)
    V = rand(4, 6, gen=gen, scale=2).abs() * torch.tensor([1.0, 1.0, 1.0, -1.0], dtype=DT)[:, None]  # v < 0 too
    Z, U_old = rand(4, 6, gen=gen, scale=2), rand(4, 6, gen=gen, scale=2)
    got = update_preactivation(ReLU(), V, Z.clone(), U_old, gamma=gamma, rho=rho, alpha=alpha)
    assert got.shape == V.shape

    v, z, u_old = (t.reshape(-1, 1) for t in (V, Z, U_old))
    grid = torch.linspace(-12, 12, 120_001, dtype=DT)[None, :]
    h = 24 / 120_000
    coarse = relu_block_elementwise(grid, v, z, u_old, gamma, rho, alpha)
    centre = grid[0, coarse.argmin(dim=1)]
    fine = centre[:, None] + torch.linspace(-2 * h, 2 * h, 4001, dtype=DT)[None, :]
    fine_values = relu_block_elementwise(fine, v, z, u_old, gamma, rho, alpha)
    grid_min, grid_arg = fine_values.min(dim=1)
    grid_arg = fine[torch.arange(fine.shape[0]), grid_arg]

    f_got = relu_block_elementwise(got.reshape(-1), v[:, 0], z[:, 0], u_old[:, 0], gamma, rho, alpha)
    assert torch.all(f_got <= grid_min + 1e-11 * (1 + grid_min.abs())), (f_got - grid_min).max()
    # generic data (no ties): the minimiser is unique, so the grid argmin locates it to ~1e-6
    torch.testing.assert_close(got.reshape(-1), grid_arg, rtol=0, atol=1e-5)


def test_update_preactivation_does_not_touch_other_arguments():
    gen = torch.Generator().manual_seed(13)
    V, Z, U_old = rand(3, 4, gen=gen), rand(3, 4, gen=gen), rand(3, 4, gen=gen)
    V0, U0 = V.clone(), U_old.clone()
    update_preactivation(ReLU(), V, Z.clone(), U_old, gamma=1.0, rho=1.0, alpha=1.0)
    assert torch.equal(V, V0) and torch.equal(U_old, U0)


# ------------------------------------------------------------------ W, b


@pytest.mark.parametrize("reg_w, lam", REGS)
@pytest.mark.parametrize("rho, alpha", [(1.0, 1.0), (0.3, 5.0), (4.0, 0.05)], ids=lambda x: f"{x}")
def test_update_weights(reg_w, lam, rho, alpha):
    """argmin_{W,b} lam/2 ||W||^2 + rho/2 ||U - W V - b 1^T||^2 + alpha/2 (||W - W_old||^2 + ||b - b_old||^2).

    The bias is not regularized and has its own proximal term.
    """
    gen = torch.Generator().manual_seed(14)
    d_in, d_out, n = 5, 3, 11
    U, V_in = rand(d_out, n, gen=gen, scale=2), rand(d_in, n, gen=gen).abs() + 0.5  # mean far from 0: bias matters
    W_old, b_old = rand(d_out, d_in, gen=gen), rand(d_out, gen=gen, scale=3)

    def f(W, b):
        residual = U - W @ V_in - b[:, None]
        return 0.5 * lam * sq(W) + 0.5 * rho * sq(residual) + 0.5 * alpha * (sq(W - W_old) + sq(b - b_old))

    W, b = update_weights(reg_w, U, V_in, W_old, b_old, rho=rho, alpha=alpha)
    assert W.shape == W_old.shape and b.shape == b_old.shape
    ref = lbfgs_argmin(f, torch.zeros_like(W_old), torch.zeros_like(b_old))
    assert_is_minimiser(f, [W, b], ref)


def test_update_weights_leaves_bias_unregularized():
    """A huge lam pins W to ~0 but b must still fit the data: b -> (rho sum_j U_j + alpha b_old)/(rho n + alpha)."""
    gen = torch.Generator().manual_seed(15)
    U, V_in = rand(3, 8, gen=gen), rand(4, 8, gen=gen)
    W_old, b_old = rand(3, 4, gen=gen), rand(3, gen=gen)
    W, b = update_weights(L2(lam=1e12), U, V_in, W_old, b_old, rho=1.0, alpha=0.5)
    assert W.abs().max() < 1e-9
    torch.testing.assert_close(b, (U.sum(dim=1) + 0.5 * b_old) / (8 + 0.5), rtol=1e-8, atol=1e-10)


def test_update_weights_solves_in_solve_dtype():
    """float32 data with solve_dtype=float64 gives the float64 answer rounded to float32."""
    gen = torch.Generator().manual_seed(16)
    U, V_in, W_old, b_old = rand(3, 20, gen=gen), rand(6, 20, gen=gen), rand(3, 6, gen=gen), rand(3, gen=gen)
    W64, b64 = update_weights(NoReg(), U, V_in, W_old, b_old, rho=1.0, alpha=1e-3)
    args = [t.float() for t in (U, V_in, W_old, b_old)]
    W32, b32 = update_weights(NoReg(), *args, rho=1.0, alpha=1e-3, solve_dtype=torch.float64)
    assert W32.dtype == b32.dtype == torch.float32
    torch.testing.assert_close(W32.double(), W64, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b32.double(), b64, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ V_i (hidden state)


@pytest.mark.parametrize("reg_v, lam", REGS)
@pytest.mark.parametrize("gamma, rho", [(1.0, 1.0), (0.2, 3.0), (5.0, 0.4)], ids=lambda x: f"{x}")
@pytest.mark.parametrize("d, d_next", [(6, 4), (8, 2)], ids=["d x d system", "Woodbury"])
def test_update_hidden_state(reg_v, lam, gamma, rho, d, d_next):
    """argmin_V lam/2 ||V||^2 + gamma/2 ||V - sigma(U_i)||^2 + rho/2 ||U_next - W_next V - b_next 1^T||^2."""
    gen = torch.Generator().manual_seed(17)
    n = 10
    target = torch.relu(rand(d, n, gen=gen))
    U_next, W_next, b_next = rand(d_next, n, gen=gen), rand(d_next, d, gen=gen), rand(d_next, gen=gen, scale=3)

    def f(V):
        return 0.5 * lam * sq(V) + 0.5 * gamma * sq(V - target) + 0.5 * rho * sq(U_next - W_next @ V - b_next[:, None])

    got = update_hidden_state(reg_v, target, gamma, U_next, W_next, b_next, target.clone(), rho=rho)
    assert got.shape == target.shape
    ref = lbfgs_argmin(f, rand(d, n, gen=gen))
    assert_is_minimiser(f, [got], ref)


@pytest.mark.parametrize("reg_v, lam", REGS)
@pytest.mark.parametrize("d, d_next", [(6, 4), (8, 2)], ids=["d x d system", "Woodbury"])
def test_update_hidden_state_overwriting_its_target(reg_v, lam, d, d_next):
    """overwrite_target: the same minimiser, in the target's memory."""
    gen = torch.Generator().manual_seed(23)
    target = torch.relu(rand(d, 9, gen=gen))
    U_next, W_next, b_next = rand(d_next, 9, gen=gen), rand(d_next, d, gen=gen), rand(d_next, gen=gen)
    args = (U_next, W_next, b_next, target.clone())
    kept = update_hidden_state(reg_v, target, 0.7, *args, rho=1.3)
    owned = target.clone()
    got = update_hidden_state(reg_v, owned, 0.7, *args, rho=1.3, overwrite_target=True)
    assert got.data_ptr() == owned.data_ptr()
    torch.testing.assert_close(got, kept, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", [ReLU(), Linear(), Sigmoid()], ids=lambda a: type(a).__name__)
@pytest.mark.parametrize("residual", [False, True], ids=["plain", "residual"])
def test_update_preactivation_in_row_chunks_is_the_prox_of_the_whole(act, residual, monkeypatch):
    """Row chunks of 7 entries (one row of 7 columns each) give the activation's prox on the whole block,
    of V - V_in for a residual layer, written into Z (to the tolerance of the smooth activations' Newton
    solver, whose stopping test sees one chunk at a time)."""
    gen = torch.Generator().manual_seed(31)
    V, Z, U_old, V_in = (rand(5, 7, gen=gen, scale=2) for _ in range(4))
    b = (1.3 * Z + 0.4 * U_old) / 1.7
    expected = act.prox(V - V_in if residual else V, b, 1.7 / 0.9, start=U_old)
    monkeypatch.setattr(blocks, "CPU_CHUNK_ELEMENTS", 7)
    assert len(blocks.cpu_row_chunks(Z)) == 5
    owned = Z.clone()
    got = update_preactivation(act, V, owned, U_old, gamma=0.9, rho=1.3, alpha=0.4, V_in=V_in if residual else None)
    assert got.data_ptr() == owned.data_ptr()
    tol = 1e-12 if hasattr(act, "prox_") else 1e-8
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


# ------------------------------------------------------------------ linalg


def test_spd_solve_float32_in_float64():
    """H with condition number 1e5: a float32 Cholesky would lose ~3 digits, the float64 one does not."""
    gen = torch.Generator().manual_seed(18)
    Q, _ = torch.linalg.qr(rand(8, 8, gen=gen))
    H = (Q @ torch.diag(torch.logspace(0, 5, 8, dtype=DT)) @ Q.T).float()
    H = (H + H.T) / 2
    G = rand(8, 5, gen=gen).float()
    X = spd_solve(H, G, solve_dtype=torch.float64)
    assert X.dtype == torch.float32 and X.shape == G.shape
    exact = torch.linalg.solve(H.double(), G.double())  # the float32 H, solved exactly
    torch.testing.assert_close(X.double(), exact, rtol=1e-6, atol=1e-6 * exact.abs().max().item())
    torch.testing.assert_close(H.double() @ X.double(), G.double(), rtol=0, atol=1e-3)


def test_spd_solve_float64_default_dtype():
    gen = torch.Generator().manual_seed(19)
    A = rand(6, 6, gen=gen)
    H, G = A @ A.T + 0.1 * torch.eye(6, dtype=DT), rand(6, 3, gen=gen)
    X = spd_solve(H, G)
    assert X.dtype == DT
    torch.testing.assert_close(H @ X, G, rtol=0, atol=1e-10)


NON_PD = [
    pytest.param((1.0, 2.0, -0.5), True, id="indefinite"),
    pytest.param((-1.0, -2.0, -3.0), True, id="negative-definite"),
    pytest.param((1.0, 0.0, 0.0), False, id="singular"),  # not rotated: the zeros stay exact
]


@pytest.mark.parametrize("eigs, rotate", NON_PD)
def test_spd_solve_refuses_non_pd(eigs, rotate):
    H = torch.diag(torch.tensor(eigs, dtype=DT))
    if rotate:
        Q, _ = torch.linalg.qr(rand(3, 3, gen=torch.Generator().manual_seed(20)))
        H = Q @ H @ Q.T
    with pytest.raises(NumericalError, match="W3"):
        spd_solve(H, torch.ones(3, 2, dtype=DT), block="W3")


def test_update_hidden_state_error_names_block():
    """A non-PD system (gamma < 0 is invalid, but it makes the matrix indefinite) names the block in the error."""
    W = torch.zeros(2, 3, dtype=DT)
    with pytest.raises(NumericalError, match="V2"):
        update_hidden_state(NoReg(), torch.ones(3, 4, dtype=DT), -1.0, torch.ones(2, 4, dtype=DT), W,
                            torch.zeros(2, dtype=DT), torch.ones(3, 4, dtype=DT), rho=1.0, block="V2")  # fmt: skip


def test_squared_distance():
    A = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=DT)
    B = torch.tensor([[0.0, 2.0], [5.0, 1.0]], dtype=DT)
    assert squared_distance(A, B) == 1.0 + 0.0 + 4.0 + 9.0
    assert torch.equal(A, torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=DT))  # inputs untouched


# ------------------------------------------------------------------ blocks without a closed form
#
# The regularizers, losses and activations are discovered from conf/ (see test_catalogue.py, which checks
# each entry's prox on its own). A convex block's minimiser X* is characterised by the fixed point
# X* = prox_{t h}(X* - t grad f(X*)) for any t > 0: an optimality test that does not depend on the solver's path.


ALL_REGS, ALL_LOSSES, ALL_ACTS = catalogue_entries("reg"), catalogue_entries("loss"), catalogue_entries("act")
NONQUADRATIC = [name for name, reg in ALL_REGS.items() if not reg.quadratic]


def test_some_regularizers_need_the_inner_solver():
    assert {"l1", "elastic_net", "nonneg", "box"} <= set(NONQUADRATIC)


def weights_problem(seed: int):
    gen = torch.Generator().manual_seed(seed)
    d_in, d_out, n = 5, 3, 11
    U, V_in = rand(d_out, n, gen=gen, scale=2), rand(d_in, n, gen=gen).abs() + 0.5
    W_old, b_old = rand(d_out, d_in, gen=gen, scale=0.3), rand(d_out, gen=gen, scale=3)
    return U, V_in, W_old, b_old


def fixed_point_residual(grad, prox, X, t) -> float:
    """||X - prox(X - t grad(X), t)|| relative to ||X|| + 1: zero exactly at a minimiser of f + h."""
    return float(torch.linalg.vector_norm(X - prox(X - t * grad(X), t))) / (1.0 + float(torch.linalg.vector_norm(X)))


@pytest.mark.parametrize("name", NONQUADRATIC)
def test_update_weights_inner_solver_is_optimal_and_monotone(name):
    from bcd_cli.engine.inner import InnerSolver

    reg = ALL_REGS[name]
    reg = reg if name != "l1" else type(reg)(lam=0.5)  # large enough to zero some entries
    U, V_in, W_old, b_old = weights_problem(21)
    W_old = feasible(reg, W_old)
    rho, alpha = 1.0, 0.5

    def f(W, b):
        return float(reg(W)) + 0.5 * rho * sq(U - W @ V_in - b[:, None]) + 0.5 * alpha * (sq(W - W_old) + sq(b - b_old))

    W, b = update_weights(reg, U, V_in, W_old, b_old, rho=rho, alpha=alpha, inner=InnerSolver(iters=5000, tol=0.0))
    assert float(reg(W)) == 0.0 or name in ("l1", "elastic_net")  # indicators: feasible

    def grad_W(Wx):  # gradient of the smooth part in W, with b at its optimum for that W (b is unconstrained)
        residual = Wx @ V_in + b[:, None] - U
        return rho * residual @ V_in.T + alpha * (Wx - W_old)

    assert fixed_point_residual(grad_W, reg.prox, W, 0.01) < 1e-9
    grad_b = rho * (W @ V_in + b[:, None] - U).sum(dim=1) + alpha * (b - b_old)
    assert float(grad_b.abs().max()) < 1e-6  # the residual sums over n = 11 samples: ~1e-9 relative
    # few steps: never worse than the old value
    for iters in (1, 2, 3):
        W_k, b_k = update_weights(reg, U, V_in, W_old, b_old, rho=rho, alpha=alpha, inner=InnerSolver(iters=iters))
        assert f(W_k, b_k) <= f(W_old, b_old) + 1e-12
        assert f(W, b) <= f(W_k, b_k) + 1e-10


@pytest.mark.parametrize("name", NONQUADRATIC)
def test_update_hidden_state_inner_solver_is_optimal_and_monotone(name):
    from bcd_cli.engine.inner import InnerSolver

    reg = ALL_REGS[name]
    gen = torch.Generator().manual_seed(22)
    d, d_next, n, weight, rho = 6, 4, 10, 1.5, 2.0
    target = rand(d, n, gen=gen)
    U_next, W_next, b_next = rand(d_next, n, gen=gen), rand(d_next, d, gen=gen), rand(d_next, gen=gen)
    V_old = feasible(reg, rand(d, n, gen=gen))

    def f(V):
        return float(reg(V)) + 0.5 * weight * sq(V - target) + 0.5 * rho * sq(U_next - W_next @ V - b_next[:, None])

    def grad(V):
        return weight * (V - target) - rho * W_next.T @ (U_next - W_next @ V - b_next[:, None])

    args = (reg, target, weight, U_next, W_next, b_next, V_old)
    V = update_hidden_state(*args, rho=rho, inner=InnerSolver(iters=5000, tol=0.0))
    assert fixed_point_residual(grad, reg.prox, V, 0.01) < 1e-9
    for iters in (1, 2, 3):
        V_k = update_hidden_state(*args, rho=rho, inner=InnerSolver(iters=iters))
        assert f(V_k) <= f(V_old) + 1e-12 and f(V) <= f(V_k) + 1e-10


EXACT_LOSSES = [name for name, loss in ALL_LOSSES.items() if loss.solver == "exact"]
PROX_LINEAR_LOSSES = [name for name, loss in ALL_LOSSES.items() if loss.solver == "prox_linear"]


def output_block(loss, reg, Y, U_N, V_old, gamma, alpha):
    def F(V):
        return float(loss(V, Y)) + float(reg(V)) + 0.5 * gamma * sq(V - U_N) + 0.5 * alpha * sq(V - V_old)

    return F


def assert_coordinatewise_minimal(F, V: torch.Tensor) -> None:
    """F(V + eps e_ij) >= F(V) for every entry and eps: for a separable convex F this is global optimality."""
    base = F(V)
    for idx in itertools.product(*(range(k) for k in V.shape)):
        for eps in (1e-2, -1e-2, 1e-4, -1e-4, 1e-6, -1e-6):
            W = V.clone()
            W[idx] += eps
            assert F(W) >= base - 1e-12 * (1 + abs(base)), (idx, eps, F(W) - base)


@pytest.mark.parametrize("reg", list(ALL_REGS))
@pytest.mark.parametrize("loss", EXACT_LOSSES)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_update_output_state_exact_loss_with_every_regularizer(loss, reg, reduction):
    """argmin_V R(V; Y) + s(V) + gamma/2 ||V - U_N||^2 + alpha/2 ||V - V_old||^2 (separable and convex)."""
    loss_entry = dataclasses.replace(ALL_LOSSES[loss], reduction=reduction)
    reg_entry = ALL_REGS[reg]
    gen = torch.Generator().manual_seed(23)
    classes, n, gamma, alpha = 3, 4, 0.7, 0.9
    Y, U_N, V_old = one_hot(classes, n, gen), rand(classes, n, gen=gen, scale=2), rand(classes, n, gen=gen)
    V_old = feasible(reg_entry, V_old)
    got = update_output_state(loss_entry, reg_entry, Y, U_N, V_old, gamma=gamma, alpha=alpha)
    F = output_block(loss_entry, reg_entry, Y, U_N, V_old, gamma, alpha)
    assert F(got) <= F(V_old)
    assert_coordinatewise_minimal(F, got)


@pytest.mark.parametrize("reg", list(ALL_REGS))
@pytest.mark.parametrize("loss", PROX_LINEAR_LOSSES)
def test_update_output_state_prox_linear_step(loss, reg):
    """Theorem 2: V minimises the model <grad R(V_old), V> + s(V) + gamma/2 ||V - U_N||^2 + alpha/2 ||V - V_old||^2,
    and the block objective drops by at least (alpha + gamma/2 - L/2) ||V - V_old||^2."""
    loss_entry, reg_entry = ALL_LOSSES[loss], ALL_REGS[reg]
    gen = torch.Generator().manual_seed(24)
    classes, n, gamma, alpha = 3, 4, 0.7, 0.9
    Y, U_N, V_old = one_hot(classes, n, gen), rand(classes, n, gen=gen, scale=2), rand(classes, n, gen=gen)
    V_old = feasible(reg_entry, V_old)
    got = update_output_state(loss_entry, reg_entry, Y, U_N, V_old, gamma=gamma, alpha=alpha)
    g = loss_entry.grad(V_old, Y)

    def model(V):
        return float((g * V).sum()) + float(reg_entry(V)) + 0.5 * gamma * sq(V - U_N) + 0.5 * alpha * sq(V - V_old)

    assert_coordinatewise_minimal(model, got)
    F = output_block(loss_entry, reg_entry, Y, U_N, V_old, gamma, 0.0)  # L's own terms of the block
    L_R = loss_entry.lipschitz(n)
    assert F(V_old) - F(got) >= (alpha + gamma / 2 - L_R / 2) * sq(got - V_old) - 1e-12


def test_output_alpha_theorem2_check(caplog):
    loss = next(e for e in ALL_LOSSES.values() if e.solver == "prox_linear")
    L = loss.lipschitz(10)
    gamma = L / 10  # (L - gamma)/2 > 0: small alphas fail the condition
    alpha = (L - gamma) / 4
    assert output_alpha(loss, 10, gamma=gamma, alpha=alpha, check="warn") == alpha
    assert "Theorem 2" in caplog.text
    raised = output_alpha(loss, 10, gamma=gamma, alpha=alpha, check="raise")
    assert raised == pytest.approx((L - gamma) / 2 + alpha) and raised > (L - gamma) / 2
    assert output_alpha(loss, 10, gamma=gamma, alpha=L, check="warn") == L  # the condition holds
    square = ALL_LOSSES["square"]
    assert output_alpha(square, 10, gamma=1e-6, alpha=1e-6, check="raise") == 1e-6  # exact: no condition


# ------------------------------------------------------------------ two-splitting blocks behind a nonlinear sigma

NONLINEAR_ACTS = [name for name, act in ALL_ACTS.items() if type(act).__name__ != "Linear"]


@pytest.mark.parametrize("reg", ["none", "l2", "l1", "nonneg"])
@pytest.mark.parametrize("act", NONLINEAR_ACTS)
def test_nonlinear_blocks_are_monotone_and_stationary(act, reg):
    """The V_i and W_i blocks of Algorithm 1: never worse than the old value; with many steps, strictly better and,
    for a smooth sigma, a fixed point of the proximal-gradient map (first-order stationarity of the nonconvex
    block). For ReLU-like sigma the block is nonsmooth and the method may stop at a kink: monotone only."""
    from bcd_cli.engine.inner import InnerSolver

    sigma, reg_entry = ALL_ACTS[act], ALL_REGS[reg]
    gen = torch.Generator().manual_seed(25)
    d_in, d, d_next, n, gamma, alpha, weight = 4, 5, 3, 9, 1.3, 0.6, 1.9
    V_in, target = rand(d_in, n, gen=gen), rand(d, n, gen=gen)
    V_next, W_next, b_next = (
        torch.tanh(rand(d_next, n, gen=gen)),
        rand(d_next, d, gen=gen, scale=0.5),
        rand(d_next, gen=gen),
    )
    V_old = feasible(reg_entry, rand(d, n, gen=gen))

    def F_v(V):
        return (
            float(reg_entry(V))
            + 0.5 * weight * sq(V - target)
            + 0.5 * gamma * sq(V_next - sigma(W_next @ V + b_next[:, None]))
        )

    def grad_v(V):
        V = V.detach().requires_grad_(True)
        (0.5 * weight * sq(V - target) + 0.5 * gamma * sq(V_next - sigma(W_next @ V + b_next[:, None]))).backward()
        return V.grad

    args = (sigma, reg_entry, target, weight, V_next, W_next, b_next, V_old)
    for iters in (1, 3):
        V_k = update_hidden_state_nonlinear(*args, gamma=gamma, inner=InnerSolver(iters=iters))
        assert F_v(V_k) <= F_v(V_old) + 1e-12
    V = update_hidden_state_nonlinear(*args, gamma=gamma, inner=InnerSolver(iters=3000, tol=0.0))
    assert F_v(V) < F_v(V_old)
    smooth = hasattr(sigma, "second_derivative")
    assert not smooth or fixed_point_residual(grad_v, reg_entry.prox, V, 1e-3) < 1e-7

    V_out, W_old, b_old = torch.tanh(rand(d, n, gen=gen)), feasible(reg_entry, rand(d, d_in, gen=gen)), rand(d, gen=gen)

    def F_w(W, b):
        value = float(reg_entry(W)) + 0.5 * gamma * sq(V_out - sigma(W @ V_in + b[:, None]))
        return value + 0.5 * alpha * (sq(W - W_old) + sq(b - b_old))

    for iters in (1, 3):
        W_k, b_k = update_weights_nonlinear(
            sigma, reg_entry, V_out, V_in, W_old, b_old, gamma=gamma, alpha=alpha, inner=InnerSolver(iters=iters)
        )
        assert F_w(W_k, b_k) <= F_w(W_old, b_old) + 1e-12
    W, b = update_weights_nonlinear(
        sigma, reg_entry, V_out, V_in, W_old, b_old, gamma=gamma, alpha=alpha, inner=InnerSolver(iters=3000, tol=0.0)
    )
    assert F_w(W, b) < F_w(W_old, b_old)

    def grad_w(Wx):
        Wx = Wx.detach().requires_grad_(True)
        value = 0.5 * gamma * sq(V_out - sigma(Wx @ V_in + b[:, None])) + 0.5 * alpha * sq(Wx - W_old)
        value.backward()
        return Wx.grad

    assert not smooth or fixed_point_residual(grad_w, reg_entry.prox, W, 1e-3) < 1e-7
