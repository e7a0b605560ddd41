"""Every block solver of ``bcd_cli.engine.blocks`` returns the minimiser of its subproblem.

Each block objective is written out below from Zeng et al. (2019) (Algorithm 2) without
calling engine code, minimised independently (L-BFGS for the strongly convex blocks, a
dense 1-D grid per element for the nonconvex ReLU U-block), and compared with the
solver: the argmin must agree and the solver's objective value must be no larger than
the independent one. Also covers ``linalg.spd_solve`` (mixed precision, failure).

Tolerances (``tests/tolerances.py``) are tol(dtype, n, cond) x the size of what was rounded, with n
the size of the problem (the number of entries of its data, which bounds every sum), and cond the
condition number of the block's Hessian where a solve turns a backward error into a forward one. The
monotone inner solvers stop where a step no longer lowers their objective *as computed*: within
``stall_radius`` of their fixed point, about sqrt(eps), not eps.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
import torch

from bcd_cli.catalogue.activations import Linear, ReLU, Sigmoid
from bcd_cli.catalogue.losses import Square
from bcd_cli.catalogue.regularizers import L2, NoReg
from bcd_cli.engine import blocks, chunking
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
from bcd_cli.engine.linalg import gram, spd_solve
from bcd_cli.errors import NumericalError
from tests.conftest import catalogue_entries
from tests.tolerances import activation_size, assert_le, assert_within, eps, stall_radius, tol

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


def flat_gradient(f, xs: list[torch.Tensor]) -> torch.Tensor:
    """grad f at xs, flattened into one vector."""
    leaves = [x.detach().clone().requires_grad_(True) for x in xs]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(f(*leaves), leaves)])


def assert_is_minimiser(f, got: list[torch.Tensor], ref: list[torch.Tensor], *, size: int) -> None:
    """got minimises the strongly convex quadratic f (as a solve would, up to rounding), agrees with the
    L-BFGS minimiser ref, and f(got) <= f(ref) up to rounding. ``size``: the number of entries of the
    problem's data, which bounds the length of every sum.

    With H the Hessian (by autograd), mu and L its extreme eigenvalues and G = -grad f(0), a stable solve
    leaves grad f(got) = H got - G of at most tol(n = size, cond = L/mu) x (L ||got|| + ||G||) (its forward
    error, at most cond times the backward one, times L); the test's own evaluation of the gradient adds
    tol x the same. A point x is then within ||grad f(x)|| / mu of the minimiser: that bounds ||got - ref||.
    f is a sum of squares: each evaluation within tol(n = size) x f. L-BFGS stops once f stops changing as
    computed: within stall_radius(tol x f, mu) of the minimiser, where the gradient is at most L times that."""
    sizes, shapes = [x.numel() for x in got], [x.shape for x in got]

    def flat_f(z):
        return f(*[part.reshape(shape) for part, shape in zip(z.split(sizes), shapes, strict=True)])

    z_got = torch.cat([x.reshape(-1) for x in got])
    z_ref = torch.cat([x.reshape(-1) for x in ref])
    eigenvalues = torch.linalg.eigvalsh(torch.autograd.functional.hessian(flat_f, z_got))
    mu, L = float(eigenvalues[0]), float(eigenvalues[-1])
    assert mu > 0, "the block is strongly convex"
    G = float(torch.linalg.vector_norm(flat_gradient(f, [torch.zeros_like(x) for x in got])))
    grad_scale = L * float(torch.linalg.vector_norm(z_got)) + G
    rounding = tol(DT, n=size) * grad_scale
    g_got = float(torch.linalg.vector_norm(flat_gradient(f, got)))
    g_ref = float(torch.linalg.vector_norm(flat_gradient(f, ref)))
    assert_le(g_got, tol(DT, n=size, cond=L / mu) * grad_scale + rounding, "||grad f(got)||: got is optimal")
    f_got, f_ref = float(f(*got)), float(f(*ref))
    assert_le(g_ref, L * stall_radius(tol(DT, n=size) * abs(f_ref), mu) + rounding, "||grad f(ref)||: L-BFGS converged")
    assert_le(f_got - f_ref, tol(DT, n=size) * (abs(f_got) + abs(f_ref)), "f(got) <= f(ref)")
    distance = float(torch.linalg.vector_norm(z_got - z_ref))
    assert_le(distance, (g_got + g_ref + 2 * rounding) / mu, "||got - ref||")


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
    assert_is_minimiser(f, [got], ref, size=3 * classes * n)


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
    assert_is_minimiser(f, [got], ref, size=3 * V.numel())


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

    u = got.reshape(-1)
    f_got = relu_block_elementwise(u, v[:, 0], z[:, 0], u_old[:, 0], gamma, rho, alpha)
    # rounding of the three squares (each of a difference of known values), at u and at the grid's point
    size = relu_block_elementwise(u.abs(), -v[:, 0].abs(), -z[:, 0].abs(), -u_old[:, 0].abs(), gamma, rho, alpha)
    delta = 2 * tol(DT, n=3) * size
    assert_le(f_got - grid_min, delta, "f(u) <= the grid's minimum")
    # generic data (no ties): the minimiser is unique, and the grid's nearest point to it (within h_fine / 2)
    # is above the minimum by at most E = curvature/2 (h_fine/2)^2, plus slope x h_fine/2 at the kink u = 0;
    # the grid argmin is within sqrt(2 (E + delta) / mu) of it (mu = rho + alpha: the growth on either
    # piece), and at the kink also within (E + delta) / the smaller one-sided slope
    h_fine = 4 * h / 4000
    mu, curvature = rho + alpha, gamma + rho + alpha
    left = -(rho * z[:, 0] + alpha * u_old[:, 0])  # f'(0-) and f'(0+)
    right = left - gamma * v[:, 0]
    kink = u == 0
    slope = torch.where(kink, torch.maximum(left.abs(), right.abs()), 0.0)
    excess = curvature / 2 * (h_fine / 2) ** 2 + slope * h_fine / 2 + delta
    bound = torch.sqrt(2 * excess / mu)
    bound = torch.where(kink, torch.minimum(bound, excess / torch.minimum(left.abs(), right.abs())), bound)
    assert_within(u, grid_arg, bound + eps(DT) * grid_arg.abs(), "the grid's argmin")  # grid points: centre + offset


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
    assert_is_minimiser(f, [W, b], ref, size=sum(t.numel() for t in (U, V_in, W_old, b_old)))


def test_update_weights_leaves_bias_unregularized():
    """A huge lam pins W to ~0 but b must still fit the data: b -> (rho sum_j U_j + alpha b_old)/(rho n + alpha)."""
    gen = torch.Generator().manual_seed(15)
    U, V_in = rand(3, 8, gen=gen), rand(4, 8, gen=gen)
    W_old, b_old = rand(3, 4, gen=gen), rand(3, gen=gen)
    lam, alpha, size = 1e12, 0.5, 3 * 8 + 4 * 8 + 3 * 4 + 3
    W, b = update_weights(L2(lam=lam), U, V_in, W_old, b_old, rho=1.0, alpha=alpha)
    # optimality in W: W ((lam + alpha) I + V V^T) = (U - b 1^T) V^T + alpha W_old, and the matrix in brackets
    # is >= (lam + alpha) I, so ||W|| <= ||(U - b 1^T) V^T + alpha W_old|| / (lam + alpha) (~1e-11 here)
    fro = torch.linalg.matrix_norm
    W_bound = float(fro(U - b[:, None]) * fro(V_in) + alpha * fro(W_old)) / (lam + alpha)
    assert_le(float(fro(W)), W_bound * (1 + tol(DT, n=size)), "||W||")
    # optimality in b: (n + alpha) b = sum_j (U - W V)_j + alpha b_old (the formula with W ~ 0 is the test's
    # point), to the rounding of that equation's terms over its diagonal n + alpha
    b_exact = (U.sum(dim=1) - W @ V_in.sum(dim=1) + alpha * b_old) / (8 + alpha)
    terms = U.abs().sum(dim=1) + W.abs() @ V_in.abs().sum(dim=1) + alpha * b_old.abs() + (8 + alpha) * b.abs()
    assert_within(b, b_exact, tol(DT, n=size) * terms / (8 + alpha), "b")


def test_update_weights_solves_in_solve_dtype():
    """float32 data with solve_dtype=float64 gives the float64 answer rounded to float32."""
    gen = torch.Generator().manual_seed(16)
    U, V_in, W_old, b_old = rand(3, 20, gen=gen), rand(6, 20, gen=gen), rand(3, 6, gen=gen), rand(3, gen=gen)
    W64, b64 = update_weights(NoReg(), U, V_in, W_old, b_old, rho=1.0, alpha=1e-3)
    args = [t.float() for t in (U, V_in, W_old, b_old)]
    W32, b32 = update_weights(NoReg(), *args, rho=1.0, alpha=1e-3, solve_dtype=torch.float64)
    assert W32.dtype == b32.dtype == torch.float32
    # float32 rounding of the data and of the products V V^T, U V^T (20 samples), amplified by the condition
    # number of H = [V; 1][V; 1]^T + alpha I; the float64 solve adds nothing at that scale
    A = torch.cat([V_in, torch.ones(1, 20, dtype=DT)])
    eigenvalues = torch.linalg.eigvalsh(A @ A.T + 1e-3 * torch.eye(7, dtype=DT))
    cond = float(eigenvalues[-1] / eigenvalues[0])
    Theta64, Theta32 = torch.cat([W64, b64[:, None]], dim=1), torch.cat([W32, b32[:, None]], dim=1).double()
    error = float(torch.linalg.matrix_norm(Theta32 - Theta64))
    assert_le(error, tol(torch.float32, n=20, cond=cond) * float(torch.linalg.matrix_norm(Theta64)), "[W b]")


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
    assert_is_minimiser(f, [got], ref, size=sum(t.numel() for t in (target, U_next, W_next, b_next)))


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
    # G formed in place or not (another code path), then the same solve: each result within tol(n, cond) of
    # the minimiser, cond that of H = (0.7 + lam) I + 1.3 W^T W
    eigenvalues = torch.linalg.eigvalsh(1.3 * W_next.T @ W_next + (0.7 + lam) * torch.eye(d, dtype=DT))
    size = sum(t.numel() for t in (target, U_next, W_next, b_next))
    bound = 2 * tol(DT, n=size, cond=float(eigenvalues[-1] / eigenvalues[0])) * float(torch.linalg.matrix_norm(kept))
    assert_le(float(torch.linalg.matrix_norm(got - kept)), bound, "overwriting the target")


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
    monkeypatch.setattr(chunking, "CPU_CHUNK_ELEMENTS", 7)
    assert len(blocks.cpu_row_chunks(Z)) == 5
    owned = Z.clone()
    got = update_preactivation(act, V, owned, U_old, gamma=0.9, rho=1.3, alpha=0.4, V_in=V_in if residual else None)
    assert got.data_ptr() == owned.data_ptr()
    # b is formed in another order (rounding tol x (|Z| + |U_old|)); a closed-form prox is 1-Lipschitz in
    # (v, b) and rounds its few operations on |v| + |b| (generic data: no element at a tie of the ReLU's
    # two pieces)
    v = V - V_in if residual else V
    rounding = tol(DT, n=4) * (v.abs() + Z.abs() + U_old.abs())
    if not hasattr(act, "prox_"):
        # a smooth activation's Newton solver keeps a step only if it lowers phi(u) = 1/2 (sigma(u) - v)^2 +
        # c/2 (u - b)^2 *as computed*, and stops once no element of its call (a chunk, or the whole block)
        # has a step above 8 eps (1 + |u|): within stall_radius(delta, phi''(u)) + 8 eps (1 + |u|) of the
        # minimiser, delta the rounding of phi; a change of b moves the minimiser by c / phi'' per unit
        c = 1.7 / 0.9
        s, ds, dds = act(got), act.derivative(got), act.second_derivative(got)
        curvature = ds.square() + (s - v) * dds + c
        assert bool((curvature > 0).all()), "strict local minimisers"
        phi_size = 0.5 * (activation_size(act, got) + v.abs()).square() + 0.5 * c * (got.abs() + b.abs()).square()
        delta = tol(DT, n=4) * phi_size
        stop = stall_radius(delta, curvature) + 8 * eps(DT) * (1 + got.abs())
        rounding = rounding * (1 + c / curvature) + 2 * stop
    assert_within(got, expected, rounding, "the prox over row chunks")


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
    # X is the float64 solution (relative error tol(float64, 8, 1e5) ~ 1e-9) rounded to float32 (eps32 / 2):
    # a float32 solve would be off by eps32 x 1e5
    cond, H64 = 1e5, H.double()
    assert_within(X, exact, eps(torch.float32) * exact.abs() + tol(DT, n=8, cond=cond) * exact.abs().max(), "X")
    # so its residual is at most |H| |X - exact|, plus the rounding of the product H X
    residual_bound = (eps(torch.float32) + tol(DT, n=8, cond=cond)) * (H64.abs() @ exact.abs())
    residual_bound += tol(DT, n=8) * (H64.abs() @ X.double().abs())
    assert_within(H64 @ X.double(), G.double(), residual_bound, "H X = G")


def test_spd_solve_float64_default_dtype():
    gen = torch.Generator().manual_seed(19)
    A = rand(6, 6, gen=gen)
    H, G = A @ A.T + 0.1 * torch.eye(6, dtype=DT), rand(6, 3, gen=gen)
    X = spd_solve(H, G)
    assert X.dtype == DT
    # Cholesky is backward stable: (H + E) X = G with |E| <= (3k + 1) eps/2 |L| |L^T| (Higham, Thm 10.3), k = 6;
    # the test's product H X adds k eps/2 |H| |X|
    L = torch.linalg.cholesky(H)
    assert_within(H @ X, G, tol(DT, n=6) * ((L.abs() @ L.T.abs() + H.abs()) @ X.abs()), "H X = G")


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
    assert squared_distance(A, B) == 1.0 + 0.0 + 4.0 + 9.0  # small integers: every step is exact, in any order
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


def fixed_point_bound(X, t: float, *, L: float, delta: float, grad_size: float, size: int, steps: float) -> float:
    """What ``fixed_point_residual(grad, prox, X, t)`` can be where a monotone proximal-gradient solver stopped.

    It stops when a proximal-gradient step of size s from X no longer lowers its objective as computed, each
    value within ``delta``. With L the curvature of the smooth part and s <= 1/L, such a step lowers the true
    objective by at least ||step||^2 / (2 s) >= L/2 ||step||^2, so the step is at most ``stall_radius(2 delta, L)``
    long. The residual grows with the step t but shrinks divided by it: at t it is at most max(1, t / s) times
    that, with t / s <= ``steps`` t L (``steps`` = 1 for FISTA's fixed step 1/L, 4 for backtracking by halving,
    whose last trial lies in (1/(4 L), 1/(2 L)] when it stops). Plus the test's own rounding of X - t grad
    (``grad_size``: the size of the gradient's terms).
    """
    norm = float(torch.linalg.vector_norm(X))
    stall = stall_radius(2 * delta, L)
    return (max(1.0, steps * t * L) * stall + tol(DT, n=size) * (norm + t * grad_size)) / (1.0 + norm)


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

    # FISTA minimises 1/2 <T, T H> - <G, T> + h(T) over T = [W b], H = rho A A^T + alpha I with A = [V; 1],
    # G = rho U A^T + alpha [W_old b_old], with step 1/L, L = the largest eigenvalue of H (written out here)
    size = sum(t.numel() for t in (U, V_in, W_old, b_old))
    A = torch.cat([V_in, torch.ones(1, V_in.shape[1], dtype=DT)])
    L = float(torch.linalg.eigvalsh(rho * A @ A.T + alpha * torch.eye(A.shape[0], dtype=DT))[-1])
    G_size = rho * U.abs() @ A.abs().T + alpha * torch.cat([W_old, b_old[:, None]], dim=1).abs()

    def rounding(W, b) -> float:
        """tol x the sizes of the terms of FISTA's value and of f at (W, b)."""
        T = torch.cat([W, b[:, None]], dim=1).abs()
        value = 0.5 * (rho * sq(T @ A.abs()) + alpha * sq(T)) + (G_size * T).sum() + float(reg(W))
        f_size = float(reg(W)) + 0.5 * rho * sq(U.abs() + W.abs() @ V_in.abs() + b.abs()[:, None])
        f_size += 0.5 * alpha * (sq(W.abs() + W_old.abs()) + sq(b.abs() + b_old.abs()))
        return tol(DT, n=size) * float(value + f_size)

    def grad_W(Wx):  # gradient of the smooth part in W, with b at its optimum for that W (b is unconstrained)
        residual = Wx @ V_in + b[:, None] - U
        return rho * residual @ V_in.T + alpha * (Wx - W_old)

    delta = rounding(W, b)
    Theta = torch.cat([W, b[:, None]], dim=1)
    grad_size = float(torch.linalg.vector_norm(G_size)) + L * float(torch.linalg.vector_norm(Theta))
    bound = fixed_point_bound(W, 0.01, L=L, delta=delta, grad_size=grad_size, size=size, steps=1)
    assert_le(fixed_point_residual(grad_W, reg.prox, W, 0.01), bound, "W: fixed point")
    # b is unconstrained: its part of FISTA's last (rejected) step is -grad_b / L, at most stall_radius long
    grad_b = rho * (W @ V_in + b[:, None] - U).sum(dim=1) + alpha * (b - b_old)
    b_bound = L * stall_radius(2 * delta, L) + tol(DT, n=size) * grad_size
    assert_le(float(torch.linalg.vector_norm(grad_b)), b_bound, "b: gradient")
    # few steps: never worse than the old value, nor than the many-step answer (FISTA's values are monotone,
    # as computed: each comparison within the rounding of the two values)
    for iters in (1, 2, 3):
        W_k, b_k = update_weights(reg, U, V_in, W_old, b_old, rho=rho, alpha=alpha, inner=InnerSolver(iters=iters))
        assert_le(f(W_k, b_k) - f(W_old, b_old), rounding(W_k, b_k) + rounding(W_old, b_old), f"{iters} steps")
        assert_le(f(W, b) - f(W_k, b_k), rounding(W, b) + rounding(W_k, b_k), f"{iters} steps: many are better")


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

    # FISTA minimises 1/2 <V, H V> - <G, V> + h(V), H = weight I + rho W^T W, G = weight target + rho W^T (U - b),
    # with step 1/L, L = the largest eigenvalue of H (written out here)
    size = sum(t.numel() for t in (target, U_next, W_next, b_next))
    L = float(torch.linalg.eigvalsh(rho * W_next.T @ W_next + weight * torch.eye(d, dtype=DT))[-1])
    G_size = weight * target.abs() + rho * W_next.abs().T @ (U_next.abs() + b_next.abs()[:, None])

    def rounding(V) -> float:
        """tol x the sizes of the terms of FISTA's value and of f at V."""
        value = 0.5 * (weight * sq(V) + rho * sq(W_next.abs() @ V.abs())) + (G_size * V.abs()).sum() + float(reg(V))
        f_size = float(reg(V)) + 0.5 * weight * sq(V.abs() + target.abs())
        f_size += 0.5 * rho * sq(U_next.abs() + W_next.abs() @ V.abs() + b_next.abs()[:, None])
        return tol(DT, n=size) * float(value + f_size)

    grad_size = float(torch.linalg.vector_norm(G_size)) + L * float(torch.linalg.vector_norm(V))
    bound = fixed_point_bound(V, 0.01, L=L, delta=rounding(V), grad_size=grad_size, size=size, steps=1)
    assert_le(fixed_point_residual(grad, reg.prox, V, 0.01), bound, "V: fixed point")
    for iters in (1, 2, 3):
        V_k = update_hidden_state(*args, rho=rho, inner=InnerSolver(iters=iters))
        assert_le(f(V_k) - f(V_old), rounding(V_k) + rounding(V_old), f"{iters} steps")
        assert_le(f(V) - f(V_k), rounding(V) + rounding(V_k), f"{iters} steps: many are better")


EXACT_LOSSES = [name for name, loss in ALL_LOSSES.items() if loss.solver == "exact"]
PROX_LINEAR_LOSSES = [name for name, loss in ALL_LOSSES.items() if loss.solver == "prox_linear"]


def output_block(loss, reg, Y, U_N, V_old, gamma, alpha):
    def F(V):
        return float(loss(V, Y)) + float(reg(V)) + 0.5 * gamma * sq(V - U_N) + 0.5 * alpha * sq(V - V_old)

    return F


def output_block_rounding(loss, reg, Y, U_N, V_old, gamma, alpha):
    """V -> tol(n = entries of the block's data) x the size of F(V)'s terms: the loss, s/2 ||(|V| + |Y|)||^2
    (what a loss's elementwise terms round), the regularizer, and each square of a difference as the square of
    the sum of the absolute values (the solver's own rounding of V, first order in a separable convex F whose
    minimiser it is, is of the same size)."""
    s = 1.0 / Y.shape[1] if getattr(loss, "reduction", "sum") == "mean" else 1.0
    size = 3 * Y.numel()

    def rounding(V) -> float:
        terms = abs(float(reg(V))) + 0.5 * gamma * sq(V.abs() + U_N.abs()) + 0.5 * alpha * sq(V.abs() + V_old.abs())
        if loss is not None:
            terms += abs(float(loss(V, Y))) + 0.5 * s * sq(V.abs() + Y.abs())
        return tol(DT, n=size) * float(terms)

    return rounding


def assert_coordinatewise_minimal(F, V: torch.Tensor, rounding) -> None:
    """F(V + step e_ij) >= F(V) for every entry and step, up to the ``rounding`` of the two values: for a separable
    convex F this is global optimality."""
    base, base_rounding = F(V), rounding(V)
    for idx in itertools.product(*(range(k) for k in V.shape)):
        for step in (1e-2, -1e-2, 1e-4, -1e-4, 1e-6, -1e-6):
            W = V.clone()
            W[idx] += step
            assert_le(base - F(W), base_rounding + rounding(W), f"{idx} {step}")


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
    rounding = output_block_rounding(loss_entry, reg_entry, Y, U_N, V_old, gamma, alpha)
    assert_le(F(got) - F(V_old), rounding(got) + rounding(V_old), "F(got) <= F(V_old)")
    assert_coordinatewise_minimal(F, got, rounding)


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

    quadratic_rounding = output_block_rounding(None, reg_entry, Y, U_N, V_old, gamma, alpha)

    def model_rounding(V) -> float:  # <g, V> rounds sum |g| |V|
        return quadratic_rounding(V) + tol(DT, n=V.numel()) * float((g.abs() * V.abs()).sum())

    assert_coordinatewise_minimal(model, got, model_rounding)
    F = output_block(loss_entry, reg_entry, Y, U_N, V_old, gamma, 0.0)  # L's own terms of the block
    rounding = output_block_rounding(loss_entry, reg_entry, Y, U_N, V_old, gamma, 0.0)
    L_R = loss_entry.lipschitz(n)
    # the inequality holds for the exact step; got is within rounding of it: first order in F's value (the
    # rounding of F) and in ||V - V_old||^2 (relative tol)
    decrease = (alpha + gamma / 2 - L_R / 2) * float(sq(got - V_old)) * (1 - tol(DT, n=Y.numel()))
    assert_le(decrease - (F(V_old) - F(got)), rounding(V_old) + rounding(got), "Theorem 2")


def test_output_alpha_theorem2_check(caplog):
    loss = next(e for e in ALL_LOSSES.values() if e.solver == "prox_linear")
    L = loss.lipschitz(10)
    gamma = L / 10  # (L - gamma)/2 > 0: small alphas fail the condition
    alpha = (L - gamma) / 4
    assert output_alpha(loss, 10, gamma=gamma, alpha=alpha, check="warn") == alpha
    assert "Theorem 2" in caplog.text
    raised = output_alpha(loss, 10, gamma=gamma, alpha=alpha, check="raise")
    assert raised == pytest.approx((L - gamma) / 2 + alpha, rel=tol(DT, n=3), abs=0)  # 3 operations on floats
    assert raised > (L - gamma) / 2
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
    size = sum(t.numel() for t in (V_in, target, V_next, W_next, b_next))

    def F_v(V):
        return (
            float(reg_entry(V))
            + 0.5 * weight * sq(V - target)
            + 0.5 * gamma * sq(V_next - sigma(W_next @ V + b_next[:, None]))
        )

    def rounding_v(V) -> float:
        """tol x the sizes of F_v's terms (sigma's argument rounded on |W| |V| + |b|)."""
        pre = W_next.abs() @ V.abs() + b_next.abs()[:, None]
        out = activation_size(sigma, W_next @ V + b_next[:, None], tol(DT, n=d) * pre / tol(DT))
        terms = float(reg_entry(V)) + 0.5 * weight * sq(V.abs() + target.abs()) + 0.5 * gamma * sq(V_next.abs() + out)
        return tol(DT, n=size) * float(terms)

    def grad_v(V):
        V = V.detach().requires_grad_(True)
        (0.5 * weight * sq(V - target) + 0.5 * gamma * sq(V_next - sigma(W_next @ V + b_next[:, None]))).backward()
        return V.grad

    def smooth_v(X):
        return 0.5 * weight * sq(X - target) + 0.5 * gamma * sq(V_next - sigma(W_next @ X + b_next[:, None]))

    def curvature(smooth_part, X) -> float:
        """The largest |eigenvalue| of the Hessian of the smooth part at X: its local Lipschitz constant."""
        hessian = torch.autograd.functional.hessian(lambda z: smooth_part(z.reshape(X.shape)), X.reshape(-1))
        return float(torch.linalg.eigvalsh(hessian).abs().max())

    # monotone as computed: each comparison within the rounding of the two values; many steps lower F by far more
    args = (sigma, reg_entry, target, weight, V_next, W_next, b_next, V_old)
    for iters in (1, 3):
        V_k = update_hidden_state_nonlinear(*args, gamma=gamma, inner=InnerSolver(iters=iters))
        assert_le(F_v(V_k) - F_v(V_old), rounding_v(V_k) + rounding_v(V_old), f"V: {iters} steps")
    V = update_hidden_state_nonlinear(*args, gamma=gamma, inner=InnerSolver(iters=3000, tol=0.0))
    assert F_v(V_old) - F_v(V) > rounding_v(V) + rounding_v(V_old)
    smooth = hasattr(sigma, "second_derivative")
    if smooth:  # backtracking proximal gradient: see fixed_point_bound
        L = curvature(smooth_v, V)
        grad_size = L * float(torch.linalg.vector_norm(V)) + float(grad_v(torch.zeros_like(V)).norm())
        bound = fixed_point_bound(V, 1e-3, L=L, delta=rounding_v(V), grad_size=grad_size, size=size, steps=4)
        assert_le(fixed_point_residual(grad_v, reg_entry.prox, V, 1e-3), bound, "V: fixed point")

    V_out, W_old, b_old = torch.tanh(rand(d, n, gen=gen)), feasible(reg_entry, rand(d, d_in, gen=gen)), rand(d, gen=gen)

    def F_w(W, b):
        value = float(reg_entry(W)) + 0.5 * gamma * sq(V_out - sigma(W @ V_in + b[:, None]))
        return value + 0.5 * alpha * (sq(W - W_old) + sq(b - b_old))

    def rounding_w(W, b) -> float:
        """tol x the sizes of F_w's terms (sigma's argument rounded on |W| |V_in| + |b|)."""
        pre = W.abs() @ V_in.abs() + b.abs()[:, None]
        out = activation_size(sigma, W @ V_in + b[:, None], tol(DT, n=d_in) * pre / tol(DT))
        terms = float(reg_entry(W)) + 0.5 * gamma * sq(V_out.abs() + out)
        terms += 0.5 * alpha * (sq(W.abs() + W_old.abs()) + sq(b.abs() + b_old.abs()))
        return tol(DT, n=size) * float(terms)

    for iters in (1, 3):
        W_k, b_k = update_weights_nonlinear(
            sigma, reg_entry, V_out, V_in, W_old, b_old, gamma=gamma, alpha=alpha, inner=InnerSolver(iters=iters)
        )
        assert_le(F_w(W_k, b_k) - F_w(W_old, b_old), rounding_w(W_k, b_k) + rounding_w(W_old, b_old), f"W: {iters}")
    W, b = update_weights_nonlinear(
        sigma, reg_entry, V_out, V_in, W_old, b_old, gamma=gamma, alpha=alpha, inner=InnerSolver(iters=3000, tol=0.0)
    )
    assert F_w(W_old, b_old) - F_w(W, b) > rounding_w(W, b) + rounding_w(W_old, b_old)

    def grad_w(Wx):
        Wx = Wx.detach().requires_grad_(True)
        value = 0.5 * gamma * sq(V_out - sigma(Wx @ V_in + b[:, None])) + 0.5 * alpha * sq(Wx - W_old)
        value.backward()
        return Wx.grad

    if smooth:  # the curvature of the smooth part in Theta = [W b], on which the solver steps

        def smooth_w(T):
            value = 0.5 * gamma * sq(V_out - sigma(T[:, :d_in] @ V_in + T[:, d_in:]))
            return value + 0.5 * alpha * (sq(T[:, :d_in] - W_old) + sq(T[:, d_in] - b_old))

        L = curvature(smooth_w, torch.cat([W, b[:, None]], dim=1))
        grad_size = L * float(torch.linalg.vector_norm(W)) + float(grad_w(torch.zeros_like(W)).norm())
        bound = fixed_point_bound(W, 1e-3, L=L, delta=rounding_w(W, b), grad_size=grad_size, size=size, steps=4)
        assert_le(fixed_point_residual(grad_w, reg_entry.prox, W, 1e-3), bound, "W: fixed point")


@pytest.mark.parametrize("rows", [1, 7, 255, 511, 512, 1100])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gram_is_the_symmetric_product(rows, dtype):
    """``linalg.gram`` equals A A^T to the product's rounding, exactly symmetric, also written into a block of a
    larger matrix and for a transposed operand."""
    gen = torch.Generator().manual_seed(rows)
    A = torch.randn(rows, 300, generator=gen, dtype=dtype)
    G = gram(A)
    eps = torch.finfo(dtype).eps
    assert torch.allclose(G, A @ A.T, rtol=0, atol=100 * eps * 300)
    assert torch.equal(G, G.T)
    big = torch.full((rows + 3, rows + 3), 7.0, dtype=dtype)
    gram(A, out=big[:rows, :rows])
    assert torch.equal(big[:rows, :rows], G) and bool((big[rows:] == 7).all()) and bool((big[:, rows:] == 7).all())
    B = torch.randn(300, rows, generator=gen, dtype=dtype)
    assert torch.allclose(gram(B.mT), B.T @ B, rtol=0, atol=100 * eps * 300)
