"""Hydra callbacks: the sweep report written when a multirun ends."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bcd_cli.reports.sweep import write_sweep_report

log = logging.getLogger(__name__)


class SweepReport(Callback):
    """Writes ``write_sweep_report(hydra.sweep.dir)`` after the last job of a multirun; never raises.

    ``folder`` is the sweep folder of the multirun in progress (or last run) in this process,
    so that the command can report failed jobs, or write the report of a sweep stopped by Ctrl-C.
    """

    folder: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SweepReport.folder = Path(str(config.hydra.sweep.dir))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report_sweep(Path(str(config.hydra.sweep.dir)))


def report_sweep(folder: Path) -> None:
    """The sweep report of ``folder``, or a warning saying why it could not be written."""
    try:
        written = write_sweep_report(folder)
    except Exception as err:  # a report must not fail the sweep
        log.warning("sweep report not written: %s: %s", type(err).__name__, err)
        return
    log.info("sweep report: %s", ", ".join(str(p) for p in written))
