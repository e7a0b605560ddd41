"""Numerical robustness of the engine: Cholesky retries with jitter, and naming the block that went non-finite.

``spd_solve`` retries a failed factorisation in float64 with a diagonal jitter (and says so), and
refuses indefinite, singular-and-inconsistent and non-finite systems with the block's name. Each
scheme's ``nonfinite_block`` names the first block, in sweep order, holding a NaN or an infinity; the
order it assumes is checked against the order in which a real sweep assigns the blocks.

Tolerances (``tests/tolerances.py``): a solve is within tol(dtype, n, cond) of the exact solution
(a float32 factor or right-hand side makes it tol(float32, ...)), and a solution rounded to float32
within eps32 of the float64 one; formatted numbers in messages are compared as the engine formats
them, from the same computation.
"""

from __future__ import annotations

import logging
import math

import pytest
import torch

from bcd_cli.catalogue.activations import ReLU
from bcd_cli.catalogue.losses import Square
from bcd_cli.catalogue.regularizers import NoReg
from bcd_cli.engine import chunking, three_splitting, two_splitting
from bcd_cli.engine.baselines import GradientBaseline
from bcd_cli.engine.linalg import JITTER_EPS_MULTIPLES, add_to_diagonal, cholesky_solve, shifted_gram_solve, spd_solve
from bcd_cli.engine.network import MLP
from bcd_cli.engine.resnet import ResNetBCD
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.engine.two_splitting import TwoSplittingBCD
from bcd_cli.errors import NumericalError
from tests.tolerances import assert_le, assert_within, eps, tol

pytestmark = pytest.mark.usefixtures("one_thread")

DT = torch.float64
LINALG_LOGGER = "bcd_cli.engine.linalg"


def relative_residual(H: torch.Tensor, X: torch.Tensor, G: torch.Tensor) -> float:
    H, X, G = H.double(), X.double(), G.double()
    return float(torch.linalg.matrix_norm(H @ X - G) / torch.linalg.matrix_norm(G))


def rotated(eigs, dtype=DT, seed: int = 0) -> torch.Tensor:
    """Q diag(eigs) Q^T with a random orthogonal Q, symmetrised."""
    Q, _ = torch.linalg.qr(torch.randn(len(eigs), len(eigs), generator=torch.Generator().manual_seed(seed), dtype=DT))
    H = Q @ torch.diag(torch.tensor(eigs, dtype=DT)) @ Q.T
    return ((H + H.T) / 2).to(dtype)


# ------------------------------------------------------------------ spd_solve: retries with jitter


