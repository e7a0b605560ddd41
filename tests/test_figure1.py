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
    _job_metrics,
    _seed_lines,
    compare_trainers,
    comparison_markdown,
    job_progress,
    plot_comparison,
    plot_curves_by_config,
    sweep_table,
    training_seconds,
    write_sweep_report,
)
from bcd_cli.run.records import REQUIRED_COLUMNS, read_metrics
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
    assert bcd_cells[2:5] == ["0.930, 0.910, 0.860", "0.930, 0.910, 0.860", "0.930, 0.910, 0.860"]  # each seed's
    assert bcd_cells[5:7] == ["2 of 3: 3, 5", "3.0, 10.0"] and sgd_cells[5:7] == ["0 of 2", "—"]
    assert bcd_cells[9:] == ["2", "3 |"] and sgd_cells[9:] == ["—", "— |"]
    assert sgd_cells[1] == "2 (2 left out)"
    assert (
        "- bcd: 2 of 3 seeds reached test accuracy 0.90, first at sweep 3 (seed 0), 5 (seed 1); seed 2 never did."
        in lines
    )
    assert "- sgd: 0 of 2 seeds reached test accuracy 0.90." in lines
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
    third = metrics_frame([0.2, 0.4, 0.8, 0.9], [2.0, 2.0, 2.0])
    assert training_seconds(first).tolist() == [0.0, 1.0, 3.0, 7.0]
    ax = Figure().subplots()
    _seed_lines(ax, [first, second, third], "test_acc", "seconds", "bcd", "C0")
    lines = ax.get_lines()
    assert [line.get_gid() for line in lines] == ["seed", "seed", "seed", "median"]
    assert lines[0].get_xdata().tolist() == pytest.approx([0.0, 1.0, 3.0, 7.0])  # each seed at its own seconds
    assert lines[1].get_xdata().tolist() == pytest.approx([0.0, 3.0, 5.0, 7.0])
    assert lines[1].get_ydata().tolist() == pytest.approx([0.3, 0.5, 0.9, 0.9])
    assert lines[3].get_xdata().tolist() == pytest.approx([0.0, 2.0, 4.0, 7.0])  # the median seconds, sweep by sweep
    assert lines[3].get_ydata().tolist() == pytest.approx([0.2, 0.5, 0.8, 0.9])
    [band] = [c for c in ax.collections if c.get_gid() == "band"]
    xs = np.concatenate([path.vertices[:, 0] for path in band.get_paths()])
    assert set(np.round(xs, 9)) == {0.0, 2.0, 4.0, 7.0}
    ax = Figure().subplots()
    _seed_lines(ax, [first, second], "test_acc", "sweep", "bcd", "C0")
    assert [line.get_gid() for line in ax.get_lines()] == ["seed", "seed"]  # two seeds: no median, their mean
    assert not ax.collections  # nor a band, the space between their own lines
    assert ax.get_lines()[0].get_xdata().tolist() == [0, 1, 2, 3]


# --- seeds that split: one learns, another never leaves chance ----------------------------------------------

CHANCE = 0.115  # the test accuracy of a network that answers one class for every image
SWEEPS = 30


def learning(first: int, top: float = 0.96) -> list[float]:
    """A test accuracy that leaves chance and passes 0.90 exactly at sweep ``first``."""
    rise = np.clip(np.arange(SWEEPS + 1) / first, 0, None)
    return list(np.minimum(CHANCE + (0.90 - CHANCE) * rise, top))


