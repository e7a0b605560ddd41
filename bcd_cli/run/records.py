"""Per-run reports: the metrics file written sweep by sweep, summary.json, curves.png and convergence.png."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
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
# or grad_norm=false. MAY_BE_EMPTY below is the rule read_metrics holds these cells to.
METRIC_COLUMNS = [
    "sweep", "seconds", "objective", "loss", "penalty_v", "penalty_u", "reg_w", "reg_v",
    "D", "descent_ratio", "grad_norm", "train_loss", "train_acc", "test_acc", "extrapolation", "rejected",
    "inner_capped",
]  # fmt: skip
# columns a metrics file may lack: files written before grad_norm, the extrapolation columns or inner_capped was
# recorded
OPTIONAL_COLUMNS = ["grad_norm", "extrapolation", "rejected", "inner_capped"]
REQUIRED_COLUMNS = [c for c in METRIC_COLUMNS if c not in OPTIONAL_COLUMNS]
# The cells bcd-train writes empty (NaN), the one place this rule lives: column -> (where, as read_metrics's
# messages say it, and the rows where the cell may be empty, from the numeric columns). D and descent_ratio have
# no value at sweep 0 (no step yet) and descent_ratio none where D_k = 0 (train.sweeps); grad_norm has none at
# any sweep when grad_norm=false or L is not differentiable. Every other cell of METRIC_COLUMNS holds a number.
MAY_BE_EMPTY: dict[str, tuple[str, Callable[[pd.DataFrame], pd.Series]]] = {
    "D": ("at sweep 0", lambda m: m["sweep"] == 0),
    "descent_ratio": ("at sweep 0 and where D is 0", lambda m: (m["sweep"] == 0) | (m["D"] == 0)),
    "grad_norm": ("at any sweep", lambda m: pd.Series(True, index=m.index)),
    # BCD's extrapolation weight beta_k (0: none) and safeguard verdict (1: rejected); none at sweep 0 nor for SGD/Adam
    "extrapolation": ("at sweep 0 and for the gradient baselines", lambda m: pd.Series(True, index=m.index)),
    "rejected": ("at sweep 0 and for the gradient baselines", lambda m: pd.Series(True, index=m.index)),
    # the sweep's inner solves that stopped at trainer.inner_iters with a step still above trainer.inner_tol
    "inner_capped": ("at sweep 0 and for the gradient baselines", lambda m: pd.Series(True, index=m.index)),
}


class MetricsWriter:
    """Appends one row per sweep to ``metrics.csv``, on disk before the next sweep starts.

    Each row (the header with the first) goes out in a single ``write`` on a file opened for
    appending, so a killed run leaves whole rows only; ``size`` is the file's length after the
    last row, which a checkpoint records.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size if path.exists() else 0
        self.columns = _header_columns(path) if self.size else METRIC_COLUMNS

    def append(self, row: dict[str, Any]) -> None:
        text = pd.DataFrame([row], columns=self.columns).to_csv(header=self.size == 0, index=False)
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


def _header_columns(path: Path) -> list[str]:
    """The columns of an existing metrics.csv's header, so that a resumed run of an older version (without
    grad_norm or the extrapolation columns) goes on writing the rows that header describes; METRIC_COLUMNS when
    the header names none of them."""
    with open(path, newline="") as f:
        header = f.readline().strip().split(",")
    columns = [c for c in header if c in METRIC_COLUMNS]
    return columns or METRIC_COLUMNS


