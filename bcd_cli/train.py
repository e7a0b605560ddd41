"""One training run: build everything from the config, run the BCD sweeps, write the reports."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from omegaconf import DictConfig

from bcd_cli.config import DTYPES, architecture, build, resolve_device, validate
from bcd_cli.data import Dataset, load_data
from bcd_cli.engine.network import MLP
from bcd_cli.errors import BCDError, NumericalError
from bcd_cli.report import (
    CURVES_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsWriter,
    plot_curves,
    summarize,
    write_summary,
)

log = logging.getLogger(__name__)


class Progress(Protocol):
    """What a run reports to a progress display after every sweep."""

    def start(self, total: int) -> None: ...
    def update(self, row: dict[str, Any]) -> None: ...


@dataclass
class RunResult:
    metrics: pd.DataFrame
    summary: dict[str, Any]
    net: MLP
    algorithm: Any
    data: Dataset


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _evaluate(algorithm: Any, loss: Any, data: Dataset) -> dict[str, float]:
    """Objective parts and gradient norm at the current point, and the network's own loss and accuracies."""
    net = algorithm.net
    row = algorithm.objective(with_gradient=True)
    output = net(data.X_train)
    row["train_loss"] = loss(output, data.Y_train).item()
    row["train_acc"] = (output.argmax(dim=0) == data.y_train).double().mean().item()
    row["test_acc"] = net.accuracy(data.X_test, data.y_test)
    return row


def build_algorithm(cfg: DictConfig, data: Dataset, device: torch.device, dtype: torch.dtype) -> tuple[Any, Any]:
    """The network of ``cfg`` initialised as in Remark 1, wrapped in its BCD scheme; returns (algorithm, loss)."""
    loss, act = build(cfg, "loss"), build(cfg, "act")
    reg_w, reg_v = build(cfg, "reg_w"), build(cfg, "reg_v")
    sizes, residual = architecture(cfg.model, data.n_features, data.n_classes)
    net = MLP.init(
        sizes, act,
        init_std=cfg.model.init_std, init_bias=cfg.model.init_bias, seed=cfg.seed, dtype=dtype, device=device,
        residual=residual,
    )  # fmt: skip
    trainer = cfg.trainer
    from bcd_cli.baselines import OPTIMIZERS, GradientBaseline

    if trainer.name in OPTIMIZERS:  # the same network trained by torch.optim; the splitting group is not used
        algorithm: Any = GradientBaseline.from_trainer(
            trainer, net, data.X_train, data.Y_train, loss=loss, reg_w=reg_w, seed=cfg.seed
        )
    else:
        algorithm = build(cfg, "splitting")(
            net, data.X_train, data.Y_train,
            loss=loss, reg_w=reg_w, reg_v=reg_v, gamma=cfg.gamma, rho=cfg.rho, alpha=cfg.alpha,
            solve_dtype=DTYPES[trainer.solve_dtype], inner_iters=trainer.inner_iters, inner_tol=trainer.inner_tol,
            alpha_check=trainer.alpha_check,
        )  # fmt: skip
    log.info(
        "network %s, %d parameters, on %s (%s)",
        "-".join(map(str, sizes)),
        net.n_parameters(),
        device,
        str(dtype).removeprefix("torch."),
    )
    return algorithm, loss


def sweeps(algorithm: Any, loss: Any, data: Dataset, epochs: int) -> Iterator[dict[str, Any]]:
    """Yields the metrics row of the initial point, then of each of ``epochs`` sweeps.

    Raises NumericalError at the first non-finite objective or iterate, before yielding its row.
    """
    device = data.X_train.device
    previous = {"sweep": 0, "seconds": 0.0, "D": math.nan, "descent_ratio": math.nan} | _evaluate(algorithm, loss, data)
    if not math.isfinite(previous["objective"]):
        raise NumericalError(
            "non-finite objective at the initial point (sweep 0): lower model.init_std or use dtype=float64"
        )
    yield previous
    for k in range(1, epochs + 1):
        _synchronize(device)
        start = time.perf_counter()
        D = algorithm.sweep()
        _synchronize(device)
        row = {"sweep": k, "seconds": time.perf_counter() - start, "D": D} | _evaluate(algorithm, loss, data)
        row["descent_ratio"] = (previous["objective"] - row["objective"]) / D if D > 0 else math.nan
        if not (math.isfinite(row["objective"]) and math.isfinite(D)):
            raise NumericalError(f"non-finite objective or iterate at sweep {k}; metrics of sweeps 0..{k - 1} are kept")
        log.debug("sweep %d: %s", k, ", ".join(f"{key}={value:.6g}" for key, value in row.items()))
        yield row
        previous = row


def run(cfg: DictConfig, out_dir: Path, progress: Progress | None = None) -> RunResult:
    """Trains the network of ``cfg`` and writes metrics.csv, summary.json and curves.png to ``out_dir``.

    metrics.csv gains a row after every sweep. When training stops on a
    numerical error, summary.json (status ``failed: ...``) and curves.png of the
    sweeps done are still written before the error propagates.
    """
    validate(cfg)
    if (out_dir / METRICS_FILE).exists():
        raise BCDError(f"{out_dir} already holds a run ({METRICS_FILE}); choose another folder (hydra.run.dir=...)")
    device, dtype = resolve_device(cfg), DTYPES[cfg.dtype]
    data = load_data(cfg.data, dtype=dtype, device=device)
    algorithm, loss = build_algorithm(cfg, data, device, dtype)
    out_dir.mkdir(parents=True, exist_ok=True)
    writer = MetricsWriter(out_dir / METRICS_FILE)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    if progress is not None:
        progress.start(cfg.epochs)
    try:
        for row in sweeps(algorithm, loss, data, cfg.epochs):
            rows.append(row)
            writer.append(row)
            if progress is not None:
                progress.update(row)
    except NumericalError as err:
        if rows:
            _write_reports(cfg, rows, algorithm, data, out_dir, status=f"failed: {err}", started=started)
        raise
    metrics, summary = _write_reports(cfg, rows, algorithm, data, out_dir, status="completed", started=started)
    return RunResult(metrics, summary, algorithm.net, algorithm, data)


def _write_reports(
    cfg: DictConfig,
    rows: list[dict[str, Any]],
    algorithm: Any,
    data: Dataset,
    out_dir: Path,
    *,
    status: str,
    started: float,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """summary.json and curves.png of the rows recorded so far."""
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    net = algorithm.net
    summary = summarize(
        metrics, status=status, wall_seconds=time.perf_counter() - started, device=str(data.X_train.device),
        dtype=cfg.dtype, parameters=net.n_parameters(),
        sizes=net.sizes, n_train=data.n_train, n_test=data.n_test,
        method=algorithm.name, alpha_output_block=getattr(algorithm, "alpha_out", None),
    )  # fmt: skip
    write_summary(out_dir / SUMMARY_FILE, summary)
    if cfg.trainer.name == "bcd":
        settings = f"splitting={algorithm.name}, gamma={cfg.gamma}, alpha={cfg.alpha}"
    else:
        settings = f"trainer={algorithm.name}, lr={cfg.trainer.lr}, batch={cfg.trainer.batch_size}"
    title = f"{cfg.data.name}, {'-'.join(map(str, net.sizes))}, {settings}"
    plot_curves(metrics, out_dir / CURVES_FILE, title=title)
    from bcd_cli.report import CONVERGENCE_FILE, plot_convergence

    plot_convergence(metrics, out_dir / CONVERGENCE_FILE, title=title)
    return metrics, summary
