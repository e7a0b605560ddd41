"""Lemma 1 for every scheme and catalogue entry: each sweep lowers the objective by at least a D_k.

Every (splitting x loss x activation) combination and every regularizer (on the weights and on
the states) runs a few sweeps on a small random problem. The objective of each scheme is
written out below from Zeng et al. (2019) ((2.3) two-splitting, (2.5) three-splitting, (3.4)
ResNet) without engine code; the catalogue entries are discovered from ``conf/`` and built
as the CLI builds them, so a new YAML entry is covered without new test code.

The descent constant a (Lemma 1): every block of Algorithm 1 carries the proximal
term alpha/2 ||. - old||^2 and never raises its block objective, so a = alpha/2; Algorithms 2
and 3 give a = min(alpha, gamma)/2 (the exact V_i solve is gamma-strongly convex; the blocks
with an inexact solver carry a proximal term). A prox-linear V_N step lowers L by only
(alpha_N + gamma/2 - L_R/2) ||Delta||^2 (Theorem 2), which caps a.

Tolerances (``tests/tolerances.py``): an evaluation of the objective is off by at most tol(n = size of
the state) x its magnitude (``magnitude_of``: the same sums with absolute values, as cancellation does
not shrink rounding); so is each block's value, whether the block is solved in closed form (a backward
stable solve: the exact minimiser of a problem perturbed by as much) or by a monotone inner solver
(which compares computed values). A closed-form block's strong convexity is known to relative
tol x cond, cond = the largest block curvature / a.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bcd_cli.engine.network import MLP
from bcd_cli.engine.resnet import ResNetBCD
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.engine.two_splitting import TwoSplittingBCD
from tests.conftest import catalogue_entries
from tests.tolerances import activation_size, assert_le, assert_within, forward_pass_error, tol

DT = torch.float64
CPU = torch.device("cpu")
SWEEPS = 4
SCHEMES = {"two": TwoSplittingBCD, "three": ThreeSplittingBCD, "resnet": ResNetBCD}


LOSSES, ACTS, REGS = catalogue_entries("loss"), catalogue_entries("act"), catalogue_entries("reg")


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ problems and independent objectives


def make(scheme: str, loss, act, reg_w, reg_v, *, seed: int, gamma=1.0, rho=None, alpha=1.0, init_std=0.5, **settings):
    """A small random problem: X uniform in [0, 1], random labels, a 3-4 layer network; ``settings``: more
    BCDSettings fields (e.g. extrapolation)."""
    gen = torch.Generator().manual_seed(seed)
    n, d0, classes = 24, 6, 3
    if scheme == "resnet":
        sizes, residual = [d0, 5, 5, 5, classes], [False, True, True, False]
    else:
        sizes, residual = [d0, 7, 5, classes], [False, False, False]
    X = torch.rand(d0, n, generator=gen, dtype=DT)
    labels = torch.randint(0, classes, (n,), generator=gen)
    Y = torch.nn.functional.one_hot(labels, classes).T.to(DT)
    net = MLP.init(sizes, act, init_std=init_std, init_bias=0.1, seed=seed, dtype=DT, device=CPU, residual=residual)
    algo = SCHEMES[scheme](
        net, X, Y, loss=loss, reg_w=reg_w, reg_v=reg_v, gamma=gamma, rho=rho, alpha=alpha,
        inner_iters=30, inner_tol=1e-10, **settings,
    )  # fmt: skip
    return algo, X, Y


def sq(A: torch.Tensor) -> torch.Tensor:
    return (A * A).sum()


def objective(scheme: str, algo, X, Y) -> float:
    """(2.3), (2.5) or (3.4) written out; sigma_N = Id; layer l > 0 of a ResNet but the last is residual."""
    assert torch.equal(algo.V[0], X)
    return float(objective_of(scheme, algo, algo.net.W, algo.net.b, algo.V, getattr(algo, "U", None), Y))


def objective_of(scheme: str, algo, W, b, V, U, Y) -> torch.Tensor:
    """``objective`` at the given blocks, as a differentiable tensor."""
    N = len(W)
    act = algo.net.acts[0]
    total = algo.loss(V[N], Y) + sum(algo.reg_w(w) for w in W) + sum(algo.reg_v(v) for v in V[1:])
    for l in range(N):
        sigma = act if l < N - 1 else (lambda u: u)
        pre = W[l] @ V[l] + b[l][:, None]
        if scheme == "two":
            total = total + 0.5 * algo.gamma * sq(V[l + 1] - sigma(pre))
            continue
        skip = V[l] if (scheme == "resnet" and 0 < l < N - 1) else 0.0
        total = total + 0.5 * algo.gamma * sq(V[l + 1] - skip - sigma(U[l]))
        total = total + 0.5 * algo.rho * sq(U[l] - pre)
    return total


def magnitude_of(scheme: str, algo, W, b, V, U, Y) -> torch.Tensor:
    """The size of what is rounded in ``objective_of`` (and in each block's solve): every difference a - b
    replaced by |a| + |b|, W V + b by |W| |V| + |b|, sigma by ``activation_size``, the loss by its value plus
    s/2 ||(|V_N| + |Y|)||^2, and the proximal terms alpha/2 ||block||^2 added."""
    N, n = len(W), Y.shape[1]
    act = algo.net.acts[0]
    s = 1.0 / n if getattr(algo.loss, "reduction", "sum") == "mean" else 1.0
    total = algo.loss(V[N], Y).abs() + 0.5 * s * sq(V[N].abs() + Y.abs())
    total = total + sum(algo.reg_w(w) for w in W) + sum(algo.reg_v(v) for v in V[1:])
    for l in range(N):
        pre = W[l].abs() @ V[l].abs() + b[l].abs()[:, None]
        if scheme == "two":
            out = pre if l == N - 1 else activation_size(act, W[l] @ V[l] + b[l][:, None], pre)
            total = total + 0.5 * algo.gamma * sq(V[l + 1].abs() + out)
            continue
        skip = V[l].abs() if (scheme == "resnet" and 0 < l < N - 1) else 0.0
        out = U[l].abs() if l == N - 1 else activation_size(act, U[l], U[l].abs())
        total = total + 0.5 * algo.gamma * sq(V[l + 1].abs() + skip + out)
        total = total + 0.5 * algo.rho * sq(U[l].abs() + pre)
    blocks = [*W, *b, *V[1:]] + (list(U) if U is not None else [])
    return total + 0.5 * algo.alpha * sum(sq(t) for t in blocks)


def magnitude(scheme: str, algo, Y) -> float:
    return float(magnitude_of(scheme, algo, algo.net.W, algo.net.b, algo.V, getattr(algo, "U", None), Y))


def largest_curvature(algo) -> float:
    """An upper bound on the curvature of every block solved in closed form: the hyperparameters' sum times
    1 + n + the largest ||V_l||^2 and ||W_l||^2 (Frobenius norms bound the spectral ones)."""
    n = algo.Y.shape[1]
    hyper = 2 * algo.gamma + algo.rho + algo.alpha + 1.0 + (algo.loss.lipschitz(n) or 0.0)
    hyper += algo.reg_w.ridge + algo.reg_v.ridge
    return hyper * (1 + n + max(float(sq(v)) for v in algo.V[:-1]) + max(float(sq(w)) for w in algo.net.W))


def snapshot(algo) -> list[torch.Tensor]:
    blocks = [*algo.net.W, *algo.net.b, *algo.V[1:]] + list(getattr(algo, "U", []))
    return [t.clone() for t in blocks]


def descent_constant(scheme: str, algo) -> float:
    a = algo.alpha / 2 if scheme == "two" else min(algo.alpha, algo.gamma) / 2
    if algo.loss.solver == "prox_linear":
        a = min(a, algo.alpha_out + algo.gamma / 2 - algo.loss.lipschitz(algo.Y.shape[1]) / 2)
    return a


def check_descent(scheme: str, algo, X, Y, sweeps: int = SWEEPS) -> None:
    a = descent_constant(scheme, algo)
    assert a > 0
    size = sum(t.numel() for t in snapshot(algo))  # the longest sum is shorter: n = size bounds them all
    L_prev, scale_prev = objective(scheme, algo, X, Y), magnitude(scheme, algo, Y)
    assert L_prev < float("inf"), "the starting point must be feasible"
    for k in range(1, sweeps + 1):
        before = snapshot(algo)
        D = algo.sweep()
        after = snapshot(algo)
        L, scale = objective(scheme, algo, X, Y), magnitude(scheme, algo, Y)
        # the same differences, squared and summed in another order: `size` nonnegative terms (relative error
        # size eps; squares below the smallest normal number lose their relative accuracy, by tiny each)
        D_ref = float(sum(sq(p - q) for p, q in zip(after, before, strict=True)))
        assert_le(abs(D - D_ref), tol(DT, n=size) * D_ref + size * torch.finfo(DT).tiny, f"sweep {k}: D_k")
        # two evaluations of the objective, each within tol x its magnitude
        assert_le(abs(algo.objective()["objective"] - L), 2 * tol(DT, n=size) * scale, f"sweep {k}: objective")
        # the two values of L and every block's value are within tol x their magnitudes; a closed-form block's
        # strong convexity is known to relative tol x cond
        rounding = 2 * tol(DT, n=size) * (scale_prev + scale)
        cond = largest_curvature(algo) / a
        assert_le(L - L_prev, rounding, f"sweep {k}: L rose from {L_prev} to {L}")
        assert_le(a * D * (1 - tol(DT, n=size, cond=cond)) - (L_prev - L), rounding,
                  f"sweep {k}: ratio {(L_prev - L) / D} < a = {a}")  # fmt: skip
        L_prev, scale_prev = L, scale


# ------------------------------------------------------------------ every scheme x loss x activation

# The loss enters only the V_N block and the activation only the hidden blocks: every scheme x loss (with the
# default activation) and every scheme x activation (with the default loss) are the default tier; the rest of
# the cross product, which crosses what no block combines, is slow.
DEFAULT_LOSS, DEFAULT_ACT = "square", "relu"  # conf/train.yaml's
COMBOS = list(itertools.product(SCHEMES, LOSSES, ACTS))
PAIRS = [
    pytest.param(s, lo, a, id=f"{s}-{lo}-{a}", marks=() if lo == DEFAULT_LOSS or a == DEFAULT_ACT else pytest.mark.slow)
    for s, lo, a in COMBOS
]


@pytest.mark.parametrize("scheme, loss, act", PAIRS)
def test_descent_every_scheme_loss_activation(scheme, loss, act):
    seed = sum(map(ord, f"{scheme}{loss}{act}")) % 89
    algo, X, Y = make(scheme, LOSSES[loss], ACTS[act], REGS["none"], REGS["none"], seed=seed)
    check_descent(scheme, algo, X, Y)


# ------------------------------------------------------------------ every regularizer, on weights and on states

REG_CASES = [(s, r, where) for s in SCHEMES for r in REGS for where in ("w", "v")]


@pytest.mark.parametrize("scheme, reg, where", REG_CASES, ids=[f"{s}-{r}-on-{w}" for s, r, w in REG_CASES])
def test_descent_every_regularizer(scheme, reg, where):
    seed = sum(map(ord, f"{scheme}{reg}{where}")) % 89
    reg_w, reg_v = (REGS[reg], REGS["none"]) if where == "w" else (REGS["none"], REGS[reg])
    algo, X, Y = make(scheme, LOSSES["square"], ACTS["relu"], reg_w, reg_v, seed=seed, init_std=1.0)
    check_descent(scheme, algo, X, Y)
    if reg in ("nonneg", "box"):  # the iterates stay feasible
        for block in algo.net.W if where == "w" else algo.V[1:]:
            assert float(REGS[reg](block)) == 0.0


# ------------------------------------------------------------------ hyperparameters that stress the constants

HYPERS = [(1.0, 5.0, 0.05), (0.5, 0.2, 10.0), (10.0, 1.0, 0.5)]


@pytest.mark.parametrize("gamma, rho, alpha", HYPERS, ids=[f"g{g}-r{r}-a{a}" for g, r, a in HYPERS])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_descent_across_gamma_rho_alpha(scheme, gamma, rho, alpha):
    algo, X, Y = make(
        scheme, LOSSES["cross_entropy"], ACTS["tanh"], REGS["l1"], REGS["box"], seed=3, gamma=gamma, rho=rho,
        alpha=alpha,
    )  # fmt: skip
    check_descent(scheme, algo, X, Y)


# ------------------------------------------------------------------ the full cross product (slow)

FULL = list(itertools.product(SCHEMES, LOSSES, ACTS, REGS, REGS))


@pytest.mark.slow
@pytest.mark.parametrize("scheme, loss, act, reg_w, reg_v", FULL, ids=["-".join(c) for c in FULL])
def test_descent_full_cross_product(scheme, loss, act, reg_w, reg_v):
    seed = sum(map(ord, "".join((scheme, loss, act, reg_w, reg_v)))) % 89
    algo, X, Y = make(scheme, LOSSES[loss], ACTS[act], REGS[reg_w], REGS[reg_v], seed=seed)
    check_descent(scheme, algo, X, Y, sweeps=3)


@pytest.mark.parametrize("scheme", list(SCHEMES))
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("chunk_columns", [10**9, 5], ids=["one chunk", "5 chunks"])
def test_objective_and_gradient_norm_match_autograd_of_the_written_out_objective(
    scheme, reduction, chunk_columns, monkeypatch
):
    """The objective and ||grad L|| over all blocks, evaluated over column chunks of the samples, against
    autograd through ``objective_of`` on the whole state (n = 24; 5 chunks of at most 5 columns)."""
    from bcd_cli.catalogue.activations import ReLU
    from bcd_cli.catalogue.losses import Square
    from bcd_cli.catalogue.regularizers import L2
    from bcd_cli.engine import chunking

    monkeypatch.setattr(chunking, "EVALUATION_CHUNK_MIN_COLUMNS", chunk_columns)
    monkeypatch.setattr(chunking, "EVALUATION_CHUNKS", 5)
    algo, X, Y = make(scheme, Square(reduction=reduction), ReLU(), L2(lam=0.3), L2(lam=0.2), seed=5)
    algo.sweep()  # away from the forward-pass start, where the penalties vanish
    assert len(chunking.column_chunks(X.shape[1])) == (1 if chunk_columns > 24 else 5)
    leaves = [t.detach().clone().requires_grad_(True) for t in snapshot(algo)]
    N = algo.net.depth
    W, b, V = leaves[:N], leaves[N : 2 * N], [X, *leaves[2 * N : 3 * N]]
    U = leaves[3 * N :] if scheme != "two" else None
    total = objective_of(scheme, algo, W, b, V, U, Y)
    expected = torch.sqrt(sum(g.square().sum() for g in torch.autograd.grad(total, leaves)))
    total = total.detach()
    # rounding: tol(n = size of the state) x the magnitude of the objective, and for each gradient entry x
    # the sum of |its terms|, which the gradient of the magnitude at |blocks| bounds (ReLU: sigma' <= 1)
    size = sum(t.numel() for t in leaves)
    scale = float(magnitude_of(scheme, algo, W, b, V, U, Y).detach())
    abs_leaves = [t.detach().abs().requires_grad_(True) for t in leaves]
    aW, ab, aV = abs_leaves[:N], abs_leaves[N : 2 * N], [X, *abs_leaves[2 * N : 3 * N]]
    aU = abs_leaves[3 * N :] if scheme != "two" else None
    grads = torch.autograd.grad(magnitude_of(scheme, algo, aW, ab, aV, aU, Y), abs_leaves)
    grad_scale = float(torch.sqrt(sum(g.square().sum() for g in grads)))
    got = algo.objective(with_gradient=True)
    assert_le(abs(got["objective"] - total.item()), 2 * tol(DT, n=size) * scale, "objective")
    assert_le(abs(got["grad_norm"] - expected.item()), 2 * tol(DT, n=size) * grad_scale, "grad_norm")
    assert_le(abs(algo.objective()["objective"] - total.item()), 2 * tol(DT, n=size) * scale, "objective")


@pytest.mark.parametrize("scheme", ["three", "resnet"])
def test_network_output_over_column_chunks_is_the_forward_pass(scheme, monkeypatch):
    from bcd_cli.catalogue.activations import ReLU
    from bcd_cli.catalogue.losses import Square
    from bcd_cli.catalogue.regularizers import NoReg
    from bcd_cli.engine import chunking

    algo, X, _ = make(scheme, Square(), ReLU(), NoReg(), NoReg(), seed=6)
    whole = algo.net.forward_states(X)[1][-1]
    monkeypatch.setattr(chunking, "EVALUATION_CHUNK_MIN_COLUMNS", 5)
    monkeypatch.setattr(chunking, "EVALUATION_CHUNKS", 5)
    assert len(chunking.column_chunks(X.shape[1])) == 5
    # the same products on column slices: another blocking of the sums, so each within the pass's rounding
    net = algo.net
    assert_within(net(X), whole, 2 * forward_pass_error(net.W, net.b, X, net.residual), "chunked forward pass")


# ------------------------------------------------------------------ two-splitting's nonlinear blocks over sample chunks


def _whole_v_block(act, reg_v, target, weight, V_next, W_next, b_next, V_old, *, gamma, inner):
    """The V block of two-splitting behind a nonlinear sigma by ``inner.prox_gradient`` on the whole state."""
    from bcd_cli.engine.inner import prox_gradient, spectral_norm_squared

    def smooth(V, rejected):
        A = W_next @ V + b_next[:, None]
        return 0.5 * weight * sq(V - target) + 0.5 * gamma * sq(V_next - act(A)), A

    def gradient(V, A):
        return weight * (V - target) + gamma * W_next.T @ ((act(A) - V_next) * act.derivative(A))

    step = 1.0 / (weight + gamma * spectral_norm_squared(W_next))
    return prox_gradient(smooth, gradient, V_old, step=step, prox=reg_v.prox, penalty=reg_v, solver=inner)


def _whole_w_block(act, reg_w, V_out, V_in, W_old, b_old, *, gamma, alpha, inner):
    """The W block of two-splitting behind a nonlinear sigma by ``inner.prox_gradient`` on all samples at once."""
    from bcd_cli.engine.inner import prox_gradient, spectral_norm_squared

    d = V_in.shape[0]
    Theta_old = torch.cat([W_old, b_old[:, None]], dim=1)

    def smooth(Theta, rejected):
        A = Theta[:, :d] @ V_in + Theta[:, d:]
        return 0.5 * gamma * sq(V_out - act(A)) + 0.5 * alpha * sq(Theta - Theta_old), A

    def gradient(Theta, A):
        residual = gamma * (act(A) - V_out) * act.derivative(A)
        return alpha * (Theta - Theta_old) + residual @ torch.cat([V_in, torch.ones_like(V_in[:1])]).T

    def prox(Theta, t):
        return torch.cat([reg_w.prox(Theta[:, :d], t), Theta[:, d:]], dim=1)

    step = 1.0 / (alpha + gamma * (spectral_norm_squared(V_in) + V_in.shape[1]))
    Theta = prox_gradient(
        smooth, gradient, Theta_old, step=step, prox=prox, penalty=lambda T: reg_w(T[:, :d]), solver=inner
    )
    return Theta[:, :d], Theta[:, d]


@pytest.mark.parametrize("act", ["relu", "tanh", "softplus"])
@pytest.mark.parametrize("reg", ["none", "l1", "box"])
def test_two_splitting_blocks_over_sample_chunks_take_the_steps_of_the_whole_solver(act, reg, monkeypatch):
    """The nonlinear V and W blocks of two-splitting, evaluated over chunks of 3 samples (the V block trying
    several backtracking steps per pass, the W block stopping a rejected trial's pass early), stop at the
    iterates of ``prox_gradient`` on the whole state after each number of steps: the same steps, the same
    decisions (float64: rounding far below the gaps of the backtracking tests)."""
    from bcd_cli.engine import chunking
    from bcd_cli.engine.blocks import update_hidden_state_nonlinear, update_weights_nonlinear
    from bcd_cli.engine.inner import InnerSolver, sample_chunks

    sigma, r = ACTS[act], REGS[reg]
    gen = torch.Generator().manual_seed(11)
    d, m, p, n = 5, 6, 4, 31
    V_in, V_next = torch.randn(d, n, generator=gen, dtype=DT), torch.rand(p, n, generator=gen, dtype=DT)
    V_old = r.prox(torch.randn(m, n, generator=gen, dtype=DT), 0.0)
    target, V_out = torch.randn(m, n, generator=gen, dtype=DT), torch.rand(m, n, generator=gen, dtype=DT)
    W_next, b_next = torch.randn(p, m, generator=gen, dtype=DT), torch.randn(p, generator=gen, dtype=DT)
    W_old, b_old = r.prox(torch.randn(m, d, generator=gen, dtype=DT), 0.0), torch.randn(m, generator=gen, dtype=DT)
    monkeypatch.setattr(chunking, "CPU_CHUNK_ELEMENTS", 3 * max(m, p))
    assert len(sample_chunks(n, max(m, p), cpu=True)) == 11
    columns_made = []

    def target_columns(cols):  # as two-splitting passes it: a function of the columns
        columns_made.append(cols)
        return target[:, cols].clone()

    for iters in (1, 2, 3, 5, 8, 30):
        inner = InnerSolver(iters=iters, tol=1e-12)
        V_args = (r, target, 3.0, V_next, W_next, b_next, V_old)
        expected = _whole_v_block(sigma, *V_args, gamma=2.0, inner=inner)
        got = update_hidden_state_nonlinear(sigma, r, target_columns, *V_args[2:], gamma=2.0, inner=inner)
        assert got is not V_old and torch.equal(V_old, r.prox(V_old, 0.0))  # x0 untouched
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-11, msg=f"V block, {iters} steps")
        W_args = (r, V_out, V_in, W_old, b_old)
        W_expected = _whole_w_block(sigma, *W_args, gamma=2.0, alpha=0.5, inner=inner)
        W_got = update_weights_nonlinear(sigma, *W_args, gamma=2.0, alpha=0.5, inner=inner)
        for a, b in zip(W_got, W_expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"W block, {iters} steps")
    assert {c.stop - c.start for c in columns_made} == {3, 1}  # the target was only ever made in chunks
