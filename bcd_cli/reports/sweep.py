"""Reports on a multirun folder: one table row per job, a heatmap, seed aggregates, a trainer comparison.

A multirun folder holds one job folder per job (``<sweep dir>/<job.num>/``), each with ``.hydra/overrides.yaml``
(the job's "key=value" overrides) and, once the job ran, metrics.csv and summary.json.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from bcd_cli.app import BASIC_SWEEPER
from bcd_cli.run.folders import MULTIRUN_FILE, is_locked
from bcd_cli.run.provenance import PROVENANCE_COLUMNS, Check, check_runs, table_cells
from bcd_cli.run.records import METRICS_FILE, descent_failures, read_metrics, read_summary
from bcd_cli.run.resume import SAVED_CONFIG
from bcd_cli.search.study import is_study_folder, write_study_report

SWEEP_SUMMARY_FILE = "sweep_summary.csv"
HEATMAP_FILE = "heatmap.png"
AGGREGATE_FILE = "sweep_aggregate.csv"
CURVES_BY_CONFIG_FILE = "curves_by_config.png"
COMPARISON_FILE = "comparison.png"
COMPARISON_CSV = "comparison.csv"
COMPARISON_MD = "comparison.md"
OVERRIDES = Path(".hydra") / "overrides.yaml"
SUMMARY_FIELDS = ["final_test_acc", "best_test_acc", "final_train_acc", "train_seconds", "wall_seconds", "descent_held"]
AGGREGATED = ["final_test_acc", "best_test_acc", "final_train_acc"]
SEED_STATS = ("mean", "std", "median", "min", "max")  # sweep_aggregate.csv's statistics over seeds, per field
COMPARED = ["final_train_acc", "final_test_acc", "best_test_acc", "train_seconds"]
# the trainer comparison: the test accuracy each method is timed to reach, and the columns of comparison.csv
TARGET_ACC = 0.90
SEEDS_LISTED = 5  # comparison.md lists each seed's value up to this many seeds, and the median and range beyond
TITLE_WIDTH = 130  # characters in a line of comparison.png's title
BCD_NAME = "bcd"  # the trainer name of BCD, plain or accelerated (conf/trainer/bcd*.yaml)
PROGRESS = ["sweep_to_target", "seconds_to_target", "seconds_per_sweep", "descent_failures", "rejected"]
COMPARISON_COLUMNS = [
    "trainer", "n_seeds", "n_left_out", *(f"{f}_{s}" for f in COMPARED for s in ("mean", "std")),
    "seconds_per_sweep_mean", "seconds_per_sweep_std", "target_acc", "n_reached_target", "sweep_to_target_mean",
    "sweep_to_target_std", "seconds_to_target_mean", "descent_failures", "rejected", "left_out",
    # each compared seed (the seed, or "job N" without one) and its values, ";"-separated in that order, nan where
    # a seed has none (never reached the target); the median, min and max of the accuracies over the seeds
    "seeds", *(f"{f}_{s}" for f in AGGREGATED for s in ("median", "min", "max")), *(f"{f}_each" for f in AGGREGATED),
    "sweep_to_target_each", "seconds_to_target_each",
]  # fmt: skip


def job_folders(folder: Path) -> list[Path]:
    """The job folders under ``folder`` (every subfolder holding .hydra/overrides.yaml), by job number."""
    found = [p.parent.parent for p in Path(folder).rglob("overrides.yaml") if p.parent.name == ".hydra"]
    jobs = [p for p in found if p.resolve() != Path(folder).resolve()]
    return sorted(jobs, key=lambda p: _job_key(p.relative_to(folder)))


def _job_key(rel: Path) -> tuple[Any, ...]:
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in rel.parts)


def read_overrides(job: Path) -> dict[str, str]:
    """The job's overrides as {key: value as written}; a leading +, ++ or ~ is dropped from the key."""
    try:
        items = yaml.safe_load((job / OVERRIDES).read_text()) or []
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, str] = {}
    for item in items if isinstance(items, list) else []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def planned_jobs(folder: Path) -> list[dict[str, str]] | None:
    """The overrides of every job the multirun in ``folder`` was to run, by job number, from its multirun.yaml;
    None where that cannot be known (no multirun.yaml, another sweeper, job folders not named by job number)."""
    try:
        saved = yaml.safe_load((Path(folder) / MULTIRUN_FILE).read_text())
        hydra = saved["hydra"]
        if (
            hydra["runtime"]["choices"].get("hydra/sweeper") != BASIC_SWEEPER
            or hydra["sweep"]["subdir"] != "${hydra.job.num}"
        ):
            return None
        params = hydra["sweeper"].get("params") or {}
        arguments = [f"{k}={v}" for k, v in params.items()] + [str(o) for o in hydra["overrides"]["task"]]
        parsed = OverridesParser.create().parse_overrides(arguments)
    except Exception:  # not a multirun folder of this kind: the job folders alone say what ran
        return None
    last = {o.get_key_element().lstrip("+~"): o for o in parsed}  # a key given twice: its last value ran
    choices = [
        [(key, str(v)) for v in o.sweep_string_iterator()] if o.is_sweep_override()
        else [(key, o.get_value_element_as_str())]
        for key, o in last.items()
    ]  # fmt: skip
    return [dict(combo) for combo in itertools.product(*choices)]  # BasicSweeper's order of the jobs


