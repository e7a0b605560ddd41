"""The safeguarded extrapolation of ``trainer=bcd_accelerated`` (``engine/acceleration.py``, docs/math.md §4.4).

Checked on small random problems of every scheme it applies to (two-splitting, three-splitting, ResNet),
with the objectives written out independently in ``tests/test_schemes.py``:

- every sweep lowers the objective by at least min(a, c)/2 D_k (a: Lemma 1's constant, c: the margin);
- an accepted extrapolated point Q^k = P^k + beta_k (P^k - P^(k-1)) keeps L(Q^k) <= L(P^k) - c ||Q^k - P^k||^2,
  and the sweep then is the scheme's own sweep from Q^k, bit for bit;
- a point the safeguard must reject (a margin no point meets, or a previous point thrown far away) leaves
  the run exactly the plain scheme's;
- the state, the previous point included, resumes bit-identically, in process and through the CLI.

Plain BCD (no extrapolation) is held to its float64 objective curve recorded before the acceleration existed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcd_cli.engine.acceleration import Extrapolation
from tests.conftest import TINY, compose_config
from tests.test_schemes import ACTS, LOSSES, REGS, descent_constant, magnitude, make, objective, snapshot
from tests.tolerances import assert_le, tol

DT = torch.float64
SCHEMES = ["two", "three", "resnet"]
BETA = 0.95
RECORDED = Path(__file__).parent / "data" / "plain_float64" / "metrics.csv"

pytestmark = pytest.mark.usefixtures("one_thread")


def accelerated(scheme: str, *, seed: int, safeguard: float = 1e-4, act: str = "relu", loss: str = "square"):
    return make(scheme, LOSSES[loss], ACTS[act], REGS["none"], REGS["none"], seed=seed, extrapolation=BETA,
                safeguard=safeguard)  # fmt: skip


def plain(scheme: str, *, seed: int, act: str = "relu", loss: str = "square"):
    return make(scheme, LOSSES[loss], ACTS[act], REGS["none"], REGS["none"], seed=seed)


def sqn(A: torch.Tensor) -> float:
    return float(A.double().square().sum())


def distance(A: list[torch.Tensor], B: list[torch.Tensor]) -> float:
    return sum(sqn(a - b) for a, b in zip(A, B, strict=True))


def same(A: list[torch.Tensor], B: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(A, B, strict=True))


CASES = [(s, act, loss) for s in SCHEMES for act, loss in (("relu", "square"), ("tanh", "cross_entropy"))]


@pytest.mark.parametrize("scheme, act, loss", CASES, ids=[f"{s}-{a}-{lo}" for s, a, lo in CASES])
def test_every_sweep_descends_by_the_safeguarded_margin(scheme, act, loss):
    """L(P^(k-1)) - L(P^k) >= min(a, c)/2 D_k at every sweep, D_k the whole move (extrapolation and sweep);
    some sweeps must have been extrapolated, or the check says nothing about the acceleration."""
    algo, X, Y = accelerated(scheme, seed=7, act=act, loss=loss)
    assert algo.extrapolation is not None
    a = descent_constant(scheme, algo)
    bound = min(a, algo.extrapolation.margin) / 2
    size = sum(t.numel() for t in snapshot(algo))
    L_prev, scale_prev = objective(scheme, algo, X, Y), magnitude(scheme, algo, Y)
    betas = []
    for k in range(1, 16):
        before = snapshot(algo)
        D = algo.sweep()
        betas.append(algo.last_sweep()["extrapolation"])
        assert_le(abs(D - distance(snapshot(algo), before)), tol(DT, n=size) * D, f"sweep {k}: D_k")
        L, scale = objective(scheme, algo, X, Y), magnitude(scheme, algo, Y)
        rounding = 4 * tol(DT, n=size) * (scale_prev + scale)
        assert_le(L - L_prev, rounding, f"sweep {k}: L rose from {L_prev} to {L}")
        assert_le(bound * D - (L_prev - L), rounding, f"sweep {k}: ratio {(L_prev - L) / D} < {bound}")
        L_prev, scale_prev = L, scale
    assert sum(b > 0 for b in betas) >= 3, betas


@pytest.mark.parametrize("scheme", SCHEMES)
def test_an_accepted_point_passes_the_safeguard_and_the_sweep_starts_from_it(scheme):
    algo, X, Y = accelerated(scheme, seed=3)
    reference, _, _ = plain(scheme, seed=3)
    for _ in range(2):
        algo.sweep()
    checked = 0
    for _ in range(6):
        here, previous = snapshot(algo), [t.clone() for t in algo.extrapolation.previous]
        beta, _ = algo.extrapolation.next_beta()
        Q = [torch.mul(p, -beta).add(x, alpha=1 + beta) for x, p in zip(here, previous, strict=True)]  # (1+b)x - b p
        D = algo.sweep()
        if algo.last_sweep()["extrapolation"] == 0:
            continue
        checked += 1
        assert {k: algo.last_sweep()[k] for k in ("extrapolation", "rejected")} == {
            "extrapolation": beta,
            "rejected": 0.0,
        }
        reference._set_blocks([q.clone() for q in Q])
        L_here = objective(scheme, _moved(scheme, here), X, Y)
        L_Q = objective(scheme, reference, X, Y)
        assert L_Q <= L_here - algo.extrapolation.margin * distance(Q, here) * (1 - 1e-9)
        reference.sweep()  # the plain scheme's sweep from Q
        assert same(snapshot(algo), snapshot(reference))
        assert D == pytest.approx(distance(snapshot(algo), here), rel=1e-12)
    assert checked >= 2


def _moved(scheme: str, blocks: list[torch.Tensor]):
    """The plain scheme of the accepted-point test's problem, moved to ``blocks``."""
    other, _, _ = plain(scheme, seed=3)
    other._set_blocks([t.clone() for t in blocks])
    return other


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_margin_no_point_meets_gives_exactly_the_plain_run(scheme):
    """With c = 1e30 every extrapolated point is rejected: the run is the plain scheme's, bit for bit, and
    metrics.csv's ``rejected`` marks the sweeps where one was proposed (every other one, as beta restarts)."""
    algo, _, _ = accelerated(scheme, seed=11, safeguard=1e30)
    reference, _, _ = plain(scheme, seed=11)
    rejected = []
    for _ in range(8):
        assert algo.sweep() == pytest.approx(reference.sweep(), rel=1e-12)
        assert same(snapshot(algo), snapshot(reference))
        record = algo.last_sweep()
        assert record["extrapolation"] == 0.0
        rejected.append(record["rejected"])
    assert rejected == [0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]


