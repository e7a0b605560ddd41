"""One training run: the config resolved into a run spec at the door, everything built from the spec, the sweeps
run, the reports written."""

from __future__ import annotations

import contextlib
import logging
import math
import time
import traceback
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from omegaconf import DictConfig

from bcd_cli.data.loaders import RECORD_FILE, Dataset, load_data, shard
from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import any_rank, rank, synchronize
from bcd_cli.engine.trainer import Trainer
from bcd_cli.errors import BCDError, ConfigError, Interrupted, NumericalError, ResourceError, first_line
from bcd_cli.run import memory, provenance, tracking
from bcd_cli.run.checkpoint import Checkpoint, rng_state, write_checkpoint
from bcd_cli.run.folders import run_lock
from bcd_cli.run.observers import Pruned, RunObserver
from bcd_cli.run.records import (
    CONVERGENCE_FILE,
    CURVES_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    SUMMARY_FILE,
    MetricsWriter,
    plot_convergence,
    plot_curves,
    run_title,
    summarize,
    write_json,
    write_summary,
)
from bcd_cli.run.resume import resume_checkpoint, resume_command
from bcd_cli.run.signals import GracefulStop, fault_point, stopped_by
from bcd_cli.run.spec import RunSpec, resolve

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
    algorithm: Trainer
    data: Dataset


def build_trainer(spec: RunSpec, data: Dataset) -> Trainer:
    """The network of ``spec`` initialised as ``model.init`` says, on ``data``'s device, wrapped in the trainer
    the spec names (a BCD scheme, or SGD/Adam)."""
    device, dtype = data.X_train.device, spec.dtype
    net = spec.model.build(data.n_features, data.n_classes, spec.catalogue.act, seed=spec.seed, dtype=dtype,
                           device=device)  # fmt: skip
    trainer = spec.method.build(net, data.X_train, data.Y_train, spec.catalogue, seed=spec.seed)
    log.info(
        "network %s, %d parameters, on %s (%s)", "-".join(map(str, net.sizes)), net.n_parameters(), device,
        spec.dtype_name,
    )  # fmt: skip
    return trainer


