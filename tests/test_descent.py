"""Lemma 1 of Zeng et al. (ICML 2019) on small random problems: sufficient descent of ThreeSplittingBCD.

One sweep of Algorithm 2 minimises L(W, b, V, U) (objective (2.5), written out
independently below) block by block. Each block step decreases L by at least
c_block ||block_new - block_old||^2 (F = the block objective, F_a = F + alpha/2 ||. - old||^2
when the block has a proximal term; F_a(old) = L(old), F_a(new) = L(new) + alpha/2 ||Delta||^2,
and F_a(old) - F_a(new) >= mu/2 ||Delta||^2 when F_a is mu-strongly convex):

    block   proximal?  strong convexity of F_a        decrease constant c_block
    V_N     alpha      >= gamma + alpha (loss convex)  alpha + gamma/2   (more with the loss's curvature)
    U_N     none       gamma + rho                     (gamma + rho)/2
    W, b    alpha      >= alpha                        alpha
    V_i     none       >= gamma                        gamma/2
    U_i     alpha      none in general (ReLU)          alpha/2           (F_a(new) <= F_a(old) only)

so L(P^(k-1)) - L(P^k) >= a D_k with a = min over the blocks = min(alpha, gamma)/2
(rho > 0 makes (gamma + rho)/2 > gamma/2). This is the descent constant of Lemma 1. The two
smallest block constants cannot be improved in general: gamma/2 is exact for a V_i block
whose W_next is 0, and alpha/2 for a ReLU U_i element whose old value already minimises
F_a while the solver returns another (tied) minimiser.

Also checked: D_k returned by ``sweep()`` is the squared distance between snapshots of all
blocks; the engine's ``objective()`` agrees with the independent L; predictions come from
the network's forward pass (W and b only); runs are bit-reproducible.

Tolerances (``tests/tolerances.py``): every evaluation of L is off by at most
tol(n = size of the state) x its magnitude (``magnitude``: the same sums with absolute values, as
cancellation does not shrink rounding), and so is every block solved in closed form, whose computed
minimiser is the exact one of a problem perturbed by as much (Cholesky and the elementwise proxes are
backward stable). The strong convexity behind a block's constant moves by tol x its curvature, relative
tol x cond with cond = the largest block curvature / a.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from bcd_cli.catalogue.activations import Linear, ReLU
from bcd_cli.catalogue.losses import Square
from bcd_cli.catalogue.regularizers import L2, NoReg
from bcd_cli.engine.network import MLP
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from tests.tolerances import assert_le, assert_within, forward_pass_error, tol

DT = torch.float64
CPU = torch.device("cpu")
SWEEPS = 10
LAM = 0.05
ACTS = {"relu": (ReLU(), torch.relu), "linear": (Linear(), lambda u: u)}
REGS = {"none": (NoReg(), 0.0), "l2": (L2(lam=LAM), LAM)}
# (gamma, rho, alpha, reduction)
HYPERS = [
    pytest.param(1.0, 1.0, 1.0, "sum", id="g1-r1-a1-sum"),
    pytest.param(1.0, 5.0, 0.05, "sum", id="g1-r5-a0.05-sum"),
    pytest.param(0.5, 0.2, 10.0, "sum", id="g0.5-r0.2-a10-sum"),
    pytest.param(10.0, 1.0, 0.5, "mean", id="g10-r1-a0.5-mean"),
]


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------ problem and independent objective


def make_problem(seed: int, sizes: list[int], n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X uniform in [0, 1] (d0 x n), labels uniform, Y one-hot (classes x n)."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(sizes[0], n, generator=gen, dtype=DT)
    labels = torch.randint(0, sizes[-1], (n,), generator=gen)
    Y = torch.nn.functional.one_hot(labels, sizes[-1]).T.to(DT)
    return X, Y, labels


def sizes_for(seed: int) -> tuple[list[int], int]:
    """2-4 layers of widths 3-12, n in 30-80, drawn from the seed."""
    gen = torch.Generator().manual_seed(1000 + seed)
    depth = int(torch.randint(2, 5, (1,), generator=gen))
    widths = torch.randint(3, 13, (depth + 1,), generator=gen).tolist()
    n = int(torch.randint(30, 81, (1,), generator=gen))
    return widths, n


def build(act_name, reg_w_name, reg_v_name, gamma, rho, alpha, reduction, init_std, seed):
    sizes, n = sizes_for(seed)
    X, Y, labels = make_problem(seed, sizes, n)
    net = MLP.init(sizes, ACTS[act_name][0], init_std=init_std, init_bias=0.1, seed=seed, dtype=DT, device=CPU)
    algo = ThreeSplittingBCD(
        net, X, Y, loss=Square(reduction), reg_w=REGS[reg_w_name][0], reg_v=REGS[reg_v_name][0],
        gamma=gamma, alpha=alpha, rho=rho,
    )  # fmt: skip
    return algo, X, Y, labels


def sqn(A: torch.Tensor) -> float:
    return float((A * A).sum())


def objective(algo, X, Y, sigma, lam_w, lam_v, reduction) -> float:
    """L(W, b, V, U) of (2.5), written out.

    loss + regularizers + gamma/2 sum ||V_{l+1} - sigma_l(U_l)||^2 + rho/2 sum ||U_l - W_l V_l - b_l||^2.
    """
    W, b, V, U = algo.net.W, algo.net.b, algo.V, algo.U
    N, n = len(W), X.shape[1]
    assert torch.equal(V[0], X)
    s = 1.0 if reduction == "sum" else 1.0 / n
    total = 0.5 * s * sqn(V[N] - Y)
    total += 0.5 * lam_w * sum(sqn(w) for w in W) + 0.5 * lam_v * sum(sqn(v) for v in V[1:])
    for l in range(N):
        act = sigma if l < N - 1 else (lambda u: u)
        total += 0.5 * algo.gamma * sqn(V[l + 1] - act(U[l]))
        total += 0.5 * algo.rho * sqn(U[l] - W[l] @ V[l] - b[l][:, None])
    return total


def magnitude(algo, X, Y, sigma, lam_w, lam_v, reduction) -> float:
    """The size of what is rounded in evaluating L (and in each block's solve): ``objective`` with every
    difference a - b replaced by |a| + |b|, W V + b by |W| |V| + |b|, and the proximal terms alpha/2 ||block||^2
    (of the blocks that carry one) added."""
    W, b, V, U = algo.net.W, algo.net.b, algo.V, algo.U
    N, n = len(W), X.shape[1]
    s = 1.0 if reduction == "sum" else 1.0 / n
    total = 0.5 * s * sqn(V[N].abs() + Y.abs())
    total += 0.5 * lam_w * sum(sqn(w) for w in W) + 0.5 * lam_v * sum(sqn(v) for v in V[1:])
    for l in range(N):
        act = sigma if l < N - 1 else (lambda u: u)
        total += 0.5 * algo.gamma * sqn(V[l + 1].abs() + act(U[l]).abs())
        total += 0.5 * algo.rho * sqn(U[l].abs() + W[l].abs() @ V[l].abs() + b[l].abs()[:, None])
    return total + 0.5 * algo.alpha * sum(sqn(t) for t in snapshot(algo))


def largest_curvature(algo, lam_w, lam_v, reduction) -> float:
    """An upper bound on the curvature (largest Hessian eigenvalue) of every block of Algorithm 2: V_N
    s + gamma + alpha + lam_v, U gamma + rho + alpha, W rho ||[V; 1]||^2 + alpha + lam_w, V_i
    gamma + rho ||W_next||^2 + lam_v (Frobenius norms bound the spectral ones; sigma' <= 1)."""
    n = algo.V[0].shape[1]
    s = 1.0 if reduction == "sum" else 1.0 / n
    g, r, a = algo.gamma, algo.rho, algo.alpha
    V_sq = max(sqn(v) for v in algo.V[:-1]) + n
    W_sq = max(sqn(w) for w in algo.net.W)
    return max(s + g + a + lam_v, g + r + a, r * V_sq + a + lam_w, g + r * W_sq + lam_v)


def snapshot(algo) -> list[torch.Tensor]:
    """Copies of every block: W, b, V[1:], U."""
    return [t.clone() for t in (*algo.net.W, *algo.net.b, *algo.V[1:], *algo.U)]


# ------------------------------------------------------------------ Lemma 1


CASES = list(itertools.product(ACTS, REGS, REGS))


@pytest.mark.parametrize("init_std", [0.01, 1.0], ids=lambda s: f"std={s}")
@pytest.mark.parametrize("gamma, rho, alpha, reduction", HYPERS)
@pytest.mark.parametrize("act, reg_w, reg_v", CASES, ids=[f"{a}-w{w}-v{v}" for a, w, v in CASES])
def test_sufficient_descent(act, reg_w, reg_v, gamma, rho, alpha, reduction, init_std):
    seed = sum(map(ord, f"{act}{reg_w}{reg_v}{gamma}{init_std}")) % 97  # varies the problem, deterministically
    algo, X, Y, _ = build(act, reg_w, reg_v, gamma, rho, alpha, reduction, init_std, seed)
    sigma, lam_w, lam_v = ACTS[act][1], REGS[reg_w][1], REGS[reg_v][1]
    a = min(alpha, gamma) / 2
    size = sum(t.numel() for t in snapshot(algo))  # the longest sum is shorter: n = size bounds them all

    L_prev = objective(algo, X, Y, sigma, lam_w, lam_v, reduction)
    scale_prev = magnitude(algo, X, Y, sigma, lam_w, lam_v, reduction)
    for k in range(1, SWEEPS + 1):
        before = snapshot(algo)
        D = algo.sweep()
        after = snapshot(algo)
        L = objective(algo, X, Y, sigma, lam_w, lam_v, reduction)
        scale = magnitude(algo, X, Y, sigma, lam_w, lam_v, reduction)

        # D_k is the squared distance over all blocks: the same differences, squared and added up in another
        # order (a sum of `size` nonnegative terms: relative error size eps; squares below the smallest normal
        # number lose their relative accuracy, by tiny each)
        D_ref = sum(sqn(p - q) for p, q in zip(after, before, strict=True))
        assert_le(abs(D - D_ref), tol(DT, n=size) * D_ref + size * torch.finfo(DT).tiny, f"sweep {k}: D_k")
        # the engine's objective is (2.5): two evaluations, each within tol x its magnitude
        assert_le(abs(algo.objective()["objective"] - L), 2 * tol(DT, n=size) * scale, f"sweep {k}: objective")

        # monotone, and Lemma 1 with a = min(alpha, gamma)/2, up to the rounding of the two values of L and of
        # the blocks' solves (each within tol x the magnitudes); a block's strong convexity is known to
        # relative tol x cond (its computed Hessian), cond = largest curvature / a
        rounding = 2 * tol(DT, n=size) * (scale_prev + scale)
        cond = largest_curvature(algo, lam_w, lam_v, reduction) / a
        assert_le(L - L_prev, rounding, f"sweep {k}: L rose from {L_prev} to {L}")
        assert_le(a * D * (1 - tol(DT, n=size, cond=cond)) - (L_prev - L), rounding,
                  f"sweep {k}: ratio {(L_prev - L) / D} < a = {a}")  # fmt: skip
        L_prev, scale_prev = L, scale


# ------------------------------------------------------------------ predictions, rho default, reproducibility


def forward(W, b, sigma, X):
    """sigma_N(W_N ... sigma(W_1 X + b_1) ... + b_N), sigma_N = Id, written out."""
    for l in range(len(W)):
        X = W[l] @ X + b[l][:, None]
        if l < len(W) - 1:
            X = sigma(X)
    return X


def test_predictions_come_from_the_forward_pass():
    algo, X, Y, labels = build("relu", "none", "none", 1.0, 1.0, 1.0, "sum", 1.0, seed=5)
    net = algo.net
    out0 = forward(net.W, net.b, torch.relu, X)
    for _ in range(3):
        algo.sweep()
    out = forward(net.W, net.b, torch.relu, X)
    # the network's pass (addmm) and the written-out one (matmul, then add) round differently: each is
    # within forward_pass_error of the exact output, so they differ by at most twice that
    bound = 2 * forward_pass_error(net.W, net.b, X)
    assert bool(((out - out0).abs() > bound).any())  # the sweep moved the network itself, by more than rounding
    pred = net(X)
    assert_within(pred, out, bound, "net(X) is the forward pass")
    # the predicted classes agree wherever rounding cannot swap the top two outputs (margin > 2 x bound)
    top2 = out.topk(2, dim=0)
    decided = top2.values[0] - top2.values[1] > 2 * bound.max(dim=0).values
    assert int(decided.sum()) >= 0.9 * X.shape[1]
    correct = pred.argmax(dim=0) == labels
    assert torch.equal(correct[decided], (top2.indices[0] == labels)[decided])
    acc = correct.double().mean().item()
    assert net.accuracy(X, labels) == acc < 1.0  # the same pass as pred: bit for bit

    # V_N (and every U, V) is not used: replacing V_N by the labels, which would score 1.0, changes nothing
    # (the same pass on the same W, b and X: bit for bit)
    algo.V[-1] = Y.clone()
    for U in algo.U:
        U.mul_(-3.0)
    assert net.accuracy(X, labels) == acc
    assert torch.equal(net(X), pred)


def test_rho_defaults_to_gamma():
    runs = []
    for rho in (None, 0.7):
        algo, *_ = build("relu", "l2", "none", 0.7, rho, 0.3, "sum", 1.0, seed=6)
        assert algo.rho == 0.7
        runs.append([algo.sweep() for _ in range(3)])
    assert runs[0] == runs[1]  # the same computation on the same inputs: bit for bit


def run(seed: int) -> tuple[list, list, list[torch.Tensor]]:
    algo, *_ = build("relu", "l2", "l2", 1.0, 2.0, 0.5, "sum", 1.0, seed=seed)
    objectives, distances = [algo.objective()], []
    for _ in range(5):
        distances.append(algo.sweep())
        objectives.append(algo.objective())
    return objectives, distances, snapshot(algo)


def test_bit_reproducible():
    obj1, dist1, state1 = run(seed=8)
    obj2, dist2, state2 = run(seed=8)
    assert obj1 == obj2 and dist1 == dist2  # exact float equality
    assert all(torch.equal(p, q) for p, q in zip(state1, state2, strict=True))
    obj3, _, _ = run(seed=9)
    assert obj3[-1]["objective"] != obj1[-1]["objective"]  # the seed matters
