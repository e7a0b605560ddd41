"""The ``bcd-train`` command: compose the config with Hydra, run, report."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from bcd_cli.app import CONFIG_NAME, VERSION_BASE, config_dir, quoted
from bcd_cli.cli.console import progress_display, summary_table
from bcd_cli.cli.preflight import Launch, preflight
from bcd_cli.engine.parallel import rank
from bcd_cli.errors import BCDError, ConfigError, DataError, Interrupted
from bcd_cli.reports.callbacks import SweepReport, report_sweep
from bcd_cli.reports.sweep import SWEEP_SUMMARY_FILE, sweep_table
from bcd_cli.run import folders
from bcd_cli.run.folders import LOCK_FILE, Claim, run_lock
from bcd_cli.run.records import SUMMARY_FILE, write_summary
from bcd_cli.run.resume import override_key, resume_arguments
from bcd_cli.run.signals import EXIT_STATUSES, exit_status, signal_name, stop_signals, stopped_by
from bcd_cli.run.train import run
from bcd_cli.search import study

log = logging.getLogger(__name__)


@hydra.main(version_base=VERSION_BASE, config_path=str(config_dir()), config_name=CONFIG_NAME)
def _train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    console = Console()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    method = str(cfg.trainer.name).upper()
    main_rank = rank() == 0  # in a data-parallel run the other ranks print nothing
    progress = progress_display(console, f"{method} #{hydra_cfg.job.num}" if multirun else method, live=not multirun)
    try:
        pruners = study.pruners() if main_rank else []  # a search's trial reports its sweeps to the study
        result = run(cfg, out_dir, progress if main_rank else None, observers=pruners)
    except Interrupted as err:  # a stop signal: a multirun stops too (the exit propagates through Hydra's launcher)
        progress.stop()
        print(f"bcd-train: interrupted by {signal_name(err.signum)}: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        progress.stop()
        if multirun:  # one failing job must not stop the others: record it in its folder and go on
            return _job_failed(out_dir, err, hydra_cfg.job.num)
        if not isinstance(err, BCDError):
            raise
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"bcd-train: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    progress.stop()
    if main_rank:
        console.print(summary_table(result.summary, str(out_dir)))
    return result.summary["final_test_acc"]


def _job_failed(out_dir: Path, err: Exception, job: int) -> float:
    """Records a failed multirun job: its error in the job's log and summary.json (status ``failed``)."""
    message = str(err) if isinstance(err, BCDError) else f"{type(err).__name__}: {err}"
    if isinstance(err, BCDError):
        log.error("job %d failed: %s", job, message)
    else:  # not a known failure mode: keep the traceback in the job's log
        log.error("job %d failed: %s", job, message, exc_info=err)
    summary_path = out_dir / SUMMARY_FILE
    summary: dict[str, Any] = {}
    if summary_path.exists():  # written by the run for the sweeps it did
        with contextlib.suppress(ValueError, OSError):
            summary = json.loads(summary_path.read_text())
    out_dir.mkdir(parents=True, exist_ok=True)
    write_summary(summary_path, {**summary, "status": "failed", "error": message})
    return math.nan