def sweeps(
    trainer: Trainer,
    data: Dataset,
    epochs: int,
    *,
    start: int = 0,
    previous: dict[str, Any] | None = None,
    grad_norm: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yields the metrics row of the initial point, then of each sweep up to ``epochs``.

    ``grad_norm`` (the config key) chooses whether each row carries ||grad L|| (``Trainer.evaluate``: in
    closed form for three-splitting and ResNet, by autograd for two-splitting and the baselines) or NaN.

    A resumed run passes ``start`` (the sweeps already done) and ``previous`` (the row of sweep
    ``start``); the initial row is then not yielded again. Raises NumericalError at the first
    non-finite objective, iterate or factorisation, naming the sweep and the block, before
    yielding that sweep's row.
    """
    device = data.X_train.device
    if previous is None:
        previous = {"sweep": 0, "seconds": 0.0, "D": math.nan, "descent_ratio": math.nan}
        previous |= trainer.evaluate(data, grad_norm=grad_norm)
        if not math.isfinite(previous["objective"]):
            block = trainer.nonfinite_block()
            where = f"block {block} is non-finite" if block else "the objective overflows"
            raise NumericalError(
                f"non-finite objective at the initial point (sweep 0): {where}; "
                "lower model.init_scale (model.init=scaled) or model.init_std (model.init=normal), or use dtype=float64"
            )
        yield previous
    for k in range(start + 1, epochs + 1):
        fault_point("sweep")
        synchronize(device)
        started = time.perf_counter()
        try:
            D = trainer.sweep()
        except NumericalError as err:  # a factorisation met a non-finite matrix or failed even in float64
            origin = trainer.nonfinite_block()
            first = f"; block {origin} went non-finite first" if origin else ""
            raise NumericalError(f"sweep {k}: {err}{first}") from err
        synchronize(device)
        row = {"sweep": k, "seconds": time.perf_counter() - started, "D": D, **trainer.last_sweep()}
        row |= trainer.evaluate(data, grad_norm=grad_norm)
        row["descent_ratio"] = (previous["objective"] - row["objective"]) / D if D > 0 else math.nan
        if not (math.isfinite(row["objective"]) and math.isfinite(D)):
            block = trainer.nonfinite_block()
            where = f"block {block} went non-finite first" if block else "the objective overflowed (every block finite)"
            raise NumericalError(f"sweep {k} diverged: {where}; try {trainer.divergence_hint} or dtype=float64")
        log.debug("sweep %d: %s", k, ", ".join(f"{key}={value:.6g}" for key, value in row.items()))
        yield row
        previous = row


def run(
    cfg: DictConfig, out_dir: Path, progress: Progress | None = None, observers: Sequence[RunObserver] = ()
) -> RunResult:
    """Trains the network of ``cfg`` and writes metrics.csv, summary.json, curves.png and checkpoints to ``out_dir``.

    metrics.csv gains a row after every sweep; checkpoint.pt holds the full state every
    ``checkpoint.every`` sweeps, at the end and on Ctrl-C. With ``resume=DIR`` (``out_dir`` is
    DIR) the run continues from DIR's checkpoint with DIR's config, its metrics cut back to the
    checkpoint's sweep, and ends as the uninterrupted run would. When training stops on a
    numerical error or Ctrl-C, summary.json (status ``failed`` or ``interrupted``) and the
    figures of the sweeps done are still written before the error propagates. ``observers`` watch the run beside
    the trackers of its ``logger`` (a search's trial: its pruner).
    """
    spec = resolve(cfg)  # the door: nothing below reads the config
    if spec.resume is None and (out_dir / METRICS_FILE).exists():
        raise ConfigError(
            "hydra.run.dir", str(out_dir),
            f"a new or empty folder: it holds a run; continue it with resume={out_dir}, or choose a new folder",
        )  # fmt: skip
    return run_spec(spec, out_dir, progress, observers)


def run_spec(
    spec: RunSpec, out_dir: Path, progress: Progress | None = None, observers: Sequence[RunObserver] = ()
) -> RunResult:
    """``run`` of a resolved spec: ``out_dir`` is new, or the folder ``spec.resume`` continues."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = run_lock(out_dir) if rank() == 0 else contextlib.nullcontext()  # rank 0 alone writes
    with lock, spec.device.precision() as precision:
        device, resumed = spec.device.torch_device(), spec.resume is not None
        data = shard(load_data(spec.data, dtype=spec.dtype, device=device, folder=out_dir, resumed=resumed))
        if rank() == 0:
            if data.record is not None:  # data.json: how the data was prepared, which a resumed run reads back
                write_json(out_dir / RECORD_FILE, data.record)
        memory.check(memory.estimate_for(spec, data), device, what="this run")  # before the network exists
        if precision != "highest":
            log.info("float32 matrix products at precision %s (torch.set_float32_matmul_precision)", precision)
        try:
            trainer = build_trainer(spec, data)
        except torch.OutOfMemoryError as err:
            raise ResourceError(f"out of memory while building the network on {device}: {first_line(err)}") from None
        with GracefulStop() as stop:
            checkpoint = None
            if resumed:
                checkpoint = resume_checkpoint(
                    spec.record, spec.epochs, out_dir, trainer, _data_shape(data), writer=rank() == 0
                )
            return _train(_Record.begin(spec, out_dir, trainer, data, checkpoint, observers), stop, progress)


def _data_shape(data: Dataset) -> list[int]:
    return [data.n_features, data.n_train, data.n_test, data.n_classes]


@dataclass
class _Record:
    """What a run has recorded: its metrics rows (on disk in metrics.csv), its last checkpoint, its reports."""

    spec: RunSpec
    out_dir: Path
    trainer: Trainer
    data: Dataset
    writer: MetricsWriter
    started: float  # time.perf_counter() at the run's start, less the time of the sweeps a resumed run did before
    rows: list[dict[str, Any]] = field(default_factory=list)
    saved_sweep: int | None = None  # the sweep of the last checkpoint
    main: bool = True  # rank 0, which alone writes files in a data-parallel run
    observers: list[RunObserver] = field(default_factory=list)  # trackers and a search's pruner (rank 0)

    @classmethod
    def begin(
        cls,
        spec: RunSpec,
        out_dir: Path,
        trainer: Trainer,
        data: Dataset,
        checkpoint: Checkpoint | None,
        observers: Sequence[RunObserver] = (),
    ):
        """The record of a run starting at sweep 0 or at ``checkpoint``; summary.json says ``running``, so a
        killed run, or a killed extension of a finished one, never claims to be completed; provenance.json records
        what runs it (a resume's record after the run's earlier ones)."""
        elapsed = checkpoint.elapsed if checkpoint is not None else 0.0
        record = cls(
            spec, out_dir, trainer, data, MetricsWriter(out_dir / METRICS_FILE), time.perf_counter() - elapsed,
            rows=list(checkpoint.rows) if checkpoint is not None else [],
            saved_sweep=checkpoint.sweep if checkpoint is not None else None, main=rank() == 0,
        )  # fmt: skip
        if record.main:
            write_summary(out_dir / SUMMARY_FILE, {"status": "running", "sweeps": record.sweep, "epochs": spec.epochs})
            resumed_at = record.sweep if spec.resume is not None else None
            provenance.record_run(out_dir, spec, data.X_train.device, resumed_at=resumed_at)
            record.observers = [*tracking.loggers(spec.logger, out_dir), *observers]
            try:
                for observer in record.observers:
                    observer.start(spec, out_dir, record.sweep)
            except BaseException as err:  # the observers started before it are closed
                record.close_observers(_stopped_status(err), first_line(err))
                raise
        return record

    @property
    def sweep(self) -> int:
        """The last sweep recorded (0 before any row)."""
        return int(self.rows[-1]["sweep"]) if self.rows else 0

    def add(self, row: dict[str, Any], progress: Progress | None) -> None:
        self.rows.append(row)
        if self.main:
            self.writer.append(row)
        if progress is not None:
            progress.update(row)
        for observer in self.observers:
            observer.sweep(row)

    def due(self, k: int) -> bool:
        """Whether sweep k is one that ``checkpoint.every`` checkpoints (the last and a stop are checkpointed too)."""
        every = self.spec.checkpoint_every
        return bool(every) and k > 0 and k % every == 0

    def save(self, row: dict[str, Any]) -> None:
        """The checkpoint of the sweep of ``row`` (every rank gathers its part; rank 0 writes it)."""
        checkpoint = Checkpoint(
            sweep=int(row["sweep"]), config=self.spec.record, trainer=self.trainer.state_dict(), rng=rng_state(),
            rows=self.rows, metrics_bytes=self.writer.size, elapsed=time.perf_counter() - self.started,
            data_shape=_data_shape(self.data),
        )  # fmt: skip
        if self.main:
            write_checkpoint(self.out_dir, checkpoint)
        self.saved_sweep = checkpoint.sweep
        log.debug("checkpoint of sweep %d written", checkpoint.sweep)

    def kept(self) -> str:
        """What a run that stops now leaves in its folder, for its last message."""
        if not self.rows:
            return "nothing was recorded"
        saved = f"the checkpoint of sweep {self.saved_sweep}" if self.saved_sweep is not None else "no checkpoint yet"
        last = self.sweep
        return f"metrics of sweep{f's 0..{last}' if last else ' 0'} and {saved} are kept in {self.out_dir}"

    def reports(self, status: str, error: str | None = None) -> tuple[pd.DataFrame, dict[str, Any]]:
        """summary.json, curves.png and convergence.png of the rows recorded so far (rank 0 writes them)."""
        metrics = pd.DataFrame(self.rows, columns=METRIC_COLUMNS)
        net, data = self.trainer.net, self.data
        summary = summarize(
            metrics, status=status, **({"error": error} if error else {}),
            wall_seconds=time.perf_counter() - self.started, device=str(data.X_train.device),
            dtype=self.spec.dtype_name, parameters=net.n_parameters(),
            sizes=net.sizes, n_train=data.n_train, n_test=data.n_test, **self.trainer.summary_fields(),
        )  # fmt: skip
        if self.main:
            write_summary(self.out_dir / SUMMARY_FILE, summary)
            title = run_title(self.spec.config, summary)
            plot_curves(metrics, self.out_dir / CURVES_FILE, title=title)
            plot_convergence(metrics, self.out_dir / CONVERGENCE_FILE, title=title)
            self.finish_observers(status, summary, self.report_files())
        return metrics, summary

    def finish_observers(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        """Each observer's ``finish``, once: later calls find none left. An observer that fails to finish is a
        warning, since the run's own files are written by then."""
        observers, self.observers = self.observers, []
        for observer in observers:
            try:
                observer.finish(status, summary, files)
            except Exception as exc:
                log.warning("%s did not finish: %s", type(observer).__name__, first_line(exc))

    def close_observers(self, status: str, error: str) -> None:
        """``finish_observers`` for a run that ends without its reports (nothing recorded, or an error in the
        reports themselves): the summary holds the status, the error and the sweeps done; the files are those
        the folder holds."""
        if self.observers:
            self.finish_observers(status, {"status": status, "sweeps": self.sweep, "error": error}, self.report_files())

    def report_files(self) -> list[Path]:
        """The run's reports that its folder holds, as an observer's ``finish`` receives them."""
        names = (METRICS_FILE, SUMMARY_FILE, CURVES_FILE, CONVERGENCE_FILE)
        return [self.out_dir / name for name in names if (self.out_dir / name).is_file()]

    def reports_of_a_stop(self, status: str, error: str | None = None) -> None:
        """``reports`` of a run that stops early, when it recorded anything; never raises."""
        if not self.rows:
            return
        try:
            self.reports(status, error)
        except Exception as exc:  # a full disk: the metrics and checkpoint already written stay
            log.warning("reports of %s not written: %s", self.out_dir, first_line(exc))


def _stopped_status(err: BaseException) -> str:
    """The status of a run that ``err`` ends: interrupted by a stop signal or Ctrl-C, else failed."""
    return "interrupted" if isinstance(err, Interrupted | KeyboardInterrupt) else "failed"


def _train(record: _Record, stop: GracefulStop, progress: Progress | None) -> RunResult:
    """``_sweeps_of`` with the run's observers finished however it ends: by its reports, or, where a run ends
    without them, by ``_Record.close_observers``, so that no tracker is left open."""
    try:
        return _sweeps_of(record, stop, progress)
    except BaseException as err:
        record.close_observers(_stopped_status(err), first_line(err))
        raise


def _sweeps_of(record: _Record, stop: GracefulStop, progress: Progress | None) -> RunResult:
    """The sweep loop of ``run``: metrics row, checkpoint and stop check after every sweep; a run that stops
    early writes the reports of the sweeps done and raises an error saying what its folder keeps."""
    spec, trainer, data, out_dir = record.spec, record.trainer, record.data, record.out_dir
    epochs, start = spec.epochs, record.sweep
    if progress is not None:
        progress.start(epochs)
        for row in record.rows[-1:]:
            progress.update(row)
    previous = record.rows[-1] if record.rows else None
    status = "completed"
    try:
        for row in sweeps(trainer, data, epochs, start=start, previous=previous, grad_norm=spec.grad_norm):
            try:
                record.add(row, progress)
            except Pruned:  # a search's pruner ends this trial: its folder is a finished run of fewer sweeps
                record.save(row)
                status = "pruned"
                break
            k = row["sweep"]
            stopping = any_rank(stop.requested, data.X_train.device)  # every rank stops after the same sweep
            if k == epochs or stopping or record.due(k):
                record.save(row)
            if stopping and k < epochs:
                raise Interrupted(
                    f"stopped after sweep {k}; {record.kept()}; resume with: {resume_command(out_dir, epochs)}",
                    stop.signum,
                )
    except NumericalError as err:
        record.reports_of_a_stop("failed", str(err))
        raise NumericalError(f"{err}; {record.kept()}") from err
    except (torch.OutOfMemoryError, MemoryError, OSError) as err:
        sweep = record.sweep + 1 if record.rows else 0
        what = _out_of_memory(err, sweep) if not isinstance(err, OSError) else _unwritable(err, out_dir)
        record.reports_of_a_stop("failed", what)
        raise BCDError(f"{what}; {record.kept()}") from None  # exit status 1: the run failed, it was not refused
    except (Interrupted, KeyboardInterrupt) as err:
        record.reports_of_a_stop("interrupted")
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(
            f"stopped during sweep {record.sweep + 1}; {record.kept()}; resume with: {resume_command(out_dir, epochs)}",
            stopped_by(err),
        ) from None
    metrics, summary = record.reports(status)
    return RunResult(metrics, summary, trainer.net, trainer, data)


def _out_of_memory(err: BaseException, sweep: int) -> str:
    """Where the run ran out of memory: the block whose update did (found in the traceback: the scheme's
    ``sweep`` holds the paper's layer index ``i``, the engine's ``update_*`` function the kind of block),
    or the evaluation."""
    kinds = {"update_output_state": "V", "update_hidden_state": "V", "update_preactivation": "U", "update_weights": "W"}
    layer, block = None, None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        name = frame.f_code.co_name
        if name == "sweep_blocks" and isinstance(frame.f_locals.get("i"), int):
            layer = frame.f_locals["i"]
        elif name in kinds and layer is not None:
            block = f"{kinds[name]}{layer}"
            break
    if block is not None:
        where = f"the update of block {block} in sweep {sweep}"
    elif layer is not None:
        where = f"sweep {sweep} (layer {layer})"
    else:
        where = f"the evaluation of sweep {sweep}" if sweep > 0 else "the evaluation of the initial point"
    return f"out of memory in {where} ({first_line(err)}); try fewer samples (data.n_train) or narrower layers"


def _unwritable(err: OSError, out_dir: Path) -> str:
    return f"cannot write {err.filename or out_dir}: {err.strerror or first_line(err)}"
