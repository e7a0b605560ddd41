"""Run, sweep and trainer-comparison reports on recorded metrics (tests/data), the callback and bcd-report."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread
from omegaconf import OmegaConf

from bcd_cli.reports.callbacks import SweepReport
from bcd_cli.reports.sweep import heatmap_grid, job_folders, sweep_table, write_sweep_report
from bcd_cli.run.records import (
    descent_failures,
    descent_verdict,
    plot_convergence,
    read_metrics,
    summarize,
    write_json,
    write_summary,
)
from bcd_cli.run.train import run
from tests.conftest import TINY, compose_config, report_in_process

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
    """``bcd-report ARGS`` as its own program (``python -m bcd_cli.reports.command``)."""
    return subprocess.run(
        [sys.executable, "-m", "bcd_cli.reports.command", *args], capture_output=True, text=True, timeout=120
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


@pytest.mark.process
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


def test_heatmap_cells_are_the_median_over_seeds_that_split():
    acc = [0.115, 0.96, 0.95, 0.5]  # gamma=1: one seed of three never learns
    table = pd.DataFrame({"gamma": ["1", "1", "1", "2"], "alpha": ["1"] * 4, "seed": ["0", "1", "2", "0"]})
    table["final_test_acc"] = acc
    assert heatmap_grid(table, ("gamma", "alpha")).loc["1", "1"] == pytest.approx(0.95)  # not the mean, 0.675
    assert heatmap_grid(table, ("gamma", "alpha"), "min").loc["1", "1"] == pytest.approx(0.115)
    assert heatmap_grid(table, ("gamma", "alpha"), "max").loc["2", "1"] == pytest.approx(0.5)


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
            assert row[f"{field}_median"] == pytest.approx(np.median(values))
            assert (row[f"{field}_min"], row[f"{field}_max"]) == pytest.approx((min(values), max(values)))


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
    assert lines[0] == (
        "| method | seeds | final test acc | best test acc | final train acc | reached test acc 0.90 (first sweep) "
        "| seconds to 0.90 | seconds / sweep | training seconds | objective rose | rejected |"
    )
    assert lines[2].startswith("| bcd | 2 | ") and lines[3].startswith("| sgd | 2 | ") and lines[4] == ""
    bcd_test = [recorded[j]["final_test_acc"] for j in ("0", "1")]
    assert lines[2].split(" | ")[2] == f"{bcd_test[0]:.3f}, {bcd_test[1]:.3f}"  # each seed's, in seed order
    assert comparison["seeds"].tolist() == ["0;1", "0;1"]
    for i, trainer_jobs in enumerate([("0", "1"), ("2", "3")]):
        values = [recorded[j]["final_test_acc"] for j in trainer_jobs]
        assert comparison.loc[i, "final_test_acc_median"] == pytest.approx(np.median(values))
        assert comparison.loc[i, "final_test_acc_min"] == pytest.approx(min(values))
        assert comparison.loc[i, "final_test_acc_max"] == pytest.approx(max(values))


def test_comparison_survives_a_job_without_metrics(tmp_path: Path):
    folder = copy("compare", tmp_path)
    (folder / "3" / "metrics.csv").unlink()
    (folder / "3" / "summary.json").unlink()
    write_sweep_report(folder)
    comparison = pd.read_csv(folder / "comparison.csv")
    assert comparison["n_seeds"].tolist() == [2, 1] and comparison["n_left_out"].tolist() == [0, 1]
    assert comparison["left_out"].fillna("").tolist() == ["", "job 3 (missing)"]
    assert_png(folder / "comparison.png")
    text = (folder / "comparison.md").read_text()
    assert "| sgd | 1 (1 left out) | " in text and "sgd: job 3 (missing)" in text


# --- the Hydra callback and bcd-report on a real multirun -------------------------------------------------


def test_callback_never_raises(tmp_path: Path, caplog):
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "nothing")}}})
    with caplog.at_level(logging.WARNING):
        SweepReport().on_multirun_end(config)
    assert "sweep report not written" in caplog.text


def test_multirun_writes_the_sweep_report_and_bcd_report_regenerates_it(tmp_path: Path, bcd_train, capsys):
    sweep = tmp_path / "sweep"
    code, stderr = bcd_train("-m", "gamma=0.5,1", "alpha=1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["job"].tolist() == [0, 1, 2, 3] and set(table["status"]) == {"completed"}
    assert list(table[["gamma", "alpha"]].itertuples(index=False, name=None)) == [(0.5, 1), (0.5, 2), (1, 1), (1, 2)]
    assert_png(sweep / "heatmap.png")
    generated = [sweep / "sweep_summary.csv", sweep / "heatmap.png"]
    generated += [sweep / str(j) / name for j in range(4) for name in ("curves.png", "convergence.png")]
    for path in generated:
        assert path.is_file(), path
        path.unlink()
    code, stdout, stderr = report_in_process(capsys, str(sweep), "--keys", "alpha", "gamma")
    assert code == 0, stderr
    for path in generated:
        assert path.is_file(), path
        assert str(path) in stdout
    assert_png(sweep / "heatmap.png")
    assert pd.read_csv(sweep / "sweep_summary.csv").equals(table)


def test_a_key_given_twice_reports_the_jobs_that_ran_and_no_phantom(tmp_path: Path, bcd_train):
    """Hydra runs a key given twice with its last value: ``seed=0,1 ... seed=2`` is two jobs, not four."""
    sweep = tmp_path / "dup"
    code, stderr = bcd_train("-m", *TINY, "seed=0,1", "epochs=1,2", "seed=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["job"].tolist() == [0, 1] and set(table["status"]) == {"completed"}
    assert table["seed"].tolist() == [2, 2] and table["epochs"].tolist() == [1, 2]


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "binary", "not-metrics"])
def test_bcd_report_bad_input_is_one_error_line(tmp_path: Path, capsys, case: str):
    target = tmp_path / "run"
    if case != "missing":
        target.mkdir()
    if case == "corrupt":
        (target / "metrics.csv").write_text('sweep,objective\n"unterminated,1\n2,3,4,5\n')
    elif case == "binary":
        (target / "metrics.csv").write_bytes(b"\xff\xfe\x00\x81garbage\x00\n\x93")
    elif case == "not-metrics":
        (target / "metrics.csv").write_text("a,b\n1,2\n")
    code, _, stderr = report_in_process(capsys, str(target))
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bcd-report: error: "), stderr
    assert str(target) in lines[0] and "Traceback" not in stderr
    assert "expected" in lines[0]


# --- damaged metrics files are refused, every report left as it was ---------------------------------------


def checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def damage(text: str, case: str) -> str:
    """tests/data/run/metrics.csv (sweeps 0..4, one line each after the header) damaged as ``case`` says."""
    lines = text.splitlines(keepends=True)
    fields = [line.rstrip("\n").split(",") for line in lines]
    if case == "cut-mid-row":  # the last row cut inside its fifth field (penalty_v): no line end either
        return "".join(lines[:-1]) + ",".join(fields[-1][:4]) + "," + fields[-1][4][:3]
    if case == "cut-in-last-field":  # every field there, the last one cut short
        return text[:-4]
    if case == "not-a-number":
        return text.replace(fields[4][2], "abc", 1)  # the objective of sweep 3
    if case == "empty-cell":
        fields[3][2] = ""  # the objective of sweep 2: bcd-train always writes it
        return "".join(",".join(f) + "\n" for f in fields)
    if case == "extra-fields":
        return "".join(lines[:2]) + lines[2].rstrip("\n") + ",7,8\n" + "".join(lines[3:])
    if case == "missing-column":
        return "".join(",".join(f[:-1]) + "\n" for f in fields)  # no test_acc
    if case == "duplicated-sweep":
        return "".join(lines[:4] + [lines[3]] + lines[4:])  # sweep 2 twice
    if case == "missing-sweep":
        return "".join(lines[:3] + lines[4:])  # no sweep 2
    raise AssertionError(case)


# case: what the one line says after "<path>, "
DAMAGED = {
    "cut-mid-row": "line 6 (sweep 4), column penalty_u: the row ends after 5 of the header's 14 fields (cut mid-way)",
    "cut-in-last-field": "line 6 (sweep 4), column test_acc: the file ends inside this row (cut mid-way)",
    "not-a-number": "line 5 (sweep 3), column objective: 'abc' is not a number; expected a number",
    "empty-cell": "line 4 (sweep 2), column objective: empty; expected a number",
    "extra-fields": "line 3 (sweep 1), column after test_acc: 16 fields, more than the header's; expected 14 fields",
    "missing-column": "line 1 (header): no column test_acc; expected the metrics.csv columns sweep, seconds,",
    "duplicated-sweep": "line 5 (sweep 2), column sweep: sweep 2 follows sweep 2; expected sweep 3",
    "missing-sweep": "line 4 (sweep 3), column sweep: sweep 3 follows sweep 1; expected sweep 2",
}


@pytest.mark.parametrize("case", list(DAMAGED))
def test_bcd_report_refuses_a_damaged_metrics_file_and_keeps_every_report(tmp_path: Path, capsys, case: str):
    folder = copy("run", tmp_path)
    metrics = folder / "metrics.csv"
    metrics.write_text(damage(metrics.read_text(), case))
    (folder / "curves.png").write_bytes(PNG_SIGNATURE + b"the curves of before")
    (folder / "convergence.png").write_bytes(PNG_SIGNATURE + b"the convergence plot of before")
    before = checksums(folder)
    code, out, err = report_in_process(capsys, str(folder))
    assert code == 2 and out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bcd-report: error: {metrics}, {DAMAGED[case]}"), lines[0]
    assert "expected" in lines[0]
    assert checksums(folder) == before
    with pytest.raises(ValueError, match="^" + re.escape(f"{metrics}, {DAMAGED[case]}")):
        read_metrics(metrics)


def test_empty_cells_only_where_bcd_train_writes_them(tmp_path: Path):
    path = tmp_path / "metrics.csv"
    lines = (DATA / "run" / "metrics.csv").read_text().splitlines()
    header = lines[0].split(",")
    rows = [line.split(",") for line in lines[1:]]
    for row in rows:
        row[header.index("grad_norm")] = ""  # grad_norm=false, or a nonsmooth regularizer: every sweep
    rows[2][header.index("D")] = "0.0"  # D_k = 0: no descent ratio
    rows[2][header.index("descent_ratio")] = ""
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    metrics = read_metrics(path)
    assert metrics["grad_norm"].isna().all() and np.isnan(metrics.loc[2, "descent_ratio"])
    assert metrics["sweep"].tolist() == [0, 1, 2, 3, 4]
    rows[3][header.index("D")] = ""  # D is written at every sweep after the first
    path.write_text("\n".join(",".join(r) for r in [header, *rows]) + "\n")
    with pytest.raises(ValueError, match=r"line 5 \(sweep 3\), column D: empty; expected a number; .* at sweep 0$"):
        read_metrics(path)
    without = [r[: header.index("grad_norm")] + r[header.index("grad_norm") + 1 :] for r in [header, *rows[:3]]]
    path.write_text("\n".join(",".join(r) for r in without) + "\n")  # written before grad_norm was recorded
    assert "grad_norm" not in read_metrics(path)


def test_a_multirun_reports_around_a_damaged_job(tmp_path: Path, capsys):
    folder = copy("grid", tmp_path)
    damaged = folder / "3"
    (damaged / "metrics.csv").write_text(damage((damaged / "metrics.csv").read_text(), "not-a-number"))
    (damaged / "curves.png").write_bytes(PNG_SIGNATURE + b"the curves of before")
    before = checksums(damaged)
    code, out, err = report_in_process(capsys, str(folder))
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"bcd-report: skipped {damaged}: {damaged / 'metrics.csv'}, line 5 (sweep 3)")
    assert "column objective" in lines[0]
    assert checksums(damaged) == before
    for job in ("0", "1", "2", "4", "5", "6", "7"):
        for name in ("curves.png", "convergence.png"):
            assert str(folder / job / name) in out.splitlines()
            assert_png(folder / job / name)
        assert json.loads((folder / job / "summary.json").read_text()) == summaries(DATA / "grid")[job]
    assert str(damaged / "convergence.png") not in out and not (damaged / "convergence.png").exists()
    assert len(pd.read_csv(folder / "sweep_summary.csv")) == 8
    assert_png(folder / "heatmap.png")


def test_bcd_report_refuses_bad_heatmap_keys_before_writing_anything(tmp_path: Path, capsys):
    folder = copy("grid", tmp_path)
    before = checksums(folder)
    code, out, err = report_in_process(capsys, str(folder), "--keys", "gamma", "lr")
    assert code == 2 and out == ""
    assert err.splitlines() == ["bcd-report: error: no override key lr in the sweep (its keys: gamma, alpha, seed)"]
    assert checksums(folder) == before


# --- strict JSON ----------------------------------------------------------------------------------------------


def no_constants(name: str) -> float:
    raise AssertionError(f"not strict JSON: {name}")


def test_summaries_are_strict_json_with_null_for_nan(tmp_path: Path):
    path = tmp_path / "summary.json"
    write_summary(path, {
        "final_objective": math.nan, "final_test_acc": np.float64(0.5), "best": np.float32("inf"),
        "sweeps": np.int64(4), "held": np.bool_(True), "nested": {"a": [1.0, -math.inf, (np.nan, 2)]},
        "values": np.array([1.0, np.nan]),
    })  # fmt: skip
    text = path.read_text()
    assert json.loads(text, parse_constant=no_constants) == {
        "final_objective": None, "final_test_acc": 0.5, "best": None, "sweeps": 4, "held": True,
        "nested": {"a": [1.0, None, [None, 2]]}, "values": [1.0, None],
    }  # fmt: skip
    assert text.endswith("}\n") and [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    write_json(path, [math.inf])
    assert json.loads(path.read_text(), parse_constant=no_constants) == [None]


def test_readers_take_null_where_a_summary_had_nan(tmp_path: Path, capsys):
    folder = copy("grid", tmp_path)
    for job in ("1", "2"):
        summary = json.loads((folder / job / "summary.json").read_text())
        summary |= {"final_test_acc": None, "wall_seconds": None, "descent_held": None, "method": None}
        write_summary(folder / job / "summary.json", summary)
    table, _ = sweep_table(folder)
    assert table.loc[[1, 2], ["final_test_acc", "wall_seconds", "descent_held"]].isna().all().all()
    write_sweep_report(folder)
    assert pd.read_csv(folder / "sweep_aggregate.csv")["n_seeds"].tolist() == [1, 1, 2, 2]
    code, _, err = report_in_process(capsys, str(folder / "1"))  # one run: the metric fields come back
    assert code == 0, err
    summary = json.loads((folder / "1" / "summary.json").read_text(), parse_constant=no_constants)
    assert summary["final_test_acc"] == summaries(DATA / "grid")["1"]["final_test_acc"]
    assert summary["method"] is None and summary["wall_seconds"] is None


def test_the_comparison_title_says_what_was_compared(tmp_path: Path):
    from bcd_cli.reports.sweep import comparison_title, sweep_table

    folder = copy("compare", tmp_path)
    for job, trainer in (("0", {"name": "bcd"}), ("2", {"name": "sgd", "lr": 0.001, "batch_size": 512})):
        config = {"data": {"name": "mnist"}, "gamma": 1.0, "alpha": 1.0, "trainer": trainer}
        (folder / job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    title = comparison_title(folder, sweep_table(folder)[0])
    sizes = "-".join(map(str, json.loads((folder / "0" / "summary.json").read_text())["sizes"]))
    assert title.startswith("mnist") and sizes in title
    assert "bcd: gamma=1.0, alpha=1.0" in title and "sgd: lr=0.001, batch=512" in title