def sweep_table(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: job, its override values, status (completed, failed, interrupted; running for a job
    that runs, killed for one whose process died mid-run, missing for a job folder without a summary, not run
    for a job that a stopped multirun never started), the error of a job that failed, the summary's results,
    what produced the job (PROVENANCE_COLUMNS, from its provenance.json); and the swept keys.

    The swept keys are the override keys that take more than one value over the jobs, in override order.
    """
    jobs = job_folders(folder)
    rows, keys = [], []
    started = {job.relative_to(folder).as_posix() for job in jobs}
    for num, overrides in enumerate(planned_jobs(folder) or []):  # jobs a stopped multirun never started
        if str(num) not in started:
            keys += [k for k in overrides if k not in keys]
            rows.append({"job": str(num), **overrides, "status": "not run", "error": ""})
    for job in jobs:
        overrides = read_overrides(job)
        keys += [k for k in overrides if k not in keys]
        summary = read_summary(job)
        row: dict[str, Any] = {"job": job.relative_to(folder).as_posix(), **overrides}
        row["status"] = "missing" if summary is None else summary.get("status", "unknown")
        if row["status"] == "running" and not is_locked(job):  # no process runs it: it was killed
            row["status"] = "killed"
        row["error"] = (summary or {}).get("error", "")
        for field in SUMMARY_FIELDS:
            value = (summary or {}).get(field)
            row[field] = math.nan if value is None else value  # null (a NaN written as strict JSON): no value
        row |= table_cells(job)
        rows.append(row)
    rows.sort(key=lambda row: _job_key(Path(row["job"])))
    table = pd.DataFrame(rows, columns=["job", *keys, "status", "error", *SUMMARY_FIELDS, *PROVENANCE_COLUMNS])
    swept = [k for k in keys if table[k].nunique(dropna=False) > 1]
    return table, swept


def write_sweep_report(folder: Path | str, keys: Sequence[str] | None = None) -> list[Path]:
    """Writes the sweep report of a multirun folder and returns the files written.

    sweep_summary.csv always; heatmap.png when two keys vary (``keys`` chooses them; an Optuna search, whose
    values hardly ever repeat, has one only when ``keys`` asks); sweep_aggregate.csv and curves_by_config.png
    when ``seed`` was swept; comparison.png/.csv/.md when ``trainer`` was swept (comparison.md saying when the
    runs compared differ in code, device, CPU, threads or dtypes: ``with_provenance``); for an Optuna search, the
    study's report (bcd_cli.search.study.write_study_report).
    """
    folder = Path(folder)
    table, swept = sweep_table(folder)
    pair = _checked_keys(folder, table, swept, keys)  # before anything is written
    written = [folder / SWEEP_SUMMARY_FILE]
    table.to_csv(written[0], index=False)
    if pair is not None:
        plot_heatmap(table, pair, folder / HEATMAP_FILE)
        written.append(folder / HEATMAP_FILE)
    metrics = {job: _job_metrics(folder / job) for job in table["job"]}
    if "seed" in swept:
        groups = [k for k in swept if k != "seed"]
        aggregate_over_seeds(table, groups).to_csv(folder / AGGREGATE_FILE, index=False)
        plot_curves_by_config(table, groups, metrics, folder / CURVES_BY_CONFIG_FILE)
        written += [folder / AGGREGATE_FILE, folder / CURVES_BY_CONFIG_FILE]
    if "trainer" in swept:
        comparison = compare_trainers(table, metrics, bcd_methods=bcd_methods(folder, table))
        comparison.to_csv(folder / COMPARISON_CSV, index=False)
        compared = {f"job {job}": folder / job for kept, _ in comparison_jobs(table, metrics).values() for job in kept}
        (folder / COMPARISON_MD).write_text(with_provenance(comparison_markdown(comparison), check_runs(compared)))
        plot_comparison(table, metrics, folder / COMPARISON_FILE, title=comparison_title(folder, table))
        written += [folder / COMPARISON_CSV, folder / COMPARISON_MD, folder / COMPARISON_FILE]
    return written + write_study_report(folder)


def with_provenance(markdown: str, check: Check) -> str:
    """comparison.md with what the provenance of the runs compared says: first, where they differ, the line
    saying in what (timings from different devices are not comparable); last, the runs left out of that check."""
    head = f"{check.differ}\n\n" if check.differ else ""
    return head + markdown + "".join(f"\n{note}\n" for note in check.notes())


def check_sweep(folder: Path | str, keys: Sequence[str] | None = None) -> None:
    """ValueError where ``write_sweep_report(folder, keys)`` would refuse: no job folders, or heatmap ``keys``
    that are not two different swept keys. Writes nothing."""
    table, swept = sweep_table(Path(folder))
    _checked_keys(Path(folder), table, swept, keys)


def _checked_keys(
    folder: Path, table: pd.DataFrame, swept: list[str], keys: Sequence[str] | None
) -> tuple[str, str] | None:
    if table.empty:
        raise ValueError(f"{folder} holds no job folders (subfolders with {OVERRIDES.as_posix()})")
    if keys is None and is_study_folder(folder):  # a search's values form no grid
        return None
    return _heatmap_keys(table, swept, keys)


def _heatmap_keys(table: pd.DataFrame, swept: list[str], keys: Sequence[str] | None) -> tuple[str, str] | None:
    if keys is not None:
        keys = list(keys)
        if len(keys) != 2 or keys[0] == keys[1]:
            raise ValueError(f"the heatmap needs two different keys, got {keys}")
        results = ("job", "status", "error", *SUMMARY_FIELDS, *PROVENANCE_COLUMNS)
        unknown = [k for k in keys if k not in table.columns or k in results]
        if unknown:
            raise ValueError(f"no override key {', '.join(unknown)} in the sweep (its keys: {', '.join(swept)})")
        return keys[0], keys[1]
    if "gamma" in swept and "alpha" in swept:
        return "gamma", "alpha"
    candidates = [k for k in swept if k != "seed"]
    return (candidates[0], candidates[1]) if len(candidates) >= 2 else None


def _sorted_values(values: pd.Series) -> list[Any]:
    unique = list(dict.fromkeys(values.astype(str)))
    try:
        return sorted(unique, key=float)
    except ValueError:
        return sorted(unique)


def heatmap_grid(table: pd.DataFrame, pair: tuple[str, str], stat: str = "median") -> pd.DataFrame:
    """Final test accuracy per (row key, column key) value over the other keys and the seeds: their median
    (``stat``: or "min", "max", "count")."""
    rows, cols = pair
    data = table.assign(**{rows: table[rows].astype(str), cols: table[cols].astype(str)})
    data["final_test_acc"] = pd.to_numeric(data["final_test_acc"], errors="coerce")
    grid = data.pivot_table(index=rows, columns=cols, values="final_test_acc", aggfunc=stat, dropna=False)
    return grid.reindex(index=_sorted_values(table[rows]), columns=_sorted_values(table[cols]))


def plot_heatmap(table: pd.DataFrame, pair: tuple[str, str], path: Path) -> None:
    """Final test accuracy over two keys, the median over the seeds (and other keys), every cell annotated with it
    and, over several runs, their min-max range; the best cell outlined."""
    grid = heatmap_grid(table, pair)
    values = grid.to_numpy(dtype=float)
    low, high = (heatmap_grid(table, pair, stat).to_numpy(dtype=float) for stat in ("min", "max"))
    fig = Figure(figsize=(1.2 * values.shape[1] + 3, 0.9 * values.shape[0] + 2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="final test accuracy, median")
    ax.set_xticks(range(values.shape[1]), grid.columns)
    ax.set_yticks(range(values.shape[0]), grid.index)
    ax.set(xlabel=pair[1], ylabel=pair[0], title=f"final test accuracy over {pair[0]} x {pair[1]}, median (min-max)")
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if math.isnan(v) else f"{v:.3f}"
        if not math.isnan(v) and high[i, j] > low[i, j]:
            text += f"\n({low[i, j]:.3f}-{high[i, j]:.3f})"
        ax.text(j, i, text, ha="center", va="center", color="w" if math.isnan(v) or v < 0.6 else "k", fontsize=8)
    if np.isfinite(values).any():
        i, j = np.unravel_index(np.nanargmax(values), values.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
        ax.set_title(
            f"{ax.get_title()}\nbest {values[i, j]:.3f} at {pair[0]}={grid.index[i]}, {pair[1]}={grid.columns[j]}"
        )
    fig.savefig(path, dpi=120)


def _over_seeds(table: pd.DataFrame, groups: list[str], fields: list[str], count: str) -> pd.DataFrame:
    data = table.copy()
    for field in fields:
        data[field] = pd.to_numeric(data[field], errors="coerce")
    data = data.dropna(subset=["final_test_acc"])
    by = groups or (lambda _: "all")
    stats = data.groupby(by, sort=False)[fields].agg(list(SEED_STATS))
    stats.columns = [f"{f}_{s}" for f, s in stats.columns]
    stats.insert(0, count, data.groupby(by, sort=False).size())
    return stats.reset_index(drop=not groups)


def aggregate_over_seeds(table: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Mean, std, median, min and max (over seeds) of the final/best test and final train accuracy per combination
    of ``groups``: where seeds split (some learn, some never do), the mean lies between them and the median and
    the range say so.

    Jobs without results (no summary.json) are left out; n_seeds counts the jobs that gave results.
    """
    return _over_seeds(table, groups, AGGREGATED, "n_seeds")


def comparison_jobs(table: pd.DataFrame, metrics: Mapping[str, pd.DataFrame | None]) -> dict[str, tuple[list, list]]:
    """Per method (the ``trainer`` choice, in the table's order): its jobs compared, and those left out as
    "job N (why)". A job is compared when it completed and its metrics.csv reads back; a job that failed, was
    interrupted or killed, left no summary or was never run would bend the figures over seeds, so it is counted
    and named instead."""
    out: dict[str, tuple[list, list]] = {}
    for _, row in table.iterrows():
        kept, left = out.setdefault(_method(row), ([], []))
        if row["status"] == "completed" and metrics.get(row["job"]) is not None:
            kept.append(row["job"])
        else:
            why = "no readable metrics.csv" if row["status"] == "completed" else row["status"]
            left.append(f"job {row['job']} ({why})")
    return out


def _method(row: pd.Series) -> str:
    return "default" if pd.isna(row["trainer"]) else str(row["trainer"])


def training_seconds(frame: pd.DataFrame) -> pd.Series:
    """The cumulative training seconds at each sweep, indexed by sweep: the sum of metrics.csv's ``seconds`` up to
    it, the time of the sweeps' (or epochs') updates with the evaluation after each excluded."""
    return frame.set_index("sweep")["seconds"].cumsum()


def job_progress(frame: pd.DataFrame, target: float = TARGET_ACC) -> dict[str, float]:
    """One job's figures in the comparison, from its metrics: the first sweep at which the test accuracy reached
    ``target`` and the training seconds up to it (NaN when it never did), the mean seconds of a sweep, the
    sweeps at which the objective rose (``report.descent_failures``) and the total of the ``rejected`` column
    (NaN without that column, or with no value in it)."""
    elapsed = training_seconds(frame)
    reached = np.flatnonzero(frame["test_acc"].to_numpy(dtype=float) >= target)
    first = int(frame["sweep"].iloc[reached[0]]) if reached.size else None
    rejected = pd.to_numeric(frame["rejected"], errors="coerce") if "rejected" in frame else pd.Series(dtype=float)
    return {
        "sweep_to_target": math.nan if first is None else float(first),
        "seconds_to_target": math.nan if first is None else float(elapsed.loc[first]),
        "seconds_per_sweep": float(frame.loc[frame["sweep"] > 0, "seconds"].mean()),
        "descent_failures": float(len(descent_failures(frame))),
        "rejected": float(rejected.sum(min_count=1)),
    }


def compare_trainers(
    table: pd.DataFrame,
    metrics: Mapping[str, pd.DataFrame | None],
    *,
    bcd_methods: Collection[str] | None = None,
    target: float = TARGET_ACC,
) -> pd.DataFrame:
    """One row per method (COMPARISON_COLUMNS), over the jobs ``comparison_jobs`` compares: how many (n_seeds) and
    which were left out; the mean and std over them of the final train, final and best test accuracy, training
    seconds and seconds per sweep; the first sweep reaching test accuracy ``target`` and the seconds up to it,
    mean over the seeds that reached it (n_reached_target of them); for BCD methods, the sweeps whose objective
    rose and the extrapolations rejected, summed over the seeds (NaN for the others, and for ``rejected`` where
    no metrics file has the column). ``bcd_methods`` names the BCD methods; by default, ``bcd`` and ``bcd_*``.
    Since seeds may split (some reach the target, some never leave chance), it also gives each seed's values
    (``seeds`` and the ``*_each`` columns) and the median, min and max of the accuracies."""
    rows = []
    for method, (kept, left) in comparison_jobs(table, metrics).items():
        jobs = table[table["job"].isin(kept)]
        frames = [frame for job in kept if (frame := metrics.get(job)) is not None]
        progress = pd.DataFrame([job_progress(frame, target) for frame in frames], columns=PROGRESS)
        row: dict[str, Any] = {"trainer": method, "n_seeds": len(kept), "n_left_out": len(left)}
        for field in COMPARED:
            values = pd.to_numeric(jobs[field], errors="coerce")
            row[f"{field}_mean"], row[f"{field}_std"] = values.mean(), values.std()
        row["seconds_per_sweep_mean"] = progress["seconds_per_sweep"].mean()
        row["seconds_per_sweep_std"] = progress["seconds_per_sweep"].std()
        row["target_acc"] = target
        row["n_reached_target"] = int(progress["sweep_to_target"].notna().sum())
        row["sweep_to_target_mean"] = progress["sweep_to_target"].mean()
        row["sweep_to_target_std"] = progress["sweep_to_target"].std()
        row["seconds_to_target_mean"] = progress["seconds_to_target"].mean()
        bcd = method in bcd_methods if bcd_methods is not None else method == "bcd" or method.startswith("bcd_")
        row["descent_failures"] = progress["descent_failures"].sum() if bcd and frames else math.nan
        row["rejected"] = progress["rejected"].sum(min_count=1) if bcd else math.nan
        row["left_out"] = "; ".join(left)
        row["seeds"] = ";".join(_seed_name(job_row) for _, job_row in jobs.iterrows())
        for field in AGGREGATED:
            values = pd.to_numeric(jobs[field], errors="coerce")
            row[f"{field}_median"], row[f"{field}_min"], row[f"{field}_max"] = values.agg(["median", "min", "max"])
            row[f"{field}_each"] = _joined(values)
        row["sweep_to_target_each"] = _joined(progress["sweep_to_target"])
        row["seconds_to_target_each"] = _joined(progress["seconds_to_target"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _seed_name(row: pd.Series) -> str:
    """A compared job's seed as the comparison names it: its ``seed`` override, or "job N" without one."""
    seed = row.get("seed")
    return f"job {row['job']}" if seed is None or pd.isna(seed) else str(seed)


def _joined(values: pd.Series) -> str:
    return ";".join("nan" if pd.isna(v) else f"{float(v):.6g}" for v in values)


def seed_values(cell: Any, n: int) -> list[float]:
    """The ``n`` values of a ";"-separated ``*_each`` cell of the comparison (as written, or read back by pandas,
    which reads a single value as a number)."""
    if n == 0:
        return []
    if not isinstance(cell, str):
        return [float(cell)]
    return [float(part) for part in cell.split(";")]


def comparison_markdown(comparison: pd.DataFrame) -> str:
    """The method comparison as a markdown table, with what its columns mean, how many seeds of each method reached
    the target accuracy, and the jobs left out below it. Accuracies are each seed's value (with more than
    SEEDS_LISTED seeds, the median and the range): a mean ± std over seeds that split describes no run."""
    target = float(comparison["target_acc"].iloc[0]) if len(comparison) else TARGET_ACC
    head = [
        "method", "seeds", "final test acc", "best test acc", "final train acc",
        f"reached test acc {target:.2f} (first sweep)", f"seconds to {target:.2f}", "seconds / sweep",
        "training seconds", "objective rose", "rejected",
    ]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    reached_notes = []
    for _, row in comparison.iterrows():
        n = int(row["n_seeds"])
        sweeps = seed_values(row["sweep_to_target_each"], n)
        seconds = [v for v in seed_values(row["seconds_to_target_each"], n) if not math.isnan(v)]
        reached = [v for v in sweeps if not math.isnan(v)]
        cells = [
            str(row["trainer"]),
            f"{n} ({int(row['n_left_out'])} left out)" if row["n_left_out"] else str(n),
            *(_spread(seed_values(row[f"{field}_each"], n), lambda v: f"{v:.3f}") for field in AGGREGATED),
            "—" if n == 0 else f"{len(reached)} of {n}" + (f": {_spread(reached, _sweep)}" if reached else ""),
            _spread(seconds, _seconds),
            _pm_seconds(row["seconds_per_sweep_mean"], row["seconds_per_sweep_std"]),
            _pm_seconds(row["train_seconds_mean"], row["train_seconds_std"]),
            _number(row["descent_failures"], ".0f"),
            _number(row["rejected"], ".0f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if n:
            names = str(row["seeds"]).split(";")
            reached_notes.append(f"- {row['trainer']}: {_reached_text(names, sweeps, target)}")
    notes = [
        "",
        f"Accuracies: each seed's value, in the order of the seeds below (over more than {SEEDS_LISTED} seeds: the "
        "median, and the min-max range in brackets). A BCD sweep updates every block once; an SGD or Adam epoch is "
        "one pass over the training samples. Seconds are training time (the updates of the sweeps or epochs), "
        f"evaluation excluded; seconds / sweep and training seconds are mean ± std over seeds. Reached test acc "
        f"{target:.2f}: how many seeds reached it, and the first sweep at which each one did; seconds to it: the "
        "training seconds up to that sweep, per seed. Objective rose: the sweeps at which the objective went up, all "
        "seeds together (BCD methods). Rejected: the sweeps at which the safeguard of accelerated BCD rejected the "
        "extrapolation, all seeds together.",
    ]
    if reached_notes:
        notes += ["", *reached_notes]
    left = [f"{row['trainer']}: {row['left_out']}" for _, row in comparison.iterrows() if row["n_left_out"]]
    if left:
        notes += ["", f"Left out (failed, interrupted or without results): {'; '.join(left)}."]
    return "\n".join(lines + notes) + "\n"


def _spread(values: list[float], show: Callable[[float], str]) -> str:
    """Values over seeds as a table cell: each one, in seed order, up to SEEDS_LISTED of them; else the median and
    the min-max range."""
    if not values:
        return "—"
    if len(values) <= SEEDS_LISTED:
        return ", ".join("—" if math.isnan(v) else show(v) for v in values)
    low, mid, high = np.nanmin(values), np.nanmedian(values), np.nanmax(values)
    return f"{show(mid)} ({show(low)}–{show(high)})"


def _sweep(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _reached_text(names: list[str], sweeps: list[float], target: float) -> str:
    """Which seeds reached the target and at which sweep first, which never did: "1 of 2 seeds reached 0.90,
    first at sweep 14 (seed 1); seed 0 never did"."""
    named = [name if name.startswith("job ") else f"seed {name}" for name in names]
    hit = [f"{_sweep(s)} ({name})" for name, s in zip(named, sweeps, strict=True) if not math.isnan(s)]
    missed = [name for name, s in zip(named, sweeps, strict=True) if math.isnan(s)]
    text = f"{len(hit)} of {len(sweeps)} seeds reached test accuracy {target:.2f}"
    text += f", first at sweep {', '.join(hit)}" if hit else ""
    if hit and missed:
        text += f"; {', '.join(missed)} never did"
    return text + "."


def _pm_seconds(mean: float, std: float) -> str:
    """Seconds as mean ± std, to a precision that suits them: they span milliseconds (a small sweep) to hours."""
    if math.isnan(mean):
        return "—"
    return _seconds(mean) if math.isnan(std) else f"{_seconds(mean)} ± {_seconds(std)}"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def _number(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(float(value), spec)


def _job_metrics(job: Path) -> pd.DataFrame | None:
    try:
        return read_metrics(job / METRICS_FILE)
    except ValueError:
        return None


# how a figure over seeds draws one method's (or configuration's) seeds
SEED_ALPHA = 0.35  # a seed's own line, where a median is drawn over it
SEED_WIDTH = 0.8
BAND_ALPHA = 0.12  # the min-max band over the seeds
MEDIAN_FROM = 3  # seeds: the median of two seeds is their mean, a run that may never have existed, and their
# min-max band is the space between their own two lines


def seeds_label(n: int) -> str:
    """What a figure over seeds draws of a method with ``n`` seeds (``_seed_lines``), for its legend."""
    if n >= MEDIAN_FROM:
        return f"median, min-max over {n} seeds"
    return "1 seed" if n == 1 else f"each of {n} seeds"


def _shown(values: pd.DataFrame, column: str, log: bool) -> pd.DataFrame:
    """The values a panel can show: accuracies clipped to [0, 1]; on a log axis, the values <= 0 left out (NaN)."""
    if column.endswith("_acc"):
        values = values.clip(0.0, 1.0)
    return values.where(values > 0) if log else values


def _seed_lines(
    ax: Axes, frames: list[pd.DataFrame], column: str, x: str, label: str, color: str, *, log: bool = False
) -> None:
    """Every frame (one seed) as its own line of ``column``, against the sweep or against its own training seconds
    (``training_seconds``); from MEDIAN_FROM seeds, the seed lines thin and faint under the min-max band over the
    seeds and their median, a bold line, sweep by sweep, both against the sweep or the median over the seeds of
    the training seconds. Accuracies are clipped to [0, 1]; with ``log``, values <= 0 are left out. The seed
    lines carry the gid "seed", the band "band", the median "median"."""
    stacked = _shown(pd.concat([frame.set_index("sweep")[column] for frame in frames], axis=1), column, log)
    where = stacked.index.to_numpy()
    seed_x = [where] * len(frames)
    if x == "seconds":
        elapsed = pd.concat([training_seconds(frame) for frame in frames], axis=1).reindex(stacked.index)
        seed_x = [elapsed.iloc[:, i].to_numpy() for i in range(len(frames))]
        where = elapsed.median(axis=1).to_numpy()
    median = len(frames) >= MEDIAN_FROM
    for i, xs in enumerate(seed_x):
        ax.plot(
            xs, stacked.iloc[:, i].to_numpy(), color=color, gid="seed", alpha=SEED_ALPHA if median else 0.9,
            lw=SEED_WIDTH if median else 1.2, label=label if i == 0 and not median else "_nolegend_",
        )  # fmt: skip
    if median:
        low, high = stacked.min(axis=1).to_numpy(), stacked.max(axis=1).to_numpy()
        ax.fill_between(where, low, high, color=color, alpha=BAND_ALPHA, lw=0, gid="band")
        ax.plot(where, stacked.median(axis=1).to_numpy(), color=color, lw=2, label=label, gid="median")


def _grouped_metrics(
    table: pd.DataFrame, groups: list[str], metrics: dict[str, pd.DataFrame | None]
) -> dict[str, list[pd.DataFrame]]:
    out: dict[str, list[pd.DataFrame]] = {}
    for _, row in table.iterrows():
        frame = metrics.get(row["job"])
        if frame is None:
            continue
        label = ", ".join(f"{k}={row[k]}" for k in groups) or "all"
        out.setdefault(label, []).append(frame)
    return out


def plot_curves_by_config(
    table: pd.DataFrame, groups: list[str], metrics: dict[str, pd.DataFrame | None], path: Path
) -> Figure:
    """Test and train accuracy against the sweep per combination of ``groups``: each seed its own line, the
    min-max band and the median over the seeds (``_seed_lines``). Returns the figure saved to ``path``."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    lines = _grouped_metrics(table, groups, metrics)
    for ax, column, name in zip(axes, ["test_acc", "train_acc"], ["test", "train"], strict=True):
        for n, (label, frames) in enumerate(lines.items()):
            _seed_lines(ax, frames, column, "sweep", f"{label}: {seeds_label(len(frames))}", f"C{n % 10}")
        ax.set(xlabel="sweep / epoch", ylabel=f"{name} accuracy", title=f"{name} accuracy, every seed")
        ax.set_ylim(0, 1)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    if lines:
        axes[1].legend(fontsize=8, loc="upper left")  # accuracies rise late: the upper left stays empty
    else:
        axes[0].text(0.5, 0.5, "no job left metrics", ha="center", va="center", transform=axes[0].transAxes)
    fig.savefig(path, dpi=120)
    return fig


def _saved_configs(folder: Path, table: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Each job's saved config (.hydra/config.yaml) as a dict, for the jobs whose config reads back."""
    out: dict[str, dict[str, Any]] = {}
    for job in table["job"]:
        try:
            cfg = yaml.safe_load((Path(folder) / job / SAVED_CONFIG).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(cfg, dict):
            out[job] = cfg
    return out


def bcd_methods(folder: Path, table: pd.DataFrame) -> set[str]:
    """The methods (``trainer`` choices) of the table trained by BCD, by the trainer ``name`` of their saved
    configs (``bcd`` for trainer=bcd and trainer=bcd_accelerated); a method without a readable config is BCD
    when it is named ``bcd`` or ``bcd_*``."""
    configs = _saved_configs(folder, table)
    out = set()
    for _, row in table.iterrows():
        method, cfg = _method(row), configs.get(row["job"])
        trainer = (cfg or {}).get("trainer")
        name = trainer.get("name") if isinstance(trainer, dict) else None
        if name == BCD_NAME or (name is None and (method == BCD_NAME or method.startswith(f"{BCD_NAME}_"))):
            out.add(method)
    return out


def _sizes_text(sizes: list[Any]) -> str:
    """Layer sizes with a run of equal widths written once: 784-(600x10)-10."""
    parts = []
    for size, run in itertools.groupby(sizes):
        count = len(list(run))
        parts.append(f"({size}x{count})" if count > 2 else "-".join([str(size)] * count))
    return "-".join(parts)


def comparison_title(folder: Path, table: pd.DataFrame) -> str:
    """What the compared runs trained: data and samples, network; then, on lines of at most TITLE_WIDTH characters,
    each method's own settings (gamma, alpha and the largest extrapolation weight for accelerated BCD, step size
    and batch for SGD/Adam)."""
    head, settings = "", dict[str, str]()
    configs = _saved_configs(folder, table)
    for _, row in table.iterrows():
        cfg = configs.get(row["job"])
        if cfg is None:
            continue
        summary = read_summary(Path(folder) / row["job"]) or {}
        trainer = cfg.get("trainer") or {}
        method = _method(row)
        if not head and isinstance(summary.get("sizes"), list):
            n = f", n_train={summary['n_train']}" if "n_train" in summary else ""
            head = f"{(cfg.get('data') or {}).get('name', '?')}{n}, {_sizes_text(summary['sizes'])}"
        if trainer.get("name", BCD_NAME) == BCD_NAME:
            beta = f", extrapolation={trainer['extrapolation']}" if trainer.get("extrapolation") else ""  # 0: plain
            settings.setdefault(method, f"{method}: gamma={cfg.get('gamma')}, alpha={cfg.get('alpha')}{beta}")
        else:
            settings.setdefault(method, f"{method}: lr={trainer.get('lr')}, batch={trainer.get('batch_size')}")
    return "\n".join(filter(None, [head, *_packed(list(settings.values()), TITLE_WIDTH)]))


def _packed(parts: list[str], width: int) -> list[str]:
    """``parts`` joined by "; " into lines of at most ``width`` characters where they fit, a part never split."""
    lines: list[str] = []
    for part in parts:
        if lines and len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += f"; {part}"
        else:
            lines.append(part)
    return lines


# the panels of comparison.png: (metrics column, x axis: sweep or training seconds, y label)
COMPARISON_PANELS = [
    ("test_acc", "sweep", "test accuracy"),
    ("test_acc", "seconds", "test accuracy"),
    ("train_acc", "sweep", "train accuracy"),
    ("train_loss", "sweep", "training loss R(net(X); Y)"),
]
X_LABELS = {
    "sweep": "sweep (BCD) / epoch (SGD, Adam)",
    "seconds": "training seconds (cumulative; evaluation excluded)",
}


def plot_comparison(
    table: pd.DataFrame,
    metrics: Mapping[str, pd.DataFrame | None],
    path: Path,
    title: str = "",
    target: float = TARGET_ACC,
) -> Figure:
    """Figure 1 of the paper over seeds: per method, the test accuracy against the sweep (epoch) and against the
    training seconds, the train accuracy and the training loss against the sweep, each seed its own line with the
    min-max band and the median over the method's seeds (``_seed_lines``). A loss panel is on a log scale when its
    values are >= 0, those = 0 left out. The legend names each method with its seeds, how many of them reached
    test accuracy ``target`` and the jobs left out (``comparison_jobs``). Returns the figure saved to ``path``."""
    fig = Figure(figsize=(13, 9.5), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    groups = comparison_jobs(table, metrics)
    methods = {
        method: ([frame for job in kept if (frame := metrics.get(job)) is not None], left)
        for method, (kept, left) in groups.items()
    }
    for ax, (column, x, name) in zip(axes, COMPARISON_PANELS, strict=True):
        values = pd.concat([frame[column] for frames, _ in methods.values() for frame in frames] or [pd.Series()])
        values = pd.to_numeric(values, errors="coerce").dropna()
        log = not column.endswith("_acc") and bool((values > 0).any()) and not (values < 0).any()
        for n, (method, (frames, left)) in enumerate(methods.items()):
            if frames:
                reached = sum(not math.isnan(job_progress(frame, target)["sweep_to_target"]) for frame in frames)
                label = f"{method}: {seeds_label(len(frames))}; {reached} of {len(frames)} reached {target:.2f}"
                label += f"; {len(left)} left out" if left else ""
                _seed_lines(ax, frames, column, x, label, f"C{n % 10}", log=log)
        ax.set(xlabel=X_LABELS[x], ylabel=name, title=f"{name} against {'training time' if x == 'seconds' else x}")
        if column.endswith("_acc"):
            ax.set_ylim(0, 1)
        elif log:
            ax.set_yscale("log")
        if x == "sweep":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole sweeps, never 2.5
        ax.grid(alpha=0.3, which="both")
    if any(frames for frames, _ in methods.values()):
        axes[0].legend(fontsize=8, loc="upper left")  # accuracies rise late: the upper left stays empty
    else:
        axes[0].text(0.5, 0.5, "no job left metrics", ha="center", va="center", transform=axes[0].transAxes)
    counts = sorted({len(frames) for frames, _ in methods.values() if frames})
    fig.suptitle("\n".join(filter(None, [title, _seeds_caption(counts)])))
    fig.savefig(path, dpi=120)
    return fig


def _seeds_caption(counts: list[int]) -> str:
    """What the figure draws over seeds, for methods with these numbers of seeds."""
    if not counts or counts == [1]:
        return ""
    n = str(counts[0]) if len(counts) == 1 else "each method's"
    if counts[-1] < MEDIAN_FROM:
        return "each seed its own line (no median or band: over two seeds the median is their mean)"
    some = f" (methods with {MEDIAN_FROM} or more)" if counts[0] < MEDIAN_FROM else ""
    return f"thin lines: each seed; bold: median, band: min-max over {n} seeds{some}"