def test_singular_psd_float32_is_solved_with_jitter_and_a_warning(caplog):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(50, 10, generator=gen)
    H, G = A @ A.T, A @ torch.randn(10, 4, generator=gen)  # rank 10; G in the range of H
    assert int(torch.linalg.cholesky_ex(H).info) != 0, "the test needs a matrix whose plain Cholesky fails"
    assert int(torch.linalg.cholesky_ex(H.double()).info) != 0, "and whose float64 Cholesky fails without jitter"

    with caplog.at_level(logging.WARNING, logger=LINALG_LOGGER):
        X = spd_solve(H, G, block="W3")

    assert X.dtype == torch.float32 and X.shape == G.shape and bool(torch.isfinite(X).all())
    H64, G64, I = H.double(), G.double(), torch.eye(50, dtype=DT)
    # the smallest shift that factorises: 10 eps here (another BLAS may round H differently)
    unit = torch.finfo(torch.float32).eps * float(H64.diagonal().mean())
    multiple = next(m for m in JITTER_EPS_MULTIPLES if int(torch.linalg.cholesky_ex(H64 + m * unit * I).info) == 0)
    jitter = multiple * unit
    # (H + jitter I) X = G solved in float64 (backward stable), X rounded to float32: H X - G = -jitter X plus
    # ||H|| times X's rounding
    norm_H = float(torch.linalg.matrix_norm(H64, ord=2))  # ||H E||_F <= ||H||_2 ||E||_F
    norm_X, norm_G = float(torch.linalg.matrix_norm(X.double())), float(torch.linalg.matrix_norm(G64))
    residual_bound = (jitter + (eps(torch.float32) + tol(DT, n=50)) * norm_H) * norm_X / norm_G
    assert_le(relative_residual(H, X, G), residual_bound, "relative residual")
    # on the range of H, X is the least-squares solution (off it, the jitter leaves rounding noise): the jitter
    # scales the component along an eigenvalue lambda by lambda / (lambda + jitter), relative error at most
    # jitter / lambda_10 (the smallest eigenvalue on the range); H's float32 rounding moves the range by
    # eps32 ||H|| / lambda_10 (relative to the noise in X) and X's own rounding adds eps32 ||X||
    # the least-squares solution on the range: H's 10 nonzero eigenvalues are at least lambda_10, the 40 others are
    # H's float32 rounding, sums of 10 products, at most tol(float32, n=10) ||H||; the cut-off lies between the two
    # (their geometric mean)
    eigenvalues = torch.linalg.eigvalsh(H64)
    lambda_10, noise = float(eigenvalues[-10]), tol(torch.float32, n=10) * float(eigenvalues[-1])
    assert noise < lambda_10, "the test needs H's range to stand above its rounding"
    rcond = math.sqrt(noise * lambda_10) / float(eigenvalues[-1])
    reference = torch.linalg.lstsq(H64, G64, rcond=rcond, driver="gelsd").solution
    Q = torch.linalg.svd(A.double(), full_matrices=False).U  # an orthonormal basis of the range of H
    on_range = float(torch.linalg.matrix_norm(Q.T @ reference))
    bound = jitter / lambda_10 * on_range + tol(torch.float32, n=1, cond=norm_H / lambda_10) * norm_X
    assert_le(float(torch.linalg.matrix_norm(Q.T @ (X.double() - reference))), bound, "on the range of H")
    assert [(r.name, r.levelname) for r in caplog.records] == [(LINALG_LOGGER, "WARNING")]
    assert caplog.records[0].getMessage() == (
        f"Cholesky factorisation failed in block W3 in float32; solved in float64 with diagonal jitter "
        f"{multiple * unit:.3g} ({multiple:g} eps x mean|diag H|)"
    )


