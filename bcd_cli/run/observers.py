"""What watches a run from outside the training loop: experiment trackers and a search's pruner.

A run (``bcd_cli.run.train``) calls every observer of its spec (``bcd_cli.run.tracking.loggers`` and
``bcd_cli.search.study.pruners``) at its start, after each metrics row and at its end. The training loop, the run
folder and its files never depend on an observer: a tracker that fails turns into a warning
(``bcd_cli.run.tracking``), and only ``Pruned`` may end a run early, as a finished run with status ``pruned``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from bcd_cli.run.spec import RunSpec


class Pruned(Exception):
    """Raised by an observer's ``sweep`` to end the run after that sweep: a search judged it not worth finishing."""


class RunObserver(Protocol):
    """Called by ``bcd_cli.run.train.run`` on rank 0."""

    def start(self, spec: RunSpec, out_dir: Path, start_sweep: int) -> None:
        """The run of ``spec`` starts (``start_sweep`` 0) or resumes after the checkpoint of sweep ``start_sweep``."""

    def sweep(self, row: dict[str, Any]) -> None:
        """The metrics row of a sweep (sweep 0 is the initial point), as metrics.csv records it."""

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        """The run ends with ``status`` (completed, pruned, failed, interrupted); ``files`` are its reports."""
