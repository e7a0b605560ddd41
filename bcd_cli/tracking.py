"""Experiment trackers of the ``logger`` config group."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bcd_cli.observers import RunObserver


def loggers(cfg: DictConfig, out_dir: Path) -> list[RunObserver]:
    """The trackers ``cfg.logger`` names besides the run folder's own files."""
    return []
