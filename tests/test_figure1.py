"""Figure 1 over seeds: the method comparison of a multirun (table, markdown, figure) and the MNIST test-set cut."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from bcd_cli.reports.sweep import (
    COMPARISON_COLUMNS,
    _comparison_band,
    compare_trainers,
    comparison_markdown,
    job_progress,
    training_seconds,
    write_sweep_report,
)
from bcd_cli.run.records import read_metrics
from tests.conftest import TINY, write_idx

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METHODS = ["bcd", "bcd_accelerated", "sgd", "adam"]
SCRIPT = Path(__file__).parent.parent / "scripts" / "mnist_test_cut.py"


def metrics_frame(test_acc: list[float], seconds: list[float], objective: list[float] | None = None) -> pd.DataFrame:
    """A hand-made metrics frame, sweep 0 first (its seconds 0, as bcd-train writes it)."""
    n = len(test_acc)
    return pd.DataFrame(
        {
            "sweep": range(n),
            "seconds": [0.0, *seconds],
            "objective": objective if objective is not None else list(np.linspace(10, 1, n)),
            "train_loss": np.linspace(10, 1, n),
            "train_acc": test_acc,
            "test_acc": test_acc,
        }
    )


def comparison_table(rows: list[tuple[str, str, str]], frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """A sweep table of (job, trainer, status) rows, its accuracies and seconds taken from ``frames``."""
    records = []
    for job, trainer, status in rows:
        frame = frames.get(job)
        last = frame.iloc[-1] if frame is not None else None
        records.append(
            {
                "job": job, "trainer": trainer, "seed": job, "status": status,
                "final_test_acc": math.nan if last is None else last["test_acc"],
                "best_test_acc": math.nan if frame is None else frame["test_acc"].max(),
                "final_train_acc": math.nan if last is None else last["train_acc"],
                "train_seconds": math.nan if frame is None else frame["seconds"].sum(),
            }
        )  # fmt: skip
    return pd.DataFrame(records)


# --- a real multirun of the four methods ----------------------------------------------------------------


@pytest.mark.slow  # 8 jobs; in the default tier, bcd and sgd run end to end in tests/test_cli.py and the means
# over seeds are checked on hand-made metrics below
def test_four_methods_over_two_seeds(tmp_path: Path, bcd_train):
    sweep = tmp_path / "figure1"
    code, stderr = bcd_train(
        "-m", *TINY, f"trainer={','.join(METHODS)}", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path
    )  # fmt: skip
    assert code == 0, stderr
    table = pd.read_csv(sweep / "comparison.csv")
    assert list(table.columns) == COMPARISON_COLUMNS
    assert table["trainer"].tolist() == METHODS
    assert table["n_seeds"].tolist() == [2, 2, 2, 2] and table["n_left_out"].tolist() == [0, 0, 0, 0]
    summary = pd.read_csv(sweep / "sweep_summary.csv", dtype={"job": str})
    for _, row in table.iterrows():
        jobs = summary.loc[summary["trainer"] == row["trainer"], "job"]
        frames = [read_metrics(sweep / job / "metrics.csv") for job in jobs]
        per_sweep = [frame.loc[frame["sweep"] > 0, "seconds"].mean() for frame in frames]
        assert row["seconds_per_sweep_mean"] == pytest.approx(np.mean(per_sweep))
        assert row["train_seconds_mean"] == pytest.approx(np.mean([frame["seconds"].sum() for frame in frames]))
        assert row["final_test_acc_mean"] == pytest.approx(np.mean([frame["test_acc"].iloc[-1] for frame in frames]))
        bcd = row["trainer"].startswith("bcd")
        assert math.isnan(row["descent_failures"]) != bcd  # counted for the BCD methods only
        if not bcd:
            assert math.isnan(row["rejected"])
    markdown = (sweep / "comparison.md").read_text().splitlines()
    assert [line.split(" | ")[0] for line in markdown[2:6]] == [f"| {m}" for m in METHODS]
    assert all(line.split(" | ")[1] == "2" for line in markdown[2:6])
    assert (sweep / "comparison.png").read_bytes()[:8] == PNG_SIGNATURE

    # a job that failed is left out of the means and counted; bcd-report's rewrite says so
    sgd = summary.loc[summary["trainer"] == "sgd", "job"].iloc[1]
    failed = json.loads((sweep / sgd / "summary.json").read_text()) | {"status": "failed", "error": "boom"}
    (sweep / sgd / "summary.json").write_text(json.dumps(failed))
    write_sweep_report(sweep)
    table = pd.read_csv(sweep / "comparison.csv").set_index("trainer")
    assert table.loc["sgd", "n_seeds"] == 1 and table.loc["sgd", "n_left_out"] == 1
    assert table.loc["sgd", "left_out"] == f"job {sgd} (failed)"
    kept = summary.loc[(summary["trainer"] == "sgd") & (summary["job"] != sgd), "final_test_acc"]
    assert table.loc["sgd", "final_test_acc_mean"] == pytest.approx(kept.iloc[0])
    text = (sweep / "comparison.md").read_text()
    assert "| sgd | 1 (1 left out) |" in text and f"sgd: job {sgd} (failed)" in text


# --- the comparison on hand-made metrics --------------------------------------------------------------------


def test_first_sweep_reaching_the_target():
    never = metrics_frame([0.1, 0.5, 0.8, 0.89, 0.899], [1.0, 2.0, 3.0, 4.0])
    reached = metrics_frame([0.1, 0.5, 0.8, 0.9, 0.85, 0.95], [1.0, 2.0, 3.0, 4.0, 5.0])
    assert math.isnan(job_progress(never)["sweep_to_target"]) and math.isnan(job_progress(never)["seconds_to_target"])
    progress = job_progress(reached)
    assert progress["sweep_to_target"] == 3  # 0.90 reached exactly at sweep 3; the dip after it does not count
    assert progress["seconds_to_target"] == pytest.approx(1.0 + 2.0 + 3.0)
    assert progress["seconds_per_sweep"] == pytest.approx(3.0)  # sweeps 1..5, sweep 0 (no update) left out
    assert job_progress(reached, target=0.95)["sweep_to_target"] == 5


def test_the_table_over_methods_and_seeds():
    rising = [10.0, 8.0, 9.0, 7.0, 7.5, 6.0]  # the objective rises at sweeps 2 and 4
    frames = {
        "0": metrics_frame([0.1, 0.5, 0.8, 0.9, 0.92, 0.93], [1.0] * 5),  # reaches 0.90 at sweep 3
        "1": metrics_frame([0.1, 0.5, 0.7, 0.8, 0.85, 0.91], [2.0] * 5, objective=rising),  # at sweep 5
        "2": metrics_frame([0.1, 0.5, 0.7, 0.8, 0.85, 0.86], [3.0] * 5),  # never
        "3": metrics_frame([0.1, 0.2, 0.3], [0.5, 0.5], objective=[3.0, 4.0, 5.0]),
        "4": metrics_frame([0.1, 0.3, 0.4], [0.5, 0.7], objective=[3.0, 4.0, 5.0]),
    }
    frames["1"]["rejected"] = [math.nan, 0, 1, 1, 0, 1]
    rows = [("0", "bcd", "completed"), ("1", "bcd", "completed"), ("2", "bcd", "completed")]
    rows += [("3", "sgd", "completed"), ("4", "sgd", "completed"), ("5", "sgd", "failed"), ("6", "sgd", "missing")]
    table = comparison_table(rows, frames)
    comparison = compare_trainers(table, frames).set_index("trainer")
    bcd, sgd = comparison.loc["bcd"], comparison.loc["sgd"]
    assert bcd["n_seeds"] == 3 and bcd["n_reached_target"] == 2
    assert bcd["sweep_to_target_mean"] == pytest.approx(4.0)  # (3 + 5) / 2: the seed that never reached it is out
    assert bcd["seconds_to_target_mean"] == pytest.approx((3 * 1.0 + 5 * 2.0) / 2)
    assert bcd["descent_failures"] == 2 and bcd["rejected"] == 3
    assert bcd["seconds_per_sweep_mean"] == pytest.approx(2.0) and bcd["seconds_per_sweep_std"] == pytest.approx(1.0)
    assert bcd["final_test_acc_mean"] == pytest.approx(np.mean([0.93, 0.91, 0.86]))
    assert sgd["n_seeds"] == 2 and sgd["n_reached_target"] == 0 and math.isnan(sgd["sweep_to_target_mean"])
    assert sgd["n_left_out"] == 2 and sgd["left_out"] == "job 5 (failed); job 6 (missing)"
    assert math.isnan(sgd["descent_failures"]) and math.isnan(sgd["rejected"])  # not BCD, though its objective rose
    assert sgd["final_test_acc_mean"] == pytest.approx(np.mean([0.3, 0.4]))
    assert sgd["seconds_per_sweep_mean"] == pytest.approx(np.mean([0.5, 0.6]))
    # plain BCD without the rejected column: no total, where accelerated BCD has one
    assert math.isnan(compare_trainers(table[table["job"] != "1"], frames).set_index("trainer").loc["bcd", "rejected"])

    lines = comparison_markdown(compare_trainers(table, frames)).splitlines()
    bcd_cells, sgd_cells = lines[2].split(" | "), lines[3].split(" | ")
    assert bcd_cells[5] == "4.0 ± 1.4 (2 of 3)" and sgd_cells[5] == "never (0 of 2)"
    assert bcd_cells[9:] == ["2", "3 |"] and sgd_cells[9:] == ["—", "— |"]
    assert sgd_cells[1] == "2 (2 left out)"
    assert lines[-1] == "Left out (failed, interrupted or without results): sgd: job 5 (failed); job 6 (missing)."


def test_a_method_whose_every_job_failed_stays_in_the_table(tmp_path: Path):
    frames = {"0": metrics_frame([0.1, 0.95], [1.0])}
    table = comparison_table([("0", "bcd", "completed"), ("1", "adam", "failed")], frames)
    comparison = compare_trainers(table, frames).set_index("trainer")
    assert comparison.loc["adam", "n_seeds"] == 0 and comparison.loc["adam", "left_out"] == "job 1 (failed)"
    assert "| adam | 0 (1 left out) | — | — | — | — |" in comparison_markdown(comparison.reset_index())


def test_wall_time_is_the_cumulative_training_seconds():
    first = metrics_frame([0.1, 0.5, 0.7, 0.9], [1.0, 2.0, 4.0])
    second = metrics_frame([0.3, 0.5, 0.9, 0.9], [3.0, 2.0, 2.0])
    assert training_seconds(first).tolist() == [0.0, 1.0, 3.0, 7.0]
    ax = Figure().subplots()
    _comparison_band(ax, [first, second], "test_acc", "seconds", "bcd (2 seeds)", "C0")
    [line] = ax.get_lines()
    assert line.get_xdata().tolist() == pytest.approx([0.0, 2.0, 4.0, 7.0])  # the mean over seeds, sweep by sweep
    assert line.get_ydata().tolist() == pytest.approx([0.2, 0.5, 0.8, 0.9])
    ax = Figure().subplots()
    _comparison_band(ax, [first, second], "test_acc", "sweep", "bcd (2 seeds)", "C0")
    assert ax.get_lines()[0].get_xdata().tolist() == [0, 1, 2, 3]


# --- the MNIST test-set cut --------------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("mnist_test_cut", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_cut_of_a_test_set(tmp_path: Path, capsys, bcd_train):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    out = tmp_path / "cut" / "digits_cut"  # a name without .npz is written as given
    assert load_script().main([str(tmp_path), "--n-train", "30", "--n-test", "10", "--out", str(out)]) == 0
    with np.load(out) as cut:
        assert sorted(cut.files) == ["X", "X_test", "y", "y_test"]
        assert cut["X"].shape == (30, 784) and cut["X_test"].shape == (10, 784)
        assert cut["X"].dtype == np.float32 and cut["X_test"].dtype == np.float32
        assert cut["y"].dtype == np.int64 and cut["y"].tolist() == labels[:30].tolist()
        assert cut["y_test"].tolist() == labels[-10:].tolist()
        np.testing.assert_allclose(cut["X"], images[:30].reshape(30, -1) / 255, rtol=1e-6)
        np.testing.assert_allclose(cut["X_test"], images[-10:].reshape(10, -1) / 255, rtol=1e-6)
    npz = tmp_path / "cut.npz"
    assert load_script().main([str(tmp_path), "--n-train", "20", "--n-test", "20", "--out", str(npz)]) == 0
    code, stderr = bcd_train(
        *TINY,
        "data=npz",
        f"data.path={npz}",
        "data.normalize=none",
        "data.n_train=null",
        "data.n_test=null",
        cwd=tmp_path,
    )
    assert code == 0, stderr


def test_the_cut_refuses_a_missing_file_and_sizes_too_large(tmp_path: Path, capsys):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((12, 28, 28)))
    script = load_script()
    assert script.main([str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"mnist_test_cut: {tmp_path / 't10k-labels-idx1-ubyte'}: missing") and "\n" not in err
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(12), gz=True)
    assert script.main([str(tmp_path), "--n-train", "10", "--n-test", "3", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--n-train 10 and --n-test 3" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
