"""Reports on a multirun folder: one table row per job, a heatmap, seed aggregates, a trainer comparison.

A multirun folder holds one job folder per job (``<sweep dir>/<job.num>/``), each with ``.hydra/overrides.yaml``
(the job's "key=value" overrides) and, once the job ran, metrics.csv and summary.json.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
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
from bcd_cli.folders import MULTIRUN_FILE, is_locked
from bcd_cli.report import METRICS_FILE, read_metrics, read_summary
from bcd_cli.resume import SAVED_CONFIG
from bcd_cli.search import is_study_folder, write_study_report

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
COMPARED = ["final_train_acc", "final_test_acc", "best_test_acc", "train_seconds"]


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
    choices = [
        [(o.get_key_element().lstrip("+~"), str(v)) for v in o.sweep_string_iterator()]
        if o.is_sweep_override()
        else [(o.get_key_element().lstrip("+~"), o.get_value_element_as_str())]
        for o in parsed
    ]  # fmt: skip
    return [dict(combo) for combo in itertools.product(*choices)]  # BasicSweeper's order of the jobs


def sweep_table(folder: Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per job: job, its override values, status (completed, failed, interrupted; running for a job
    that runs, killed for one whose process died mid-run, missing for a job folder without a summary, not run
    for a job that a stopped multirun never started), the error of a job that failed, the summary's results;
    and the swept keys.

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
        rows.append(row)
    rows.sort(key=lambda row: _job_key(Path(row["job"])))
    table = pd.DataFrame(rows, columns=["job", *keys, "status", "error", *SUMMARY_FIELDS])
    swept = [k for k in keys if table[k].nunique(dropna=False) > 1]
    return table, swept


def write_sweep_report(folder: Path | str, keys: Sequence[str] | None = None) -> list[Path]:
    """Writes the sweep report of a multirun folder and returns the files written.

    sweep_summary.csv always; heatmap.png when two keys vary (``keys`` chooses them; an Optuna search, whose
    values hardly ever repeat, has one only when ``keys`` asks); sweep_aggregate.csv and curves_by_config.png
    when ``seed`` was swept; comparison.png/.csv/.md when ``trainer`` was swept; for an Optuna search, the
    study's report (bcd_cli.search.write_study_report).
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
        comparison = compare_trainers(table)
        comparison.to_csv(folder / COMPARISON_CSV, index=False)
        (folder / COMPARISON_MD).write_text(comparison_markdown(comparison))
        plot_comparison(table, metrics, folder / COMPARISON_FILE, title=comparison_title(folder, table))
        written += [folder / COMPARISON_CSV, folder / COMPARISON_MD, folder / COMPARISON_FILE]
    return written + write_study_report(folder)


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
        unknown = [k for k in keys if k not in table.columns or k in ("job", "status", "error", *SUMMARY_FIELDS)]
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


def heatmap_grid(table: pd.DataFrame, pair: tuple[str, str]) -> pd.DataFrame:
    """Mean final test accuracy per (row key, column key) value, over the other keys and the seeds."""
    rows, cols = pair
    data = table.assign(**{rows: table[rows].astype(str), cols: table[cols].astype(str)})
    data["final_test_acc"] = pd.to_numeric(data["final_test_acc"], errors="coerce")
    grid = data.pivot_table(index=rows, columns=cols, values="final_test_acc", aggfunc="mean", dropna=False)
    return grid.reindex(index=_sorted_values(table[rows]), columns=_sorted_values(table[cols]))


def plot_heatmap(table: pd.DataFrame, pair: tuple[str, str], path: Path) -> None:
    """Final test accuracy over two keys, every cell annotated, the best one outlined."""
    grid = heatmap_grid(table, pair)
    values = grid.to_numpy(dtype=float)
    fig = Figure(figsize=(1.2 * values.shape[1] + 3, 0.9 * values.shape[0] + 2), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    fig.colorbar(image, ax=ax, label="final test accuracy")
    ax.set_xticks(range(values.shape[1]), grid.columns)
    ax.set_yticks(range(values.shape[0]), grid.index)
    ax.set(xlabel=pair[1], ylabel=pair[0], title=f"final test accuracy over {pair[0]} x {pair[1]}")
    for (i, j), v in np.ndenumerate(values):
        text = "n/a" if math.isnan(v) else f"{v:.3f}"
        ax.text(j, i, text, ha="center", va="center", color="w" if math.isnan(v) or v < 0.6 else "k")
    if np.isfinite(values).any():
        i, j = np.unravel_index(np.nanargmax(values), values.shape)
        ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=3))
        ax.set_title(
            f"{ax.get_title()}\nbest {values[i, j]:.3f} at {pair[0]}={grid.index[i]}, {pair[1]}={grid.columns[j]}"
        )
    fig.savefig(path, dpi=120)


def _mean_std(table: pd.DataFrame, groups: list[str], fields: list[str], count: str) -> pd.DataFrame:
    data = table.copy()
    for field in fields:
        data[field] = pd.to_numeric(data[field], errors="coerce")
    data = data.dropna(subset=["final_test_acc"])
    by = groups or (lambda _: "all")
    stats = data.groupby(by, sort=False)[fields].agg(["mean", "std"])
    stats.columns = [f"{f}_{s}" for f, s in stats.columns]
    stats.insert(0, count, data.groupby(by, sort=False).size())
    return stats.reset_index(drop=not groups)


