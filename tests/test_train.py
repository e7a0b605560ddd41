"""Training runs through ``run(cfg)``: the default learns, metrics are consistent, runs reproduce."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcd_cli.run.records import METRIC_COLUMNS
from bcd_cli.run.train import run
from tests.conftest import TINY, compose_config, requires_cuda

MNIST_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-test"
FASHION = Path("/usr/share/datasets/fashion-mnist")


def mnist_cut(folder: Path) -> Path:
    """MNIST's test set cut into 8000 training and 2000 test images, as idx files in ``folder`` (the cut of
    ``scripts/mnist_test_cut.py --idx``): MNIST offline."""
    import mnist_test_cut  # scripts/, on pytest's path

    folder.mkdir(parents=True, exist_ok=True)
    for name, array in mnist_test_cut.cut_idx(MNIST_TEST).items():
        mnist_test_cut.write_idx(folder / f"{name}.gz", array)
    return folder


def test_default_digits_run_reaches_090_test_accuracy(tmp_path: Path):
    result = run(compose_config("device=cpu", "grad_norm=false"), tmp_path)  # the diagnostic changes no step
    assert result.summary["final_test_acc"] >= 0.90
    assert result.summary["descent_held"]
    assert result.summary["status"] == "completed"
    assert result.summary["sizes"] == [64, 256, 256, 10]
    assert 0 < result.summary["train_seconds"] <= result.summary["wall_seconds"]
    assert json.loads((tmp_path / "summary.json").read_text())["final_test_acc"] == result.summary["final_test_acc"]


# The defaults on the other data sets shipped (slow tier, run by CI beside the default digits run of `make test`):
# a default chosen on one data set alone (as N(0, 0.1^2) was on digits) fails here. Measured with the defaults
# (docs/defaults.md): MNIST cut 0.9175 (asked: 0.90), Fashion-MNIST 10000/2000 0.8115 (asked: 0.79, where every
# other candidate but the paper's N(0, 0.01^2) ends below 0.80).
@pytest.mark.slow
@pytest.mark.skipif(not MNIST_TEST.is_dir(), reason="the MNIST test set is not at ../shared/data/mnist-test")
def test_default_run_on_the_mnist_cut_reaches_090_test_accuracy(tmp_path: Path):
    root = mnist_cut(tmp_path / "mnist")
    cfg = compose_config("device=cpu", "data=mnist", f"data.root={root}", "epochs=20", "grad_norm=false")
    summary = run(cfg, tmp_path).summary  # (the gradient norm, a diagnostic, changes no step)
    assert summary["final_test_acc"] >= 0.90, summary
    assert summary["descent_held"]


@pytest.mark.slow
@pytest.mark.skipif(not FASHION.is_dir(), reason="dataset-fashion-mnist not installed")
def test_default_run_on_fashion_mnist_learns(tmp_path: Path):
    cfg = compose_config("device=cpu", "data=fashion_mnist", f"data.root={FASHION}", "data.n_train=10000",
                         "data.n_test=2000", "epochs=20", "grad_norm=false")  # fmt: skip
    summary = run(cfg, tmp_path).summary
    assert summary["final_test_acc"] >= 0.79, summary
    assert summary["descent_held"]


# each scheme on digits (1347 train / 450 test), a 64-unit network, 15 sweeps, init normal with init_std 0.1:
# (overrides, least final test accuracy); measured final accuracies in the comments. Every scheme learns in the
# default tier; the other losses and activations, whose descent tests/test_schemes.py checks on every scheme,
# learn in the slow tier
SCHEMES_LEARN = [
    pytest.param(["splitting=three"], 0.92, id="three-relu-square"),  # 0.942
    pytest.param(["splitting=two"], 0.92, id="two-relu-square"),  # 0.936
    pytest.param(["model=resnet", "model.width=64", "model.depth=2"], 0.89, id="resnet-relu-square"),  # 0.911
    pytest.param(["loss=cross_entropy"], 0.93, id="three-relu-cross_entropy", marks=pytest.mark.slow),  # 0.956
    pytest.param(["loss=hinge"], 0.93, id="three-relu-hinge", marks=pytest.mark.slow),  # 0.960
    pytest.param(
        ["splitting=two", "act=tanh", "loss=logistic"], 0.93, id="two-tanh-logistic", marks=pytest.mark.slow
    ),  # 0.956
]


@pytest.mark.parametrize("overrides, least", SCHEMES_LEARN)
def test_each_scheme_learns_digits(overrides: list[str], least: float, tmp_path: Path):
    size = [] if "model=resnet" in overrides else ["model.widths=[64]"]
    cfg = compose_config("device=cpu", "epochs=15", "model.init=normal", "model.init_std=0.1", *size, *overrides)
    summary = run(cfg, tmp_path).summary
    assert summary["final_test_acc"] >= least, summary
    assert summary["descent_held"]


def test_metrics_file_matches_the_run_and_its_parts_add_up(tmp_path: Path):
    result = run(compose_config(*TINY, "epochs=4", "reg@reg_w=l2", "reg@reg_v=l2"), tmp_path)
    on_disk = pd.read_csv(tmp_path / "metrics.csv")
    assert list(on_disk.columns) == METRIC_COLUMNS
    pd.testing.assert_frame_equal(on_disk, result.metrics, check_exact=False, rtol=1e-12)
    parts = on_disk[["loss", "penalty_v", "penalty_u", "reg_w", "reg_v"]].sum(axis=1)
    pd.testing.assert_series_equal(parts, on_disk["objective"], check_names=False, rtol=1e-9)
    assert on_disk.loc[0, "penalty_v"] == 0 and on_disk.loc[0, "penalty_u"] == 0  # U, V from a forward pass
    later = on_disk.iloc[1:]
    assert (later["D"] > 0).all()
    ratio = (on_disk["objective"].shift(1) - on_disk["objective"]) / on_disk["D"]
    pd.testing.assert_series_equal(ratio.iloc[1:], later["descent_ratio"], check_names=False, rtol=1e-9)
    assert (later["reg_w"] > 0).all() and (later["reg_v"] > 0).all()


def test_train_accuracy_and_loss_come_from_the_forward_pass(tmp_path: Path):
    result = run(compose_config(*TINY), tmp_path)
    net, data = result.net, result.data
    output = net(data.X_train)
    assert result.metrics["train_acc"].iloc[-1] == (output.argmax(0) == data.y_train).double().mean().item()
    train_loss = 0.5 * (output - data.Y_train).square().sum().item()
    assert result.metrics["train_loss"].iloc[-1] == torch.tensor(train_loss).item()


def test_same_seed_same_run_and_other_seed_other_run(tmp_path: Path):
    a = run(compose_config(*TINY, "seed=3"), tmp_path / "a").metrics
    b = run(compose_config(*TINY, "seed=3"), tmp_path / "b").metrics
    c = run(compose_config(*TINY, "seed=4"), tmp_path / "c").metrics
    columns = [c for c in METRIC_COLUMNS if c != "seconds"]
    pd.testing.assert_frame_equal(a[columns], b[columns], check_exact=True)
    assert not a["objective"].equals(c["objective"])


def test_recorded_objective_curve(tmp_path: Path):
    """A tiny float64 run against its recorded objective values: catches silent numerical changes."""
    cfg = compose_config(*TINY, "epochs=5", "dtype=float64", "gamma=2", "alpha=0.5", "seed=1", "model.init=normal",
                         "model.init_std=0.01")  # fmt: skip
    objective = torch.tensor(run(cfg, tmp_path).metrics["objective"].to_numpy())  # recorded with the paper's weights
    recorded = torch.tensor(RECORDED, dtype=torch.float64)
    torch.testing.assert_close(objective, recorded, rtol=1e-9, atol=0)


RECORDED = [
    54.04907010570121,
    31.353768772852902,
    24.790663157399646,
    20.010846225452468,
    15.797408243292168,
    12.229329716330609,
]


@pytest.mark.gpu
@requires_cuda
def test_cuda_run_matches_cpu_run(tmp_path: Path):
    """The same float64 run on CUDA and on the CPU: same objective curve and accuracies."""
    overrides = [*TINY[:-1], "epochs=4", "dtype=float64"]
    cpu = run(compose_config(*overrides, "device=cpu"), tmp_path / "cpu")
    gpu = run(compose_config(*overrides, "device=cuda"), tmp_path / "gpu")
    assert gpu.summary["device"].startswith("cuda")
    assert all(t.is_cuda for t in [*gpu.net.W, *gpu.algorithm.V, *gpu.algorithm.U])
    for column in ("objective", "D", "train_loss"):
        torch.testing.assert_close(
            torch.tensor(gpu.metrics[column].to_numpy()[1:]),
            torch.tensor(cpu.metrics[column].to_numpy()[1:]),
            rtol=1e-7,
            atol=0,
        )
    assert gpu.metrics["test_acc"].tolist() == cpu.metrics["test_acc"].tolist()


def test_non_finite_iterate_stops_the_run_and_keeps_the_good_sweeps(tmp_path: Path, monkeypatch):
    from bcd_cli.engine.three_splitting import ThreeSplittingBCD
    from bcd_cli.errors import NumericalError

    sweep = ThreeSplittingBCD.sweep

    def poisoned(self):
        D = sweep(self)
        if self.calls == 3:
            self.V[-1][0, 0] = float("nan")
        self.calls += 1
        return D

    monkeypatch.setattr(ThreeSplittingBCD, "calls", 1, raising=False)
    monkeypatch.setattr(ThreeSplittingBCD, "sweep", poisoned)
    with pytest.raises(NumericalError, match="sweep 3"):
        run(compose_config(*TINY, "epochs=5"), tmp_path)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["sweep"].tolist() == [0, 1, 2]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"].startswith("failed") and summary["sweeps"] == 2
    assert (tmp_path / "curves.png").stat().st_size > 0


@pytest.mark.parametrize("trainer", ["bcd", "sgd"])
def test_grad_norm_false_leaves_the_column_empty_and_the_run_unchanged(trainer: str, tmp_path: Path):
    runs = {
        flag: run(compose_config(*TINY, "epochs=3", f"trainer={trainer}", f"grad_norm={flag}"), tmp_path / flag).metrics
        for flag in ("true", "false")
    }
    assert runs["true"]["grad_norm"].notna().all() and (runs["true"]["grad_norm"] > 0).all()
    assert runs["false"]["grad_norm"].isna().all()
    rest = [c for c in METRIC_COLUMNS if c not in ("grad_norm", "seconds")]
    # the same run; the objective is summed by other kernels under autograd (mse_loss), so rounding may differ
    pd.testing.assert_frame_equal(runs["true"][rest], runs["false"][rest], check_exact=False, rtol=1e-6)


@pytest.mark.parametrize("precision", ["high", "medium"])
def test_matmul_precision_holds_during_the_run_and_is_restored(precision: str, tmp_path: Path, monkeypatch):
    from bcd_cli.engine.three_splitting import ThreeSplittingBCD

    seen = []
    sweep = ThreeSplittingBCD.sweep

    def recording(self):
        seen.append(torch.get_float32_matmul_precision())
        return sweep(self)

    monkeypatch.setattr(ThreeSplittingBCD, "sweep", recording)
    before = torch.get_float32_matmul_precision()
    result = run(compose_config(*TINY, "epochs=2", f"device.matmul_precision={precision}"), tmp_path)
    assert seen == [precision, precision]
    assert torch.get_float32_matmul_precision() == before
    assert result.summary["status"] == "completed"


@requires_cuda
def test_tf32_products_on_cuda_learn_as_exact_ones(tmp_path: Path):
    """TF32 GEMMs (device.matmul_precision=high) with float64 factorisations: same accuracy within 2 points."""
    accuracy = {
        precision: run(
            compose_config("device=cuda", "epochs=10", f"device.matmul_precision={precision}"), tmp_path / precision
        ).summary["final_test_acc"]
        for precision in ("highest", "high")
    }
    assert abs(accuracy["high"] - accuracy["highest"]) <= 0.02, accuracy


@pytest.mark.parametrize(
    "trainer, settings",
    [("bcd", "splitting=three, gamma=1.0, alpha=1.0"), ("sgd", "trainer=sgd, lr=0.001, batch=512")],
)
def test_bcd_report_titles_the_figures_as_bcd_train_did(trainer: str, settings: str, tmp_path: Path, monkeypatch):
    from omegaconf import OmegaConf

    import bcd_cli.reports.command as report_cli
    import bcd_cli.run.train as train

    titles: dict[str, list[str]] = {"train": [], "report": []}

    def drawn(who: str):
        def plot(metrics, path: Path, title: str = "") -> None:
            titles[who].append(title)
            path.write_bytes(b"")

        return plot

    for module, who in ((train, "train"), (report_cli, "report")):
        monkeypatch.setattr(module, "plot_curves", drawn(who))
        monkeypatch.setattr(module, "plot_convergence", drawn(who))
    cfg = compose_config(*TINY, f"trainer={trainer}")
    run(cfg, tmp_path)
    (tmp_path / ".hydra").mkdir()
    OmegaConf.save(cfg, tmp_path / ".hydra" / "config.yaml")  # as Hydra saves it
    report_cli.regenerate_run(tmp_path)
    assert titles["train"] == titles["report"] == [f"digits, 64-16-10, {settings}"] * 2