def write_job(folder: Path, trainer: str, seed: int, acc: list[float], loss: list[float]) -> None:
    """A completed job folder as bcd-train leaves it: overrides, metrics.csv (one row per sweep), summary.json."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(f"- trainer={trainer}\n- seed={seed}\n")
    frame = pd.DataFrame({column: 0.0 for column in REQUIRED_COLUMNS}, index=range(len(acc)))
    frame["sweep"] = range(len(acc))
    frame["seconds"] = [0.0] + [1.0] * (len(acc) - 1)
    frame["objective"] = frame["loss"] = frame["train_loss"] = loss
    frame["train_acc"] = frame["test_acc"] = acc
    frame.to_csv(folder / "metrics.csv", index=False)
    summary = {
        "status": "completed", "final_test_acc": acc[-1], "best_test_acc": max(acc), "final_train_acc": acc[-1],
        "train_seconds": float(len(acc) - 1), "wall_seconds": float(len(acc)), "descent_held": True,
    }  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.fixture
def split_seeds(tmp_path: Path) -> Path:
    """A multirun folder: adam's seed 0 stays at chance and seed 1 learns; bcd's seeds 0 and 1 learn (reaching
    0.90 at sweeps 14 and 22) and seed 2 stays at chance, its training loss reaching 0 at the last sweep."""
    stuck_loss = [4000.0] * (SWEEPS + 1)
    falling = list(np.geomspace(4000.0, 50.0, SWEEPS + 1))
    jobs = [
        ("adam", 0, [CHANCE] * (SWEEPS + 1), stuck_loss),
        ("adam", 1, learning(14), falling),
        ("bcd", 0, learning(14), falling),
        ("bcd", 1, learning(22), falling),
        ("bcd", 2, [CHANCE] * (SWEEPS + 1), [*stuck_loss[:-1], 0.0]),
    ]
    for num, (trainer, seed, acc, loss) in enumerate(jobs):
        write_job(tmp_path / "sweep" / str(num), trainer, seed, acc, loss)
    return tmp_path / "sweep"


def band_ys(ax) -> np.ndarray:
    bands = [c for c in ax.collections if c.get_gid() == "band"]
    assert len(bands) == 1  # bcd's, over 3 seeds
    return np.concatenate([path.vertices[:, 1] for band in bands for path in band.get_paths()])


def test_the_comparison_figure_draws_every_seed_and_bounded_bands(split_seeds: Path):
    table, _ = sweep_table(split_seeds)
    metrics = {job: _job_metrics(split_seeds / job) for job in table["job"]}
    fig = plot_comparison(table, metrics, split_seeds / "comparison.png")
    axes = fig.axes
    for ax in axes:  # one line per seed, in its method's colour; a median only over 3 seeds or more
        seeds = [line for line in ax.get_lines() if line.get_gid() == "seed"]
        assert len(seeds) == 5
        assert len({line.get_color() for line in seeds[:2]}) == 1 and seeds[0].get_color() != seeds[2].get_color()
        [median] = [line for line in ax.get_lines() if line.get_gid() == "median"]
        assert median.get_color() == seeds[2].get_color()  # bcd's, over 3 seeds; adam's 2 seeds have none
    adam = [line.get_ydata() for line in axes[0].get_lines()[:2]]
    assert np.max(adam[0]) == pytest.approx(CHANCE) and np.max(adam[1]) == pytest.approx(0.96)  # the split shows
    for ax in axes[:3]:  # accuracies: the min-max bands stay in what an accuracy can be
        ys = band_ys(ax)
        assert ys.min() >= CHANCE - 1e-9 and ys.max() <= 0.96 + 1e-9
        assert ax.get_ylim() == (0, 1)
    loss = axes[3]
    assert loss.get_yscale() == "log"
    drawn = np.concatenate([np.asarray(line.get_ydata(), dtype=float) for line in loss.get_lines()])
    assert np.nanmin(drawn) > 0 and np.isnan(drawn).sum() >= 1  # bcd seed 2's loss of 0 is left out, not drawn
    assert band_ys(loss).min() > 0
    legend = [text.get_text() for text in axes[0].get_legend().get_texts()]
    assert legend == [
        "adam: each of 2 seeds; 1 of 2 reached 0.90",
        "bcd: median, min-max over 3 seeds; 2 of 3 reached 0.90",
    ]
    assert "median, band: min-max over each method's seeds" in fig.get_suptitle()


def test_the_curves_by_config_draw_every_seed(split_seeds: Path):
    table, _ = sweep_table(split_seeds)
    metrics = {job: _job_metrics(split_seeds / job) for job in table["job"]}
    fig = plot_curves_by_config(table, ["trainer"], metrics, split_seeds / "curves_by_config.png")
    for ax in fig.axes:
        assert [line.get_gid() for line in ax.get_lines()] == ["seed"] * 2 + ["seed"] * 3 + ["median"]
        ys = band_ys(ax)
        assert 0 <= ys.min() and ys.max() <= 1
    legend = [text.get_text() for text in fig.axes[1].get_legend().get_texts()]
    assert legend == ["trainer=adam: each of 2 seeds", "trainer=bcd: median, min-max over 3 seeds"]


def test_the_comparison_table_counts_the_seeds_that_reached_the_target(split_seeds: Path):
    write_sweep_report(split_seeds)
    lines = (split_seeds / "comparison.md").read_text().splitlines()
    adam, bcd = lines[2].split(" | "), lines[3].split(" | ")
    assert adam[:6] == ["| adam", "2", "0.115, 0.960", "0.115, 0.960", "0.115, 0.960", "1 of 2: 14"]
    assert bcd[:6] == [
        "| bcd",
        "3",
        "0.960, 0.960, 0.115",
        "0.960, 0.960, 0.115",
        "0.960, 0.960, 0.115",
        "2 of 3: 14, 22",
    ]
    assert bcd[6] == "14.0, 22.0"  # the training seconds up to each one's sweep
    assert "- adam: 1 of 2 seeds reached test accuracy 0.90, first at sweep 14 (seed 1); seed 0 never did." in lines
    assert (
        "- bcd: 2 of 3 seeds reached test accuracy 0.90, first at sweep 14 (seed 0), 22 (seed 1); seed 2 never did."
        in lines
    )
    comparison = pd.read_csv(split_seeds / "comparison.csv").set_index("trainer")
    assert comparison.loc["adam", "n_reached_target"] == 1 and comparison.loc["bcd", "n_reached_target"] == 2
    assert comparison.loc["adam", "final_test_acc_min"] == pytest.approx(CHANCE)
    assert comparison.loc["bcd", "final_test_acc_median"] == pytest.approx(0.96)
    assert comparison.loc["bcd", "sweep_to_target_each"] == "14;22;nan"
    aggregate = pd.read_csv(split_seeds / "sweep_aggregate.csv").set_index("trainer")
    assert aggregate.loc["bcd", "final_test_acc_median"] == pytest.approx(0.96)
    assert (aggregate.loc["adam", "final_test_acc_min"], aggregate.loc["adam", "final_test_acc_max"]) == pytest.approx(
        (CHANCE, 0.96)
    )


def test_many_seeds_are_summed_up_by_median_and_range():
    frames = {str(i): metrics_frame([0.1, 0.5, 0.2 + 0.1 * i], [1.0, 1.0]) for i in range(7)}
    table = comparison_table([(str(i), "sgd", "completed") for i in range(7)], frames)
    cells = comparison_markdown(compare_trainers(table, frames)).splitlines()[2].split(" | ")
    assert cells[2] == "0.500 (0.200–0.800)" and cells[5] == "0 of 7"


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


def test_the_cut_as_idx_files_reads_as_mnist_itself(tmp_path: Path, capsys, bcd_train):
    rng = np.random.default_rng(1)
    images, labels = rng.integers(0, 256, (40, 28, 28)), np.arange(40) % 10
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images, gz=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    out = tmp_path / "cut"
    assert load_script().main([str(tmp_path), "--n-train", "30", "--n-test", "10", "--idx", str(out)]) == 0
    from bcd_cli.data.loaders import read_idx

    assert read_idx(out / "train-images-idx3-ubyte.gz", images=True).numpy().tolist() == images[:30].tolist()
    assert read_idx(out / "train-labels-idx1-ubyte.gz", images=False).numpy().tolist() == labels[:30].tolist()
    assert read_idx(out / "t10k-images-idx3-ubyte.gz", images=True).numpy().tolist() == images[-10:].tolist()
    assert read_idx(out / "t10k-labels-idx1-ubyte.gz", images=False).numpy().tolist() == labels[-10:].tolist()
    code, stderr = bcd_train(*TINY, "data=mnist", f"data.root={out}", "data.n_train=null", "data.n_test=null",
                             cwd=tmp_path)  # fmt: skip
    assert code == 0, stderr
    summary = json.loads(next(tmp_path.glob("outputs/*/*/summary.json")).read_text())
    assert (summary["n_train"], summary["n_test"]) == (30, 10)


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