@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_previous_point_thrown_far_away_is_rejected_and_the_sweep_is_plain(scheme):
    """A previous point 1e3 away makes Q^k a point of huge objective: the safeguard must reject it, the sweep
    starts from P^k (the plain sweep from there, bit for bit), and the weights restart."""
    algo, _, _ = accelerated(scheme, seed=5)
    reference, _, _ = plain(scheme, seed=5)
    for _ in range(3):
        algo.sweep()
    gen = torch.Generator().manual_seed(0)
    far = [x + 1e3 * torch.randn(x.shape, generator=gen, dtype=DT) for x in snapshot(algo)]
    algo.extrapolation.previous, algo.extrapolation.t = far, 3.0  # beta_k > 0 at the next sweep
    reference._set_blocks([t.clone() for t in snapshot(algo)])
    algo.sweep()
    reference.sweep()
    assert {k: algo.last_sweep()[k] for k in ("extrapolation", "rejected")} == {"extrapolation": 0.0, "rejected": 1.0}
    assert algo.extrapolation.t == 1.0
    assert same(snapshot(algo), snapshot(reference))


@pytest.mark.parametrize("scheme", SCHEMES)
def test_the_state_with_its_previous_point_resumes_bit_identically(scheme):
    """Sweeps with an evaluation after each (as the run loop does: the safeguard compares against the value it
    found), a state_dict after sweep 4, a new scheme loading it: sweeps 5-9 are those of the run never stopped."""
    algo, X, Y = accelerated(scheme, seed=2)
    for _ in range(4):
        algo.sweep()
        algo.objective()
    state = algo.state_dict()
    assert state["extrapolation"]["previous"] is not None
    resumed, _, _ = accelerated(scheme, seed=2)
    resumed.load_state_dict(state)
    for _ in range(5):
        assert algo.sweep() == resumed.sweep()
        assert algo.last_sweep() == resumed.last_sweep()
        assert algo.objective() == resumed.objective()
    assert same(snapshot(algo), snapshot(resumed))


def test_a_plain_state_does_not_load_into_an_accelerated_scheme():
    algo, _, _ = plain("three", seed=2)
    accelerated_algo, _, _ = accelerated("three", seed=2)
    with pytest.raises(ValueError, match="extrapolation"):
        accelerated_algo.load_state_dict(algo.state_dict())


