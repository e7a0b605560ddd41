"""Per-run reports: the metrics file written sweep by sweep, summary.json and curves.png."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
# one row per sweep (sweep 0 is the initial point); D and descent_ratio are empty at sweep 0
METRIC_COLUMNS = [
    "sweep", "seconds", "objective", "loss", "penalty_v", "penalty_u", "reg_w", "reg_v",
    "D", "descent_ratio", "train_loss", "train_acc", "test_acc",
]  # fmt: skip


class MetricsWriter:
    """Appends one row per sweep to ``metrics.csv``, flushed to disk before the next sweep."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", newline="") as f:
            pd.DataFrame([row], columns=METRIC_COLUMNS).to_csv(f, header=f.tell() == 0, index=False)
            f.flush()
            os.fsync(f.fileno())


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    path.write_text(json.dumps(summary, indent=2) + "\n")


def plot_curves(metrics: pd.DataFrame, path: Path, title: str = "") -> None:
    """Accuracy (train, test) and the objective L(P^k) (log scale) against the sweep."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    acc, obj = fig.subplots(1, 2)
    acc.plot(metrics["sweep"], metrics["train_acc"], label="train")
    acc.plot(metrics["sweep"], metrics["test_acc"], label="test")
    acc.set(xlabel="sweep", ylabel="accuracy", title="accuracy", ylim=(0, 1))
    acc.grid(alpha=0.3)
    acc.legend()
    obj.plot(metrics["sweep"], metrics["objective"], color="C3")
    positive = metrics["objective"].gt(0).all()
    obj.set(xlabel="sweep", ylabel="L(P^k)", title="objective", yscale="log" if positive else "linear")
    obj.grid(alpha=0.3, which="both")
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=120)


def summarize(metrics: pd.DataFrame, **extra: Any) -> dict[str, Any]:
    """Final and best test accuracy and the totals of a run's metrics."""
    last = metrics.iloc[-1]
    best = metrics["test_acc"].idxmax()
    return {
        "final_test_acc": float(last["test_acc"]),
        "best_test_acc": float(metrics.loc[best, "test_acc"]),
        "best_sweep": int(metrics.loc[best, "sweep"]),
        "final_train_acc": float(last["train_acc"]),
        "final_objective": float(last["objective"]),
        "sweeps": int(last["sweep"]),
        "train_seconds": float(metrics["seconds"].sum()),  # the sweeps' updates only
        "descent_held": bool(_descent_held(metrics)),
        **extra,
    }


def _descent_held(metrics: pd.DataFrame) -> bool:
    """True when L(P^k) <= L(P^(k-1)) at every sweep, up to float32 rounding."""
    obj = metrics["objective"].to_numpy()
    return all(b <= a + 1e-6 * abs(a) for a, b in zip(obj[:-1], obj[1:], strict=True) if math.isfinite(a))