@pytest.mark.parametrize("k, n", [(1, 1), (6, 1), (6, 40), (40, 6)])
@pytest.mark.parametrize("dtype, factor_dtype", [(DT, DT), (torch.float32, torch.float32), (torch.float32, DT)])
@pytest.mark.parametrize("chunk", [None, 13], ids=["one-chunk", "13-entry-chunks"])
def test_cholesky_solve_from_the_right(k, n, dtype, factor_dtype, chunk, monkeypatch):
    """X = H^-1 G against torch.linalg.solve; X keeps G's dtype and row-major layout, and G its values
    unless ``overwrite`` lets X take G's memory; a wider factor solves column chunks (here also of 1 column)."""
    if chunk:
        monkeypatch.setattr(chunking, "SOLVE_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(k + n)
    A = torch.randn(k, k, generator=gen, dtype=DT)
    H = A @ A.T + k * torch.eye(k, dtype=DT)
    G64 = torch.randn(k, n, generator=gen, dtype=DT)
    L = torch.linalg.cholesky(H.to(factor_dtype))
    # two triangular solves (2k operations per entry) and three roundings to float32 where either dtype is (the
    # factor, the right-hand side, X): a backward error of tol(that dtype, n = 2k + 3) turned into a forward one
    # by H's condition number
    eigenvalues = torch.linalg.eigvalsh(H)
    precision = DT if factor_dtype == dtype == DT else torch.float32
    exact = torch.linalg.solve(H, G64)
    bound = tol(precision, n=2 * k + 3, cond=float(eigenvalues[-1] / eigenvalues[0])) * exact.abs().max()
    for overwrite in (False, True):
        G = G64.to(dtype, copy=True)
        before = G.clone()
        X = cholesky_solve(L, G, overwrite=overwrite)
        assert X.dtype == dtype and X.shape == (k, n) and X.is_contiguous()
        assert_within(X, exact, bound, "X = H^-1 G")
        shares = X.data_ptr() == G.data_ptr()
        assert shares == overwrite
        if not shares:
            assert torch.equal(G, before)


@pytest.mark.parametrize("m, d", [(2, 9), (1, 1), (3, 4), (9, 5)], ids=["Woodbury", "1x1", "d x d", "wide W"])
@pytest.mark.parametrize("dtype, solve_dtype", [(DT, None), (torch.float32, None), (torch.float32, DT)])
@pytest.mark.parametrize("chunk", [None, 13], ids=["one-chunk", "13-entry-chunks"])
def test_shifted_gram_solve(m, d, dtype, solve_dtype, chunk, monkeypatch):
    """(shift I + scale W^T W) X = G against torch.linalg.solve, by either form; G kept unless overwritten."""
    if chunk:
        monkeypatch.setattr(chunking, "SOLVE_CHUNK_ELEMENTS", chunk)
    gen = torch.Generator().manual_seed(m * d)
    W64, G64 = torch.randn(m, d, generator=gen, dtype=DT), torch.randn(d, 7, generator=gen, dtype=DT)
    shift, scale = 0.7, 2.5
    H = add_to_diagonal(scale * W64.T @ W64, shift)
    exact = torch.linalg.solve(H, G64)
    # W, G and X rounded to dtype, sums of length m or d in the products and the two triangular solves: either
    # form is forward stable, tol(dtype, n = 2 (m + d) + 3) times H's condition number (the Woodbury form's
    # W^T K^-1 W G cancels against G, relative to ||G|| / shift <= cond ||X||)
    eigenvalues = torch.linalg.eigvalsh(H)
    bound = tol(dtype, n=2 * (m + d) + 3, cond=float(eigenvalues[-1] / eigenvalues[0])) * exact.abs().max()
    W = W64.to(dtype)
    for overwrite in (False, True):
        G = G64.to(dtype, copy=True)
        X = shifted_gram_solve(shift, scale, W, G, solve_dtype=solve_dtype, overwrite=overwrite)
        assert X.dtype == dtype and X.shape == G.shape and X.is_contiguous()
        assert_within(X, exact, bound, "X = H^-1 G")
        assert (X.data_ptr() == G.data_ptr()) == overwrite or torch.equal(G, G64.to(dtype))


def test_shifted_gram_solve_takes_the_cheaper_form(monkeypatch):
    """The m x m (Woodbury) factorisation exactly when m^2 + 2 m d < d^2."""
    sizes = []
    cholesky_ex = torch.linalg.cholesky_ex
    monkeypatch.setattr(torch.linalg, "cholesky_ex", lambda H: sizes.append(H.shape[0]) or cholesky_ex(H))
    for m, d in [(10, 1024), (400, 1000), (420, 1000), (1024, 1024)]:
        shifted_gram_solve(1.0, 1.0, torch.randn(m, d, dtype=DT) / d, torch.randn(d, 3, dtype=DT))
    assert sizes == [10, 400, 1000, 1024]


def test_float32_failure_is_retried_in_float64_without_jitter_first(caplog):
    """An SPD float64 H with condition number 1e12 factorises in float64 but not in float32."""
    H = rotated([1.0, 1e-3, 1e-6, 1e-9, 1e-12], seed=1)
    G = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=DT)
    assert int(torch.linalg.cholesky_ex(H.float()).info) != 0
    with caplog.at_level(logging.WARNING, logger=LINALG_LOGGER):
        X = spd_solve(H, G, solve_dtype=torch.float32, block="V2")
    assert X.dtype == DT
    # H itself, no shift: the same factorisation and solve of the same values, bit for bit
    assert torch.equal(X, cholesky_solve(torch.linalg.cholesky(H), G))
    assert [r.getMessage() for r in caplog.records] == [
        "Cholesky factorisation failed in block V2 in float32; solved in float64 with diagonal jitter 0 "
        "(0 eps x mean|diag H|)"
    ]