def aggregate_over_seeds(table: pd.DataFrame, groups: list[str]) -> pd.DataFrame:
    """Mean and std (over seeds) of the final/best test and final train accuracy per combination of ``groups``.

    Jobs without results (no summary.json) are left out; n_seeds counts the jobs that gave results.
    """
    return _mean_std(table, groups, AGGREGATED, "n_seeds")


def compare_trainers(table: pd.DataFrame) -> pd.DataFrame:
    """Per trainer: mean and std over its jobs (seeds) of the final accuracies and seconds, and the job count."""
    return _mean_std(table, ["trainer"], COMPARED, "n_seeds")


def comparison_markdown(comparison: pd.DataFrame) -> str:
    """The trainer comparison as a markdown table, mean +- std over seeds."""
    head = ["trainer", "final train acc", "final test acc", "best test acc", "seconds", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in comparison.iterrows():
        cells = [str(row["trainer"])]
        for field in COMPARED:
            digits = 1 if field == "train_seconds" else 3
            cells.append(_pm(row[f"{field}_mean"], row[f"{field}_std"], digits))
        cells.append(str(int(row["n_seeds"])))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" if math.isnan(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _job_metrics(job: Path) -> pd.DataFrame | None:
    try:
        return read_metrics(job / METRICS_FILE)
    except ValueError:
        return None


def _band(ax: Axes, frames: list[pd.DataFrame], column: str, label: str, color: str) -> None:
    """The mean of ``column`` over the frames against the sweep, with a +-std band when several."""
    stacked = pd.concat([f.set_index("sweep")[column] for f in frames], axis=1)
    mean, std = stacked.mean(axis=1), stacked.std(axis=1)
    ax.plot(mean.index, mean.to_numpy(), label=f"{label} (n={len(frames)})" if len(frames) > 1 else label, color=color)
    if len(frames) > 1:
        ax.fill_between(mean.index, (mean - std).to_numpy(), (mean + std).to_numpy(), alpha=0.2, color=color)


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
) -> None:
    """Test and train accuracy against the sweep, one line per combination of ``groups``, mean +- std over seeds."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    lines = _grouped_metrics(table, groups, metrics)
    for ax, column, name in zip(axes, ["test_acc", "train_acc"], ["test", "train"], strict=True):
        for n, (label, frames) in enumerate(lines.items()):
            _band(ax, frames, column, label, f"C{n % 10}")
        ax.set(xlabel="sweep / epoch", ylabel=f"{name} accuracy", title=f"{name} accuracy, mean ± std over seeds")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    if lines:
        axes[1].legend(fontsize=8, loc="lower right")
    else:
        axes[0].text(0.5, 0.5, "no job left metrics", ha="center", va="center", transform=axes[0].transAxes)
    fig.savefig(path, dpi=120)


def comparison_title(folder: Path, table: pd.DataFrame) -> str:
    """What the compared runs trained: data and samples, network, and each trainer's own settings."""
    head, settings = "", dict[str, str]()
    for job in table["job"]:
        try:
            cfg = yaml.safe_load((Path(folder) / job / SAVED_CONFIG).read_text()) or {}
        except (OSError, yaml.YAMLError):
            continue
        summary = read_summary(Path(folder) / job) or {}
        trainer = cfg.get("trainer") or {}
        name = str(trainer.get("name", "?"))
        if not head and isinstance(summary.get("sizes"), list):
            sizes = "-".join(map(str, summary["sizes"]))
            n = f", n_train={summary['n_train']}" if "n_train" in summary else ""
            head = f"{(cfg.get('data') or {}).get('name', '?')}{n}, {sizes}"
        if name == "bcd":
            settings.setdefault(name, f"bcd: gamma={cfg.get('gamma')}, alpha={cfg.get('alpha')}")
        else:
            settings.setdefault(name, f"{name}: lr={trainer.get('lr')}, batch={trainer.get('batch_size')}")
    return "; ".join(filter(None, [head, *settings.values()]))


def plot_comparison(table: pd.DataFrame, metrics: dict[str, pd.DataFrame | None], path: Path, title: str = "") -> None:
    """Train and test accuracy against the epoch, one line per trainer (Figure 1 of the paper)."""
    fig = Figure(figsize=(12, 4.5), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    lines = _grouped_metrics(table, ["trainer"], metrics)
    for ax, column, name in zip(axes, ["train_acc", "test_acc"], ["train", "test"], strict=True):
        for n, (label, frames) in enumerate(lines.items()):
            _band(ax, frames, column, label.removeprefix("trainer="), f"C{n % 10}")
        ax.set(xlabel="epoch (BCD sweep)", ylabel=f"{name} accuracy", title=f"{name} accuracy")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs, never 2.5
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    if lines:
        axes[0].legend()
    seeds = " (mean ± std over seeds)" if "seed" in table else ""
    fig.suptitle(f"{title}{seeds}" if title else f"trainer comparison{seeds}")
    fig.savefig(path, dpi=120)
