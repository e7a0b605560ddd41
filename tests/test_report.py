"""Run, sweep and trainer-comparison reports on recorded metrics (tests/data), the callback and bcd-report."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from omegaconf import OmegaConf

from bcd_cli.callbacks import SweepReport
from bcd_cli.report import descent_failures, descent_verdict, plot_convergence, read_metrics, summarize
from bcd_cli.sweep import heatmap_grid, job_folders, sweep_table, write_sweep_report
from bcd_cli.train import run
from tests.conftest import TINY, compose_config, run_cli

DATA = Path(__file__).parent / "data"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    """A valid, non-empty PNG that matplotlib reads back as a non-trivial image."""
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE, path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert float(np.std(image[..., :3])) > 0.01  # not blank


def copy(name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(DATA / name, tmp_path / name))


def bcd_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bcd_cli.report_cli", *args], capture_output=True, text=True, timeout=120
    )


def summaries(folder: Path) -> dict[str, dict]:
    return {job.name: json.loads((job / "summary.json").read_text()) for job in job_folders(folder)}


# --- one run --------------------------------------------------------------------------------------


def test_convergence_plot_of_a_recorded_run(tmp_path: Path):
    metrics = read_metrics(DATA / "run" / "metrics.csv")
    plot_convergence(metrics, tmp_path / "convergence.png", title="recorded")
    assert_png(tmp_path / "convergence.png")
    assert descent_verdict(metrics) == "descent held at every sweep"


def test_descent_failures_follow_the_descent_held_rule(tmp_path: Path):
    metrics = read_metrics(DATA / "run" / "metrics.csv")
    bumped = metrics.copy()
    bumped.loc[[3, 4], "objective"] = bumped["objective"].iloc[1] * 2  # L rises at sweep 3, stays at 4
    assert descent_failures(bumped) == [3]
    assert descent_verdict(bumped) == "descent failed at sweep 3"
    assert summarize(bumped)["descent_held"] is False and summarize(metrics)["descent_held"] is True
    bumped.loc[4, "objective"] = bumped["objective"].iloc[3] * 1.5
    assert descent_verdict(bumped) == "descent failed at sweeps 3, 4"
    bumped["grad_norm"] = np.nan  # nonsmooth regularizer: the gradient panel says so, the plot is still drawn
    bumped.loc[2, "D"] = 0.0
    plot_convergence(bumped, tmp_path / "c.png")
    assert_png(tmp_path / "c.png")


def test_convergence_plot_with_only_the_initial_point(tmp_path: Path):
    metrics = read_metrics(DATA / "run" / "metrics.csv").iloc[:1]
    plot_convergence(metrics, tmp_path / "c.png")
    assert_png(tmp_path / "c.png")


def test_a_normal_run_writes_the_convergence_plot(tmp_path: Path):
    run(compose_config(*TINY), tmp_path)
    assert_png(tmp_path / "convergence.png")
    assert_png(tmp_path / "curves.png")


def test_bcd_report_regenerates_a_run_folder_and_keeps_the_summary_fields(tmp_path: Path):
    folder = copy("run", tmp_path)
    summary = json.loads((folder / "summary.json").read_text())
    stale = summary | {"final_test_acc": -1.0, "sweeps": 99}
    (folder / "summary.json").write_text(json.dumps(stale))
    proc = bcd_report(str(folder))
    assert proc.returncode == 0, proc.stderr
    for name in ("curves.png", "convergence.png"):
        assert_png(folder / name)
        assert str(folder / name) in proc.stdout
    assert json.loads((folder / "summary.json").read_text()) == summary


# --- a gamma x alpha x seed grid --------------------------------------------------------------------


def test_sweep_summary_of_a_recorded_grid(tmp_path: Path):
    folder = copy("grid", tmp_path)
    shutil.copytree(folder / "7", folder / "10")  # a failed job: overrides but no summary.json, no metrics
    (folder / "10" / "summary.json").unlink()
    (folder / "10" / "metrics.csv").unlink()
    written = write_sweep_report(folder)
    assert {p.name for p in written} == {
        "sweep_summary.csv", "heatmap.png", "sweep_aggregate.csv", "curves_by_config.png"
    }  # fmt: skip
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert table["job"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 10]  # by job number, not as text
    assert list(table.columns[:4]) == ["job", "gamma", "alpha", "seed"]
    assert table["status"].tolist() == ["completed"] * 8 + ["missing"]
    assert table.loc[8, ["final_test_acc", "best_test_acc", "train_seconds"]].isna().all()
    recorded = summaries(DATA / "grid")
    for _, row in table.iloc[:8].iterrows():
        s = recorded[str(row["job"])]
        for field in ("final_test_acc", "best_test_acc", "final_train_acc", "train_seconds", "wall_seconds"):
            assert row[field] == pytest.approx(s[field])
        assert row["descent_held"] == s["descent_held"]
    overrides = [(0.5, 1, 0), (0.5, 1, 1), (0.5, 5, 0), (0.5, 5, 1), (1, 1, 0), (1, 1, 1), (1, 5, 0), (1, 5, 1)]
    assert list(table.iloc[:8][["gamma", "alpha", "seed"]].itertuples(index=False, name=None)) == overrides
    assert_png(folder / "heatmap.png")
    assert_png(folder / "curves_by_config.png")


def test_heatmap_cells_and_best_cell(tmp_path: Path):
    table, swept = sweep_table(DATA / "grid")
    assert swept == ["gamma", "alpha", "seed"]
    grid = heatmap_grid(table, ("gamma", "alpha"))
    assert grid.index.tolist() == ["0.5", "1"] and grid.columns.tolist() == ["1", "5"]
    recorded = summaries(DATA / "grid")
    for j, (g, a) in enumerate([("0.5", "1"), ("0.5", "5"), ("1", "1"), ("1", "5")]):
        seeds = [recorded[str(2 * j + s)]["final_test_acc"] for s in (0, 1)]
        assert grid.loc[g, a] == pytest.approx(np.mean(seeds))
    assert grid.stack().idxmax() == ("1", "1")  # the recorded grid's best cell
    assert table.loc[table["final_test_acc"].idxmax(), ["gamma", "alpha"]].tolist() == ["1", "1"]


def test_seed_aggregate_mean_and_std(tmp_path: Path):
    folder = copy("grid", tmp_path)
    write_sweep_report(folder)
    agg = pd.read_csv(folder / "sweep_aggregate.csv")
    assert list(agg[["gamma", "alpha"]].itertuples(index=False, name=None)) == [(0.5, 1), (0.5, 5), (1, 1), (1, 5)]
    assert agg["n_seeds"].tolist() == [2, 2, 2, 2]
    recorded = summaries(DATA / "grid")
    for j, row in agg.iterrows():
        for field in ("final_test_acc", "best_test_acc", "final_train_acc"):
            values = [recorded[str(2 * j + s)][field] for s in (0, 1)]
            assert row[f"{field}_mean"] == pytest.approx(np.mean(values))
            assert row[f"{field}_std"] == pytest.approx(np.std(values, ddof=1))


def test_heatmap_keys_chosen_by_the_caller_and_skipped_when_one_key_varies(tmp_path: Path):
    folder = copy("grid", tmp_path)
    write_sweep_report(folder, keys=("alpha", "seed"))
    assert_png(folder / "heatmap.png")
    with pytest.raises(ValueError, match="no override key lr"):
        write_sweep_report(folder, keys=("gamma", "lr"))
    for job in ("2", "3", "6", "7"):  # only gamma (and seed) vary now
        shutil.rmtree(folder / job)
    (folder / "heatmap.png").unlink()
    names = {p.name for p in write_sweep_report(folder)}
    assert "heatmap.png" not in names and not (folder / "heatmap.png").exists()
    assert len(pd.read_csv(folder / "sweep_aggregate.csv")) == 2


# --- trainer comparison ------------------------------------------------------------------------------


def test_trainer_comparison(tmp_path: Path):
    folder = copy("compare", tmp_path)
    written = {p.name for p in write_sweep_report(folder)}
    assert {"comparison.png", "comparison.csv", "comparison.md", "sweep_aggregate.csv"} <= written
    assert "heatmap.png" not in written  # trainer and seed: seed is not a heatmap axis
    assert_png(folder / "comparison.png")
    comparison = pd.read_csv(folder / "comparison.csv")
    assert comparison["trainer"].tolist() == ["bcd", "sgd"]
    assert comparison["n_seeds"].tolist() == [2, 2]
    recorded = summaries(DATA / "compare")
    for i, trainer_jobs in enumerate([("0", "1"), ("2", "3")]):
        for field in ("final_train_acc", "final_test_acc", "best_test_acc", "train_seconds"):
            values = [recorded[j][field] for j in trainer_jobs]
            assert comparison.loc[i, f"{field}_mean"] == pytest.approx(np.mean(values))
            assert comparison.loc[i, f"{field}_std"] == pytest.approx(np.std(values, ddof=1))
    lines = (folder / "comparison.md").read_text().splitlines()
    assert lines[0] == "| trainer | final train acc | final test acc | best test acc | seconds | seeds |"
    assert len(lines) == 4 and lines[2].startswith("| bcd | ") and lines[3].startswith("| sgd | ")
    bcd_test = [recorded[j]["final_test_acc"] for j in ("0", "1")]
    assert f"{np.mean(bcd_test):.3f} ± {np.std(bcd_test, ddof=1):.3f}" in lines[2]
    assert lines[2].endswith("| 2 |")


def test_comparison_survives_a_job_without_metrics(tmp_path: Path):
    folder = copy("compare", tmp_path)
    (folder / "3" / "metrics.csv").unlink()
    (folder / "3" / "summary.json").unlink()
    write_sweep_report(folder)
    assert pd.read_csv(folder / "comparison.csv")["n_seeds"].tolist() == [2, 1]
    assert_png(folder / "comparison.png")
    assert "| sgd | " in (folder / "comparison.md").read_text()


# --- the Hydra callback and bcd-report on a real multirun -------------------------------------------------


def test_callback_never_raises(tmp_path: Path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}})
    with caplog.at_level(logging.WARNING):
        SweepReport().on_multirun_end(config)
    assert "sweep report not written" in caplog.text


def test_multirun_writes_the_sweep_report_and_bcd_report_regenerates_it(tmp_path: Path):
    sweep = tmp_path / "sweep"
    proc = run_cli("-m", "gamma=0.5,1", "alpha=1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["job"].tolist() == [0, 1, 2, 3] and set(table["status"]) == {"completed"}
    assert list(table[["gamma", "alpha"]].itertuples(index=False, name=None)) == [(0.5, 1), (0.5, 2), (1, 1), (1, 2)]
    assert_png(sweep / "heatmap.png")
    generated = [sweep / "sweep_summary.csv", sweep / "heatmap.png"]
    generated += [sweep / str(j) / name for j in range(4) for name in ("curves.png", "convergence.png")]
    for path in generated:
        assert path.is_file(), path
        path.unlink()
    proc = bcd_report(str(sweep), "--keys", "alpha", "gamma")
    assert proc.returncode == 0, proc.stderr
    for path in generated:
        assert path.is_file(), path
        assert str(path) in proc.stdout
    assert_png(sweep / "heatmap.png")
    assert pd.read_csv(sweep / "sweep_summary.csv").equals(table)


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "binary", "not-metrics"])
def test_bcd_report_bad_input_is_one_error_line(tmp_path: Path, case: str):
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "corrupt":
        (target / "metrics.csv").write_text('sweep,objective\n"unterminated,1\n2,3,4,5\n')
    elif case == "binary":
        (target / "metrics.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00\n\x93")
    elif case == "not-metrics":
        (target / "metrics.csv").write_text("a,b\n1,2\n")
    proc = bcd_report(str(target))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bcd-report: error: "), proc.stderr
    assert str(target) in lines[0] and "Traceback" not in proc.stderr
    assert "expected" in lines[0]