@pytest.mark.parametrize("dtype", [torch.float32, DT], ids=["float32", "float64"])
def test_indefinite_matrix_is_refused(dtype, caplog):
    H = rotated([3.0, 2.0, -1.0], dtype=dtype)
    with caplog.at_level(logging.WARNING, logger=LINALG_LOGGER), pytest.raises(NumericalError) as error:
        spd_solve(H, torch.ones(3, 2, dtype=dtype), block="V2")
    eps = torch.finfo(dtype).eps
    jitter = JITTER_EPS_MULTIPLES[-1] * eps * float(H.double().diagonal().abs().mean())
    assert str(error.value) == (
        f"Cholesky factorisation failed in block V2: the matrix is not positive definite even with jitter "
        f"{jitter:.3g} (10000 eps x mean|diag H|)"
    )
    assert caplog.records == []


def test_singular_matrix_with_a_right_hand_side_off_its_range_is_refused():
    """Any jitter factorises diag(1, 0, 0), but no X solves H X = (1, 1, 1)^T: the solve is refused, not blown up."""
    H = torch.diag(torch.tensor([1.0, 0.0, 0.0], dtype=DT))
    with pytest.raises(
        NumericalError, match=r"^Cholesky factorisation failed in block W1: .*not positive definite"
    ) as error:
        spd_solve(H, torch.ones(3, 1, dtype=DT), block="W1")
    assert str(error.value).endswith("(it factorises, but the jitter changes H X by 0.816 ||G||: H is singular)")


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
@pytest.mark.parametrize("where", [(0, 0), (2, 0), (0, 2)], ids=["diagonal", "lower", "upper"])
@pytest.mark.parametrize("dtype", [torch.float32, DT], ids=["float32", "float64"])
def test_non_finite_matrix_is_refused(value, where, dtype):
    """Also when Cholesky, which reads only the lower triangle, would succeed (a NaN above the diagonal)."""
    H = rotated([3.0, 2.0, 1.0], dtype=dtype)
    H[where] = value
    with pytest.raises(NumericalError) as error:
        spd_solve(H, torch.ones(3, 2, dtype=dtype), solve_dtype=DT, block="W2")
    assert str(error.value) == "Cholesky factorisation failed in block W2: the matrix has non-finite entries"


@pytest.mark.parametrize(
    "dtype, solve_dtype", [(DT, None), (torch.float32, DT), (torch.float32, None)], ids=["f64", "f32-in-f64", "f32"]
)
def test_well_conditioned_matrix_takes_the_plain_path(dtype, solve_dtype, caplog):
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(6, 6, generator=gen, dtype=DT)
    H, G = (A @ A.T + torch.eye(6, dtype=DT)).to(dtype), torch.randn(6, 4, generator=gen, dtype=DT).to(dtype)
    with caplog.at_level(logging.DEBUG, logger=LINALG_LOGGER):
        X = spd_solve(H, G, solve_dtype=solve_dtype, block="V1")
    d = solve_dtype or dtype
    # no retry, no warning: the same factorisation and solve of the same values, bit for bit
    assert torch.equal(X, cholesky_solve(torch.linalg.cholesky(H.to(d)), G))
    assert caplog.records == []


# ------------------------------------------------------------------ nonfinite_block: the schemes