def strict_json(obj: Any) -> Any:
    """``obj`` as strict JSON takes it: every NaN or infinite float (Python or numpy) becomes None, recursively
    through dicts, lists and tuples; numpy scalars and arrays become Python numbers and lists."""
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple | np.ndarray):
        return [strict_json(value) for value in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as strict JSON text (NaN and infinities as null, see ``strict_json``), indented, one final newline."""
    return json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` to ``path`` as strict JSON (``json_text``), atomically: a temporary file, then a rename.

    Every JSON file of the project is written here, so none holds NaN or Infinity, which strict readers refuse.
    """
    text = json_text(obj)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    """Writes summary.json atomically (temporary file, then rename), as strict JSON: a NaN field is null."""
    write_json(path, summary)


def read_summary(folder: Path) -> dict[str, Any] | None:
    """The summary.json of a run folder; None when there is none, ``{"status": "unreadable summary.json"}`` when
    it cannot be read as a JSON object."""
    try:
        summary = json.loads((Path(folder) / SUMMARY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"status": "unreadable summary.json"}
    return summary if isinstance(summary, dict) else {"status": "unreadable summary.json"}


def run_title(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    """The title of a run's figures, from its config and summary, each part where known: the data set, the
    layer sizes, then the method with its main settings (gamma and alpha for BCD, the step size and batch
    size for SGD/Adam). Empty when nothing is known."""
    data, trainer = config.get("data"), config.get("trainer")
    data = data if isinstance(data, Mapping) else {}
    trainer = trainer if isinstance(trainer, Mapping) else {}
    parts = [str(data["name"])] if "name" in data else []
    if isinstance(summary.get("sizes"), list):
        parts.append("-".join(map(str, summary["sizes"])))
    method = summary.get("method")
    if trainer.get("name", "bcd") == "bcd":
        parts += [f"splitting={method}"] if method is not None else []
        parts += [f"{key}={config[key]}" for key in ("gamma", "alpha") if key in config]
        parts += [f"extrapolation={trainer['extrapolation']}"] if trainer.get("extrapolation") else []
    else:
        parts.append(f"trainer={method if method is not None else trainer['name']}")
        parts += [f"{label}={trainer[key]}" for key, label in (("lr", "lr"), ("batch_size", "batch")) if key in trainer]
    return ", ".join(parts)


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
        **_bcd_counts(metrics),
        **extra,
    }


def _bcd_counts(metrics: pd.DataFrame) -> dict[str, int]:
    """How many sweeps started from an extrapolated point, how many the safeguard refused one, and how many inner
    solves stopped at their iteration cap short of their tolerance (BCD only)."""
    beta, rejected = _column(metrics, "extrapolation"), _column(metrics, "rejected")
    if np.isnan(beta).all():
        return {}
    counts = {"extrapolated_sweeps": int((beta > 0).sum()), "rejected_sweeps": int((rejected == 1).sum())}
    capped = _column(metrics, "inner_capped")
    if not np.isnan(capped).all():
        counts["inner_capped_solves"] = int(np.nansum(capped))
    return counts


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
    (L(P^(k-1)) - L(P^k)) / D_k, which Lemma 1 bounds below by a positive constant, the sweeps where the
    accelerated trainer's safeguard rejected the extrapolation marked; (d) ||grad L(P^k)||.
    """
    fig = Figure(figsize=(11, 8), layout="constrained")
    (obj_ax, d_ax), (ratio_ax, grad_ax) = fig.subplots(2, 2)
    k = metrics["sweep"].to_numpy(dtype=float)
    _plot_objective(obj_ax, k, metrics["objective"].to_numpy(dtype=float))
    _plot_step_sizes(d_ax, k, _column(metrics, "D"))
    ratio = _column(metrics, "descent_ratio")
    ratio_ax.plot(k, ratio, marker=".", color="C2")
    rejected = _column(metrics, "rejected") == 1
    if rejected.any():  # the accelerated trainer's sweeps whose extrapolated start the safeguard refused
        ratio_ax.plot(k[rejected], ratio[rejected], "x", color="C3", label=f"extrapolation rejected ({rejected.sum()})")
        ratio_ax.legend(fontsize=8)
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


class MetricsError(ValueError):
    """A metrics.csv that is damaged or not a metrics file; its message is one line naming the file and where."""


# marks, in the last column, a row with more fields than the header (``_read_text``), with its field count
_LONG_ROW = "\x00fields="


def read_metrics(path: Path) -> pd.DataFrame:
    """A run's metrics.csv as numbers, checked first; MetricsError (a ValueError) when it is unreadable or damaged.

    Refused, in one line naming the file, the line in it (and its sweep where known), the column and what
    was expected: a missing column of REQUIRED_COLUMNS, a row with too few fields (cut mid-way, or a file
    ending inside its last row) or too many, a cell that is not a number (empty only where MAY_BE_EMPTY
    allows it), and sweeps that do not go up by one from the first row's. Columns outside METRIC_COLUMNS
    are kept, read as numbers where they are.
    """
    text, whole = _read_text(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in text.columns]
    if missing:
        raise MetricsError(
            f"{path}, line 1 (header): no column {', '.join(missing)}; expected the {METRICS_FILE} columns "
            f"{', '.join(METRIC_COLUMNS)} ({', '.join(OPTIONAL_COLUMNS)} optional)"
        )
    if text.empty:
        raise MetricsError(f"{path} holds no rows, only its header; expected one row per sweep from sweep 0")
    numbers = text.apply(pd.to_numeric, errors="coerce")
    problems = [*_field_problems(text, whole), *_cell_problems(text, numbers), *_sweep_problems(numbers)]
    if problems:
        row, _, column, what = min(problems, key=lambda p: p[:2])
        sweep = numbers["sweep"].iloc[row]
        known = f"sweep {int(sweep)}" if pd.notna(sweep) and float(sweep).is_integer() else "sweep unknown"
        raise MetricsError(f"{path}, line {row + 2} ({known}), column {column}: {what}")
    return numbers


def _read_text(path: Path) -> tuple[pd.DataFrame, bool]:
    """metrics.csv as text, every cell as written ("" when empty, NaN when the row has no such field), one row
    per line after the header (blank lines included), a longer row marked by ``_LONG_ROW``; and whether the
    file ends with a line end (a file cut inside its last row does not)."""
    try:
        whole = path.read_bytes().endswith(b"\n")
        header = list(pd.read_csv(path, nrows=0, dtype=str).columns)
        width = len(header)

        def long_row(fields: list[str]) -> list[str]:
            return [*fields[: width - 1], f"{_LONG_ROW}{len(fields)}"]

        text = pd.read_csv(
            path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False,
            engine="python", on_bad_lines=long_row,
        )  # fmt: skip
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
        message = " ".join(str(err).split())  # one line
        raise MetricsError(f"cannot read {path}: {message}; expected a {METRICS_FILE} written by bcd-train") from err
    return text, whole


# a problem: (row, order at that row, column, what was found and expected)
_Problem = tuple[int, int, str, str]


def _field_problems(text: pd.DataFrame, whole: bool) -> list[_Problem]:
    """Rows with fewer or more fields than the header, and a last row the file ends inside."""
    width = len(text.columns)
    columns = list(text.columns)
    out: list[_Problem] = []
    long = text[columns[-1]].astype(str).str.startswith(_LONG_ROW)
    for row in map(int, np.flatnonzero(long.to_numpy())):
        n = int(text.iloc[row, -1].removeprefix(_LONG_ROW))
        out.append((row, 0, f"after {columns[-1]}", f"{n} fields, more than the header's; expected {width} fields"))
    short = text.isna().to_numpy()
    for row in map(int, np.flatnonzero(short.any(axis=1))):
        n = int(np.argmax(short[row]))  # the row's fields stop here; missing fields read as NaN from there on
        what = (
            f"the row ends after {n} of the header's {width} fields (cut mid-way)" if n else "an empty line"
        ) + f"; expected {width} fields"
        out.append((row, 0, columns[n], what))
    if not whole and not text.empty:
        row = len(text) - 1
        out.append((row, 0, columns[-1], "the file ends inside this row (cut mid-way); expected whole rows"))
    return out


def _cell_problems(text: pd.DataFrame, numbers: pd.DataFrame) -> list[_Problem]:
    """Cells of METRIC_COLUMNS that are not numbers, an empty one only where MAY_BE_EMPTY does not allow it."""
    out: list[_Problem] = []
    for order, column in enumerate(c for c in METRIC_COLUMNS if c in text.columns):
        cells = text[column]
        bad = cells.notna() & numbers[column].isna()
        if column in MAY_BE_EMPTY:
            where, allowed = MAY_BE_EMPTY[column]
            bad &= ~((cells == "") & allowed(numbers))
        else:
            where = ""
        for row in map(int, np.flatnonzero(bad.to_numpy())):
            cell = cells.iloc[row]
            if cell == "":
                also = f"; it may be empty only {where}" if where else ""
                what = f"empty; expected a number{also}"
            else:
                what = f"{cell[:40]!r} is not a number; expected a number"
            out.append((row, 1 + order, column, what))
    return out


def _sweep_problems(numbers: pd.DataFrame) -> list[_Problem]:
    """Sweeps that are not whole numbers, or do not go up by one from the first row's."""
    sweeps = numbers["sweep"].to_numpy(dtype=float)
    if np.isnan(sweeps).any():
        return []  # a cell problem, reported as such
    whole = sweeps == np.floor(sweeps)
    if not whole.all():
        row = int(np.argmin(whole))
        return [(row, 99, "sweep", f"{sweeps[row]:g} is not a whole number; expected a sweep number")]
    if sweeps[0] < 0:
        return [(0, 99, "sweep", f"sweep {sweeps[0]:g}; expected a sweep number from 0")]
    expected = sweeps[0] + np.arange(len(sweeps))
    off = np.flatnonzero(sweeps != expected)
    if off.size == 0:
        return []
    row = int(off[0])
    return [
        (
            row,
            99,
            "sweep",
            f"sweep {sweeps[row]:g} follows sweep {sweeps[row - 1]:g}; expected sweep {expected[row]:g} "
            "(one row per sweep, up by one from the first row's: a row repeated, missing or out of order)",
        )
    ]