def join_process_group(argv: list[str]) -> None:
    """Under torchrun (WORLD_SIZE > 1) joins the process group: gloo for CPU tensors, NCCL for CUDA tensors."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("--multirun", True, "a single run under torchrun: each data-parallel run is one job")
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")


def claimed_arguments(argv: list[str], launch: Launch | None) -> tuple[list[str], Claim | None]:
    """Claims the folder the command will write into (see bcd_cli.run.folders) and pins it in ``argv``.

    The folder is the one Hydra would use: named on the command line (``hydra.run.dir``, or
    ``hydra.sweep.dir`` for a multirun; it must be new or empty, or, for an Optuna search, hold the study
    the search continues), the folder of ``resume=DIR``, or
    else the time-stamped default, renamed ``TIME_1``, ... when another launch took it first. Relative
    paths of the config (``data.root``) are made absolute, so the run folder records where its data was.
    In a data-parallel run rank 0 claims the folder and the other ranks write neither .hydra/ nor a log.
    """
    if launch is None:
        return argv, None
    key = "hydra.sweep.dir" if launch.multirun else "hydra.run.dir"
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    if "hydra.output_subdir=null" in argv and any(override_key(a) == "resume" for a in overrides):
        mode = "resume"  # resume_arguments pinned the folder
    else:
        mode = "exclusive" if any(override_key(a) == key for a in overrides) else "fresh"
        if mode == "exclusive" and launch.search:
            mode = "search"
    claim = None
    if rank() == 0:
        try:
            claim = folders.claim(launch.folder, mode=mode, key="resume" if mode == "resume" else key)
        except ConfigError:
            if dist.is_initialized():
                dist.broadcast_object_list([None], src=0)  # the other ranks stop too
            raise
    folder = [str(claim.folder) if claim is not None else None]
    if dist.is_initialized():
        dist.broadcast_object_list(folder, src=0)
        if folder[0] is None:
            sys.exit(ConfigError.exit_code)  # rank 0 says why
    argv = [a for a in argv if override_key(a) != key] + [f"{key}={quoted(str(folder[0]))}"]
    argv += [f"{k}={quoted(os.path.abspath(os.path.expanduser(v)))}" for k, v in launch.relative_paths.items()]
    if rank() != 0:
        argv += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return argv, claim


def _wait_for_jobs(folder: Path, timeout: float = 10.0) -> None:
    """Waits, at most ``timeout`` s, until no job folder of the multirun in ``folder`` is locked by its run.

    After Ctrl-C, jobs that run in processes of their own (hydra/launcher=submitit_local) may still be
    writing their checkpoint and summary when the launcher has stopped waiting for them.
    """
    deadline = time.monotonic() + timeout
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C again: write the report at once
        for lock in sorted(folder.glob(f"*/{LOCK_FILE}")):
            while True:
                try:
                    with run_lock(lock.parent):
                        break
                except DataError:  # its run still holds it
                    if time.monotonic() > deadline:
                        return
                    time.sleep(0.1)


def _failed_jobs(folder: Path) -> list[str]:
    """'job N: error' for every job of the multirun in ``folder`` that did not complete."""
    table, _ = sweep_table(folder)
    failed = table[table["status"] != "completed"]
    return [f"job {row.job}: {row.status}: {row.error}" for row in failed.itertuples()]


def _how_to_continue(folder: Path) -> None:
    """After a stop signal, the command that continues the Optuna search of ``folder`` (none for a grid)."""
    if study.is_study_folder(folder):
        command = shlex.join(["bcd-train", *sys.argv[1:]])
        print(f"bcd-train: the search in {folder} stopped; continue it with: {command}", file=sys.stderr)


def _refuse(err: BCDError) -> NoReturn:
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise err
    print(f"bcd-train: error: {err}", file=sys.stderr)
    sys.exit(err.exit_code)


def main() -> None:
    """Entry point of ``bcd-train``: every job's config is composed and validated, and the folder it writes
    into claimed, before Hydra starts any; a stop signal at any point ends it with status 128 + signal."""
    claim: Claim | None = None
    try:
        with stop_signals():
            try:
                argv = resume_arguments(sys.argv[1:])
                join_process_group(argv)
                argv, claim = claimed_arguments(argv, preflight(argv))
            except BCDError as err:
                _refuse(err)
            sys.argv[1:] = argv
            _launch(claim)
    except KeyboardInterrupt as err:  # a stop signal before Hydra started, or after a run
        signum = stopped_by(err)
        where = "; nothing was written" if claim is None or not folders.holds_results(claim.folder) else ""
        print(f"bcd-train: interrupted by {signal_name(signum)}{where}", file=sys.stderr)
        sys.exit(exit_status(signum))
    finally:
        for held in folders.open_claims():  # a folder its run left without results is removed
            held.release(discard=True)
        if dist.is_initialized():
            dist.destroy_process_group()


def _launch(claim: Claim | None) -> None:
    """Runs Hydra on ``sys.argv``; after a multirun, reports the jobs that failed (exit status 1)."""
    SweepReport.folder = None
    try:
        _train()
    except SystemExit as exc:
        if exc.code in EXIT_STATUSES and SweepReport.folder is not None:
            report_sweep(SweepReport.folder)  # the report of the jobs done before the signal
            _how_to_continue(SweepReport.folder)
        raise
    except KeyboardInterrupt as err:  # before the first sweep, a second signal, or while a launcher waits
        if SweepReport.folder is not None:  # the jobs of a parallel launcher (joblib, submitit) stop at once
            _wait_for_jobs(SweepReport.folder)
            report_sweep(SweepReport.folder)
            _how_to_continue(SweepReport.folder)
        signum = stopped_by(err)
        kept = claim is not None and folders.holds_results(claim.folder)
        where = f"; what was recorded is in {claim.folder}" if kept and claim else "; nothing was recorded"
        print(f"bcd-train: interrupted by {signal_name(signum)}{where}", file=sys.stderr)
        sys.exit(exit_status(signum))
    if SweepReport.folder is not None and study.is_study_folder(SweepReport.folder):
        if (short := study.shortfall(SweepReport.folder)) is not None:
            print(f"bcd-train: {short}", file=sys.stderr)
            sys.exit(1)
        return  # a failed or pruned trial is part of a search: the study went on without it
    if SweepReport.folder is not None and (failed := _failed_jobs(SweepReport.folder)):
        total = len(sweep_table(SweepReport.folder)[0])
        print(
            f"bcd-train: {len(failed)} of {total} jobs failed (see {SweepReport.folder / SWEEP_SUMMARY_FILE}):\n  "
            + "\n  ".join(failed),
            file=sys.stderr,
        )
        sys.exit(1)
