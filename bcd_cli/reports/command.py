"""The ``bcd-report`` command: regenerate a run's or a multirun's reports from the files on disk."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bcd_cli.errors import ConfigError
from bcd_cli.reports.sweep import check_sweep, job_folders, write_sweep_report
from bcd_cli.run.folders import is_locked
from bcd_cli.run.provenance import PROVENANCE_FILE, ProvenanceError, check_runs, describe, read_provenance
from bcd_cli.run.records import (
    CONVERGENCE_FILE,
    CURVES_FILE,
    METRICS_FILE,
    SUMMARY_FILE,
    json_text,
    plot_convergence,
    plot_curves,
    read_metrics,
    run_title,
    summarize,
)
from bcd_cli.run.resume import saved_config


class ReportError(Exception):
    """Bad input to bcd-report: one line, exit status 2."""


def regenerate_run(folder: Path) -> list[Path]:
    """curves.png and convergence.png from metrics.csv, and summary.json's metric fields (its others kept).

    metrics.csv is checked first: a damaged one is refused (ReportError) with every file left as it was.
    The three files are drawn into temporary files beside them and only then renamed over them.
    """
    try:
        metrics = read_metrics(folder / METRICS_FILE)
    except ValueError as err:
        raise ReportError(str(err)) from err
    summary_path = folder / SUMMARY_FILE
    try:
        old = json.loads(summary_path.read_text())
    except (OSError, ValueError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    summary = {**old, **summarize(metrics)}
    if summary.get("status") == "running" and not is_locked(folder):  # no process runs it: it was killed
        summary["status"] = "killed"
    title = _title(folder, summary)
    targets = [summary_path, folder / CURVES_FILE, folder / CONVERGENCE_FILE]
    temps = [path.with_name(f".{path.stem}.tmp{path.suffix}") for path in targets]  # the suffix: the format
    try:
        temps[0].write_text(json_text(summary))
        plot_curves(metrics, temps[1], title=title)
        plot_convergence(metrics, temps[2], title=title)
        for tmp, path in zip(temps, targets, strict=True):
            os.replace(tmp, path)
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return targets


def _title(folder: Path, summary: dict[str, Any]) -> str:
    """The title bcd-train gives the run's plots (``report.run_title``), from the folder's saved config where it is
    readable and summary.json; the folder's name when neither says anything."""
    try:
        config: Mapping[str, Any] = saved_config(folder)
    except ConfigError:
        config = {}
    return run_title(config, summary) or folder.name


def report(folder: Path, keys: list[str] | None = None) -> list[Path]:
    """The reports of a run folder, or of every job of a multirun folder and then the sweep report."""
    if not folder.exists():
        raise ReportError(f"{folder} does not exist; expected a run folder (with {METRICS_FILE}) or a multirun folder")
    if not folder.is_dir():
        raise ReportError(f"{folder} is not a folder; expected a run folder (with {METRICS_FILE}) or a multirun folder")
    if (folder / METRICS_FILE).exists():
        return regenerate_run(folder)
    jobs = job_folders(folder)
    if not jobs:
        raise ReportError(
            f"{folder} has no {METRICS_FILE} and no job folders (with .hydra/overrides.yaml); "
            "expected a run folder or a multirun folder"
        )
    try:
        check_sweep(folder, keys)  # before any job's reports are rewritten
    except ValueError as err:
        raise ReportError(str(err)) from err
    written: list[Path] = []
    for job in jobs:
        if not (job / METRICS_FILE).exists():
            print(f"bcd-report: skipped {job}: no {METRICS_FILE}", file=sys.stderr)
            continue
        try:
            written += regenerate_run(job)
        except ReportError as err:
            print(f"bcd-report: skipped {job}: {err}", file=sys.stderr)
    try:
        written += write_sweep_report(folder, keys=keys)
    except ValueError as err:
        raise ReportError(str(err)) from err
    return written


def provenance_report(folder: Path) -> tuple[list[str], list[str]]:
    """What bcd-report says of what produced ``folder``'s runs: (lines for stdout, notes for stderr). For a run
    folder, the block of its provenance.json (the run's start and each resume), or a line saying it has none (a
    run of an earlier version); for a multirun folder, the line saying what its jobs differ in, where they do. A
    damaged provenance.json is a note naming it."""
    if (folder / METRICS_FILE).exists():
        try:
            records = read_provenance(folder)
        except ProvenanceError as err:
            return [], [f"{err}; provenance not shown"]
        if records is None:
            return [f"provenance: none recorded (no {PROVENANCE_FILE}: a run of an earlier version)"], []
        return ["provenance:", *(f"  {line}" for line in describe(records))], []
    check = check_runs({f"job {job.relative_to(folder).as_posix()}": job for job in job_folders(folder)})
    notes = [check.differ] if check.differ else []
    return [], notes + [f"{message}; left out of the provenance check" for message in check.damaged]


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``bcd-report``."""
    parser = argparse.ArgumentParser(
        prog="bcd-report",
        description="Regenerate the plots and summaries of a bcd-train run folder, or of a multirun folder "
        "(every job's plots, then sweep_summary.csv, heatmap.png and the seed/trainer reports).",
    )
    parser.add_argument("dir", type=Path, help="a run folder (with metrics.csv) or a multirun folder")
    parser.add_argument("--keys", nargs=2, metavar=("ROWS", "COLUMNS"), help="the two swept keys of the heatmap")
    args = parser.parse_args(argv)
    try:
        written = report(args.dir, args.keys)
    except ReportError as err:
        print(f"bcd-report: error: {err}", file=sys.stderr)
        sys.exit(2)
    lines, notes = provenance_report(args.dir)
    for line in lines:
        print(line)
    for note in notes:
        print(f"bcd-report: note: {note}", file=sys.stderr)
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
