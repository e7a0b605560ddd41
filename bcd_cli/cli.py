"""The ``bcd-train`` command: compose the config with Hydra, run, report."""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from rich.console import Console

from bcd_cli.console import progress_display, summary_table
from bcd_cli.errors import BCDError
from bcd_cli.report import METRICS_FILE
from bcd_cli.train import run


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
    progress = progress_display(console, f"{method} #{hydra_cfg.job.num}" if multirun else method, live=not multirun)
    try:
        result = run(cfg, out_dir, progress)
    except BCDError as err:
        progress.stop()
        print(f"bcd-train: error: {err}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.RUN and not (out_dir / METRICS_FILE).exists():
            _remove_empty_run_folder(out_dir, hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log")
        sys.exit(err.exit_code)
    progress.stop()
    console.print(summary_table(result.summary, str(out_dir)))
    return result.summary["final_test_acc"]


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


def main() -> None:
    """Entry point of ``bcd-train``."""
    _train()
