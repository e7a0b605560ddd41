"""The ``bcd-train`` command: compose the config with Hydra, run, report."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import hydra
import torch
import torch.distributed as dist
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from bcd_cli.callbacks import SweepReport, report_sweep
from bcd_cli.checkpoint import LOCK_FILE, run_lock
from bcd_cli.console import progress_display, summary_table
from bcd_cli.engine.parallel import rank
from bcd_cli.errors import BCDError, ConfigError, DataError, Interrupted
from bcd_cli.preflight import preflight
from bcd_cli.report import METRICS_FILE, SUMMARY_FILE, write_summary
from bcd_cli.sweep import SWEEP_SUMMARY_FILE, sweep_table
from bcd_cli.train import run

log = logging.getLogger(__name__)


def config_dir() -> Path:
    """The YAML config tree: inside the installed package, or ``conf/`` beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise RuntimeError(f"bcd-cli's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} exists")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def _train(cfg: DictConfig) -> float:
    hydra_cfg = HydraConfig.get()
    out_dir = Path(hydra_cfg.runtime.output_dir)
    console = Console()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    method = str(cfg.trainer.name).upper()
    main_rank = rank() == 0  # in a data-parallel run the other ranks print nothing
    progress = progress_display(console, f"{method} #{hydra_cfg.job.num}" if multirun else method, live=not multirun)
    try:
        result = run(cfg, out_dir, progress if main_rank else None)
    except Interrupted as err:  # Ctrl-C: a multirun stops too (the exit propagates through Hydra's launcher)
        progress.stop()
        print(f"bcd-train: interrupted: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Exception as err:
        progress.stop()
        if multirun:  # one failing job must not stop the others: record it in its folder and go on
            return _job_failed(out_dir, err, hydra_cfg.job.num)
        if not isinstance(err, BCDError):
            raise
        if cfg.get("resume") is None and not (out_dir / METRICS_FILE).exists():  # nothing to keep
            _remove_empty_run_folder(out_dir, hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log", LOCK_FILE)
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


def _remove_empty_run_folder(out_dir: Path, *hydra_files: str | None) -> None:
    """Removes what Hydra wrote for a run that never started, and the folder if that leaves it empty."""
    for name in filter(None, hydra_files):
        path = out_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the folder holds other files: keep it
        out_dir.rmdir()


RESUME_MAY_CHANGE = ("epochs", "checkpoint.every")


def _override_key(arg: str) -> str:
    return arg.partition("=")[0].lstrip("+~")


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line of ``bcd-train resume=DIR [epochs=N] [checkpoint.every=N]``, made to continue in DIR.

    Hydra then writes into DIR itself (no new run folder, no new .hydra/), and the run keeps
    DIR's sweeps and checkpoint cadence unless given anew; any other override is refused,
    since a resumed run continues with the config it was started with.
    """
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    given = [a for a in overrides if _override_key(a) == "resume"]
    value = given[-1].partition("=")[2].strip().strip("'\"") if given else ""
    if value in ("", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError(
            "resume", value, "a single run folder, without --multirun; resume a multirun's jobs one by one "
            "(resume=SWEEP_DIR/N), then regenerate its report with bcd-report SWEEP_DIR",
        )  # fmt: skip
    folder = Path(value).expanduser()
    saved = folder / ".hydra" / "config.yaml"
    if not saved.is_file():
        state = "has no .hydra/config.yaml" if folder.is_dir() else "does not exist"
        raise ConfigError("resume", value, f"a bcd-train run folder; {folder} {state}")
    others = [
        a for a in overrides
        if _override_key(a) not in ("resume", *RESUME_MAY_CHANGE) and not _override_key(a).startswith("hydra.")
    ]  # fmt: skip
    if others:
        raise ConfigError(
            "resume", value, f"alone or with {', '.join(k + '=N' for k in RESUME_MAY_CHANGE)}: the run continues "
            f"with the config it was started with ({saved}); got {' '.join(others)}",
        )  # fmt: skip
    try:
        config = OmegaConf.load(saved)
    except Exception as exc:
        raise ConfigError("resume", value, f"a run folder with a readable {saved} ({exc})") from None
    extra = [f"hydra.run.dir={_quoted(str(folder))}", "hydra.output_subdir=null"]
    for key in RESUME_MAY_CHANGE:
        if not any(_override_key(a) == key for a in overrides) and OmegaConf.select(config, key) is not None:
            extra.append(f"{key}={OmegaConf.select(config, key)}")
    return [*argv, *extra]


def _quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value: paths may hold characters the override grammar reserves."""
    escaped = value.replace("'", "\\'").replace("${", "\\${")
    return f"'{escaped}'"


def data_parallel_arguments(argv: list[str]) -> list[str]:
    """Under torchrun (WORLD_SIZE > 1): joins the process group and makes every rank use one run folder.

    Rank 0 picks the folder (``outputs/DATE/TIME`` unless hydra.run.dir is given) and tells the
    others; they write neither .hydra/ nor a log there. The backend is gloo for CPU tensors and
    NCCL for CUDA tensors.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError("--multirun", True, "a single run under torchrun: each data-parallel run is one job")
    if not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo")
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    extra = []
    if not any(_override_key(a) == "hydra.run.dir" for a in overrides):
        folder = [datetime.now().strftime("outputs/%Y-%m-%d/%H-%M-%S")]
        dist.broadcast_object_list(folder, src=0)
        extra.append(f"hydra.run.dir={_quoted(folder[0])}")
    if rank() != 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled"]
    return [*argv, *extra]


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


def main() -> None:
    """Entry point of ``bcd-train``: every job's config is composed and validated before Hydra starts any."""
    try:
        sys.argv[1:] = data_parallel_arguments(resume_arguments(sys.argv[1:]))
        preflight(sys.argv[1:])
    except BCDError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"bcd-train: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    try:
        SweepReport.folder = None
        try:
            _train()
        except SystemExit as exc:
            if exc.code == Interrupted.exit_code and SweepReport.folder is not None:
                report_sweep(SweepReport.folder)  # the report of the jobs done before Ctrl-C
            raise
        except KeyboardInterrupt:  # before the first sweep, a second Ctrl-C outside a run, or while a launcher waits
            if SweepReport.folder is not None:  # the jobs of a parallel launcher (joblib, submitit) stop at once
                _wait_for_jobs(SweepReport.folder)
                report_sweep(SweepReport.folder)
            print("bcd-train: interrupted", file=sys.stderr)
            sys.exit(Interrupted.exit_code)
        if SweepReport.folder is not None and (failed := _failed_jobs(SweepReport.folder)):
            total = len(sweep_table(SweepReport.folder)[0])
            print(
                f"bcd-train: {len(failed)} of {total} jobs failed (see {SweepReport.folder / SWEEP_SUMMARY_FILE}):\n  "
                + "\n  ".join(failed),
                file=sys.stderr,
            )
            sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
