"""Hyperparameter search with Optuna."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from bcd_cli.observers import RunObserver


def pruners(cfg: DictConfig, out_dir: Path) -> list[RunObserver]:
    """The pruner of a search's trial; none outside a search."""
    return []
