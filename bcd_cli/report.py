"""Per-run reports: the metrics file written sweep by sweep, summary.json, curves.png and convergence.png."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

METRICS_FILE = "metrics.csv"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
CONVERGENCE_FILE = "convergence.png"
# one row per sweep (sweep 0 is the initial point); D and descent_ratio are empty at sweep 0;
# grad_norm is ||grad L(P^k)|| by autograd, empty where L is not differentiable (nonsmooth regularizers)
METRIC_COLUMNS = [
    "sweep", "seconds", "objective", "loss", "penalty_v", "penalty_u", "reg_w", "reg_v",
    "D", "descent_ratio", "grad_norm", "train_loss", "train_acc", "test_acc",
]  # fmt: skip


class MetricsWriter:
    """Appends one row per sweep to ``metrics.csv``, on disk before the next sweep starts.

    Each row (the header with the first) goes out in a single ``write`` on a file opened for
    appending, so a killed run leaves whole rows only; ``size`` is the file's length after the
    last row, which a checkpoint records.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size if path.exists() else 0

    def append(self, row: dict[str, Any]) -> None:
        text = pd.DataFrame([row], columns=METRIC_COLUMNS).to_csv(header=self.size == 0, index=False)
        data = text.encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):
                raise OSError(f"{self.path}: short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        finally:
            os.close(fd)
        self.size += len(data)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Writes summary.json atomically (temporary file, then rename)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)


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
    return not descent_failures(metrics)


def descent_failures(metrics: pd.DataFrame) -> list[int]:
    """The sweeps k at which L(P^k) > L(P^(k-1)) beyond float32 rounding (the rule of ``descent_held``)."""
    obj = metrics["objective"].to_numpy(dtype=float)
    sweeps = metrics["sweep"].to_numpy()
    return [
        int(k)
        for a, b, k in zip(obj[:-1], obj[1:], sweeps[1:], strict=True)
        if math.isfinite(a) and not b <= a + 1e-6 * abs(a)
    ]


def descent_verdict(metrics: pd.DataFrame) -> str:
    """The figure title's verdict: descent held at every sweep, or the sweeps where it failed."""
    failed = descent_failures(metrics)
    if not failed:
        return "descent held at every sweep"
    listed = ", ".join(map(str, failed[:12])) + (", ..." if len(failed) > 12 else "")
    return f"descent failed at sweep{'s' if len(failed) > 1 else ''} {listed}"


def plot_convergence(metrics: pd.DataFrame, path: Path, title: str = "") -> None:
    """The run checked against Theorem 1 and Lemmas 1-2 of Zeng et al. (2019), in four panels.

    (a) the objective L(P^k); (b) D_k = ||P^k - P^(k-1)||^2 with its running mean (1/K) sum_{k<=K} D_k
    and running min against K on log-log axes, beside the rate c/K; (c) the descent ratio
    (L(P^(k-1)) - L(P^k)) / D_k, which Lemma 1 bounds below by a positive constant; (d) ||grad L(P^k)||.
    """
    fig = Figure(figsize=(11, 8), layout="constrained")
    (obj_ax, d_ax), (ratio_ax, grad_ax) = fig.subplots(2, 2)
    k = metrics["sweep"].to_numpy(dtype=float)
    _plot_objective(obj_ax, k, metrics["objective"].to_numpy(dtype=float))
    _plot_step_sizes(d_ax, k, _column(metrics, "D"))
    ratio = _column(metrics, "descent_ratio")
    ratio_ax.plot(k, ratio, marker=".", color="C2")
    ratio_ax.axhline(0, color="0.4", lw=0.8, ls="--")
    ratio_ax.set(
        xlabel="sweep k", ylabel="(L(P^{k-1}) - L(P^k)) / D_k", title="(c) descent ratio (Lemma 1: bounded below > 0)"
    )
    ratio_ax.grid(alpha=0.3)
    _plot_gradient(grad_ax, k, _column(metrics, "grad_norm"))
    verdict = descent_verdict(metrics)
    fig.suptitle(f"{title}\n{verdict}" if title else verdict)
    fig.savefig(path, dpi=120)


def _column(metrics: pd.DataFrame, name: str) -> np.ndarray:
    if name not in metrics:
        return np.full(len(metrics), np.nan)
    return pd.to_numeric(metrics[name], errors="coerce").to_numpy(dtype=float)


def _plot_objective(ax: Axes, k: np.ndarray, obj: np.ndarray) -> None:
    ax.plot(k, obj, marker=".", color="C3")
    finite = obj[np.isfinite(obj)]
    positive = finite.size > 0 and bool((finite > 0).all())
    ax.set(xlabel="sweep k", ylabel="L(P^k)", title="(a) objective", yscale="log" if positive else "linear")
    ax.grid(alpha=0.3, which="both")


def _plot_step_sizes(ax: Axes, k: np.ndarray, D: np.ndarray) -> None:
    keep = np.isfinite(D) & (k >= 1)
    K, D = k[keep], D[keep]
    ax.set(xlabel="K", ylabel="D_k", title="(b) D_k, running mean and min (Theorem 1: O(1/K))")
    ax.grid(alpha=0.3, which="both")
    if K.size == 0:
        ax.text(0.5, 0.5, "no sweeps recorded", ha="center", va="center", transform=ax.transAxes)
        return
    mean = np.cumsum(D) / np.arange(1, K.size + 1)
    low = np.minimum.accumulate(D)
    ax.plot(K, D, marker=".", lw=0.8, alpha=0.6, label="D_k")
    ax.plot(K, mean, lw=1.8, label="(1/K) sum_{k<=K} D_k")
    ax.plot(K, low, lw=1.2, ls="--", label="min_{k<=K} D_k")
    if mean[0] > 0:
        c = mean[0] * K[0]
        ax.plot(K, c / K, color="0.3", lw=1, ls=":", label=f"c/K, c={c:.3g}")
    positive = np.concatenate([D, mean, low])
    if (positive > 0).all():
        ax.set(xscale="log", yscale="log")
    else:  # a zero step: the log axes would drop it
        ax.set(xscale="log")
    ax.legend(fontsize=8)


def _plot_gradient(ax: Axes, k: np.ndarray, grad: np.ndarray) -> None:
    ax.set(xlabel="sweep k", ylabel="||grad L(P^k)||", title="(d) gradient norm (Lemma 2)")
    ax.grid(alpha=0.3, which="both")
    finite = np.isfinite(grad)
    if not finite.any():
        ax.text(
            0.5, 0.5, "not differentiable (nonsmooth regularizer)", ha="center", va="center", transform=ax.transAxes
        )
        return
    ax.plot(k, grad, marker=".", color="C4")
    if (grad[finite] > 0).all():
        ax.set(yscale="log")


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv; ValueError when it cannot be read or lacks the sweep, objective and accuracies."""
    try:
        metrics = pd.read_csv(path)
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise ValueError(f"cannot read {path}: {err}") from err
    needed = ["sweep", "objective", "train_acc", "test_acc"]
    missing = [c for c in needed if c not in metrics.columns]
    if missing:
        raise ValueError(
            f"{path} is not a metrics file: no column {', '.join(missing)} (expected {METRICS_FILE} columns)"
        )
    if metrics.empty:
        raise ValueError(f"{path} holds no rows")
    for c in metrics.columns:
        metrics[c] = pd.to_numeric(metrics[c], errors="coerce")
    if metrics["sweep"].isna().any():
        raise ValueError(f"{path} is corrupt: non-numeric values in column sweep")
    return metrics