def test_nesterov_weights_grow_to_the_bound_and_restart():
    ex = Extrapolation(beta_max=0.5, margin=1.0)
    betas = []
    for _ in range(8):
        beta, ex.t = ex.next_beta()
        betas.append(beta)
    assert betas[0] == 0.0 and all(b2 >= b1 for b1, b2 in zip(betas, betas[1:], strict=False))
    assert max(betas) == 0.5 and betas[1] == pytest.approx((1.618033988749895 - 1) / 2.193527085331054)
    ex.t = 1.0  # what a rejection sets
    assert ex.next_beta()[0] == 0.0


def test_the_accelerated_cli_run_records_its_weights_and_rejections(tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, "trainer=bcd_accelerated", "epochs=8", "hydra.run.dir=acc", cwd=tmp_path)
    assert code == 0, stderr
    metrics = pd.read_csv(tmp_path / "acc" / "metrics.csv")
    assert math.isnan(metrics["extrapolation"][0]) and math.isnan(metrics["rejected"][0])
    assert (metrics["extrapolation"][1:] >= 0).all() and (metrics["extrapolation"][1:] < 1).all()
    assert set(metrics["rejected"][1:]) <= {0.0, 1.0}
    assert (metrics["extrapolation"][1:] > 0).any()
    assert (metrics["objective"].diff()[1:] <= 1e-6 * metrics["objective"][:-1].to_numpy()).all()
    assert (metrics["descent_ratio"][1:] > 0).all()
    summary = json.loads((tmp_path / "acc" / "summary.json").read_text())
    assert summary["extrapolated_sweeps"] == int((metrics["extrapolation"] > 0).sum())
    assert summary["rejected_sweeps"] == int((metrics["rejected"] == 1).sum())


def test_an_accelerated_run_extended_by_resume_is_the_longer_run(tmp_path: Path, bcd_train):
    """The checkpoint holds the previous point and the safeguard's reference value: resume=DIR epochs=8 of a
    6-sweep run ends exactly as the 8-sweep run."""
    args = [*TINY, "trainer=bcd_accelerated"]
    assert bcd_train(*args, "epochs=6", "hydra.run.dir=short", cwd=tmp_path)[0] == 0
    assert bcd_train(*args, "epochs=8", "hydra.run.dir=long", cwd=tmp_path)[0] == 0
    code, stderr = bcd_train("resume=short", "epochs=8", cwd=tmp_path)
    assert code == 0, stderr
    columns = ["objective", "D", "test_acc", "extrapolation", "rejected"]
    short, long = (pd.read_csv(tmp_path / d / "metrics.csv")[columns] for d in ("short", "long"))
    pd.testing.assert_frame_equal(short, long, check_exact=True)


def test_plain_bcd_is_the_recorded_float64_curve(tmp_path: Path):
    """Plain Algorithm 2 on digits (64-256-256-10, the paper's N(0, 0.01^2) weights, float64, 12 sweeps) against
    the curve recorded before the acceleration existed: the same objective, parts, D and accuracies. On the
    recording machine the values are equal bit for bit; other CPUs' kernels round differently, hence 1e-9, relative
    to the objective each part adds up to (a penalty that is exactly 0 at the initial point on one machine is a
    rounding error of U - W V - b on another)."""
    from bcd_cli.run.train import run

    cfg = compose_config("device=cpu", "dtype=float64", "epochs=12", "model.init=normal", "model.init_std=0.01")
    assert cfg.trainer.extrapolation == 0.0
    metrics = run(cfg, tmp_path).metrics
    recorded = pd.read_csv(RECORDED)
    scale = float(recorded["objective"].abs().max())
    for column in ["objective", "loss", "penalty_v", "penalty_u", "D", "train_loss"]:
        torch.testing.assert_close(
            torch.tensor(metrics[column].to_numpy()), torch.tensor(recorded[column].to_numpy()), rtol=1e-9,
            atol=1e-9 * scale, equal_nan=True, msg=column,
        )  # fmt: skip
    assert (metrics["test_acc"] == recorded["test_acc"]).all()
    assert (metrics["extrapolation"][1:] == 0).all() and (metrics["rejected"][1:] == 0).all()


@pytest.mark.parametrize(
    "override, expected",
    [
        ("trainer.extrapolation=1.0", ["trainer.extrapolation", "[0, 1)"]),
        ("trainer.extrapolation=-0.1", ["trainer.extrapolation", "[0, 1)"]),
        ("trainer.safeguard=0", ["trainer.safeguard", "> 0"]),
    ],
)
def test_bad_extrapolation_settings_are_refused_in_one_line(override, expected, tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, "trainer=bcd_accelerated", override, cwd=tmp_path)
    assert code == 2
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert all(part in stderr for part in expected), stderr
    assert len(lines) <= 2, stderr