SCHEMES = {"three": ThreeSplittingBCD, "two": TwoSplittingBCD, "resnet": ResNetBCD}
SWEEP_ORDER = {
    "three": ["V3", "U3", "W3", "V2", "U2", "W2", "V1", "U1", "W1"],
    "resnet": ["V3", "U3", "W3", "V2", "U2", "W2", "V1", "U1", "W1"],
    "two": ["V3", "W3", "V2", "W2", "V1", "W1"],
}
MODULES = {"three": three_splitting, "resnet": three_splitting, "two": two_splitting}
UPDATES = [
    "update_output_state",
    "update_preactivation",
    "update_hidden_state",
    "update_hidden_state_nonlinear",
    "update_weights",
    "update_weights_nonlinear",
]


def make(scheme: str, seed: int = 0):
    """A 3-layer network (4-5-5-3, the middle layer residual for the ResNet) on 10 random samples."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.rand(4, 10, generator=gen, dtype=DT)
    Y = torch.nn.functional.one_hot(torch.arange(10) % 3, 3).T.to(DT)
    residual = [False, True, False] if scheme == "resnet" else None
    net = MLP.init(
        [4, 5, 5, 3], ReLU(), init_std=0.5, init_bias=0.1, seed=seed, dtype=DT, device=torch.device("cpu"),
        residual=residual,
    )  # fmt: skip
    return SCHEMES[scheme](net, X, Y, loss=Square(), reg_w=NoReg(), reg_v=NoReg(), gamma=1.0, alpha=1.0)


def state_tensors(algo) -> dict[str, torch.Tensor]:
    """Every tensor of the state by its paper name (V1.., U1.., W1.., b1..), written out without engine code."""
    named = {}
    for l in range(algo.net.depth):
        named[f"V{l + 1}"], named[f"W{l + 1}"], named[f"b{l + 1}"] = algo.V[l + 1], algo.net.W[l], algo.net.b[l]
        if hasattr(algo, "U"):
            named[f"U{l + 1}"] = algo.U[l]
    return named


@pytest.mark.parametrize("scheme", SCHEMES)
def test_fresh_state_is_finite_and_the_order_is_the_sweep_order(scheme):
    algo = make(scheme)
    assert algo.nonfinite_block() is None
    assert [name for name, _ in algo.update_order()] == SWEEP_ORDER[scheme]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_declared_order_is_the_order_a_sweep_assigns_the_blocks(scheme, monkeypatch):
    """Every block-update function is wrapped to record what it returns; after the sweep each returned
    tensor is found in the state, which gives the order in which the sweep assigned the blocks."""
    algo = make(scheme)
    module = MODULES[scheme]
    returned: list[torch.Tensor] = []

    def recording(update):
        def wrapper(*args, **kwargs):
            result = update(*args, **kwargs)
            returned.append(result[0] if isinstance(result, tuple) else result)  # (W, b): W stands for the block
            return result

        return wrapper

    for name in UPDATES:
        if hasattr(module, name):
            monkeypatch.setattr(module, name, recording(getattr(module, name)))
    algo.sweep()
    where = {id(t): name for name, t in state_tensors(algo).items() if not name.startswith("b")}
    assert [where[id(t)] for t in returned] == SWEEP_ORDER[scheme]


def poison(algo, name: str, value: float) -> None:
    """Replaces one state tensor (V3, U3, W3, b3, ...) by a copy holding ``value`` in one entry.

    A copy, not an in-place write: at the start V_N and U_N are one tensor (sigma_N is the identity).
    """
    lists = {"V": (algo.V, 0), "U": (getattr(algo, "U", None), -1), "W": (algo.net.W, -1), "b": (algo.net.b, -1)}
    tensors, offset = lists[name[0]]
    index = int(name[1:]) + offset
    tensors[index] = tensors[index].clone()
    tensors[index].view(-1)[0] = value


POISON_CASES = [(s, k) for s in SCHEMES for k in range(len(SWEEP_ORDER[s]))]


@pytest.mark.parametrize("scheme, k", POISON_CASES, ids=[f"{s}-{SWEEP_ORDER[s][k]}" for s, k in POISON_CASES])
def test_the_earliest_poisoned_block_in_sweep_order_is_named(scheme, k):
    """Block k is poisoned (a W block through its bias when k is odd), and then also the last block in order."""
    algo = make(scheme)
    name = SWEEP_ORDER[scheme][k]
    poison(algo, name.replace("W", "b") if (name.startswith("W") and k % 2) else name, math.nan if k % 3 else math.inf)
    assert algo.nonfinite_block() == name
    poison(algo, "W1", math.nan)  # W1 is the last block every sweep updates
    assert algo.nonfinite_block() == name


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_nan_label_makes_the_output_block_the_first_bad_one(scheme):
    """A NaN in Y spreads from V_N through the sweep until a Cholesky meets it (block V2); V3 is named."""
    algo = make(scheme)
    algo.Y[0, 0] = math.nan
    with pytest.raises(NumericalError, match=r"^Cholesky factorisation failed in block V2: the matrix has non-finite"):
        algo.sweep()
    assert bool(algo.V[3][0, 0].isnan()) and bool(torch.isfinite(algo.V[3][1:]).all())
    assert algo.nonfinite_block() == "V3"


@pytest.mark.parametrize("scheme", ["three", "resnet"])
def test_a_nan_from_one_update_is_traced_to_its_block(scheme, monkeypatch):
    """The second U update of a sweep (U2 of a 3-layer network) returns NaN: W2 inherits it, V1's
    Cholesky refuses it, and ``nonfinite_block`` names U2, not a later block."""
    algo = make(scheme)
    original = three_splitting.update_preactivation
    calls = []

    def second_call_is_nan(*args, **kwargs):
        calls.append(1)
        result = original(*args, **kwargs)
        return torch.full_like(result, math.nan) if len(calls) == 2 else result

    monkeypatch.setattr(three_splitting, "update_preactivation", second_call_is_nan)
    with pytest.raises(NumericalError, match=r"^Cholesky factorisation failed in block V1: the matrix has non-finite"):
        algo.sweep()
    assert len(calls) == 2
    assert bool(algo.U[1].isnan().all()) and bool(algo.net.W[1].isnan().all())
    assert all(bool(torch.isfinite(t).all()) for t in (algo.V[3], algo.U[2], algo.net.W[2], algo.V[2]))
    assert algo.nonfinite_block() == "U2"


# ------------------------------------------------------------------ nonfinite_block: the gradient baseline


def make_baseline(optimizer: str = "sgd") -> GradientBaseline:
    gen = torch.Generator().manual_seed(4)
    net = MLP.init([5, 4, 4, 3], ReLU(), init_std=0.5, init_bias=0.1, seed=4, dtype=DT, device=torch.device("cpu"))
    X = torch.rand(5, 9, generator=gen, dtype=DT)
    Y = torch.nn.functional.one_hot(torch.arange(9) % 3, 3).T.to(DT)
    return GradientBaseline(net, X, Y, loss=Square(), reg_w=NoReg(), optimizer=optimizer, lr=0.01, batch_size=4)


@pytest.mark.parametrize(
    "poisoned, expected",
    [(["W3"], "W3"), (["b2"], "W2"), (["W3", "b2"], "W2"), (["b1", "W3", "W2"], "W1"), ([], None)],
)
def test_baseline_names_the_first_layer_holding_a_nan(poisoned, expected):
    baseline = make_baseline()
    with torch.no_grad():
        for name in poisoned:
            params = baseline.W if name.startswith("W") else baseline.b
            params[int(name[1:]) - 1].view(-1)[-1] = math.nan
    assert baseline.nonfinite_block() == expected


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_baseline_epoch_on_a_nan_sample_poisons_the_first_layer(optimizer):
    baseline = make_baseline(optimizer)
    baseline.sweep()
    assert baseline.nonfinite_block() is None
    baseline.X[0, 0] = math.nan
    baseline.sweep()
    assert baseline.nonfinite_block() == "W1"
