"""One training run: build everything from the config, run the BCD sweeps, write the reports."""

from __future__ import annotations

import contextlib
import logging
import math
import shlex
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from bcd_cli import memory
from bcd_cli.app import quoted
from bcd_cli.checkpoint import (
    CHECKPOINT_FILE,
    RESUMABLE,
    Checkpoint,
    capture,
    read_checkpoint,
    restore,
    run_config,
    truncate_metrics,
    with_keys_added_since,
    write_checkpoint,
)
from bcd_cli.config import DTYPES, architecture, build, matmul_precision, resolve_device, validate
from bcd_cli.data import Dataset, load_data, shard
from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import all_reduce_sum_, any_rank, rank
from bcd_cli.errors import BCDError, ConfigError, DataError, Interrupted, NumericalError, ResourceError
from bcd_cli.folders import run_lock
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
from bcd_cli.stopping import GracefulStop, stopped_by

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


def _evaluate(algorithm: Any, loss: Any, data: Dataset, *, grad_norm: bool = True) -> dict[str, float]:
    """Objective parts (and with ``grad_norm`` the gradient norm) at the current point, and the network's own
    loss and accuracies; without ``grad_norm`` the row's grad_norm is NaN."""
    net = algorithm.net
    row = algorithm.objective(with_gradient=grad_norm)
    row.setdefault("grad_norm", math.nan)
    output = net(data.X_train)
    sums = torch.stack([
        loss(output, data.Y_train).double(),
        (output.argmax(dim=0) == data.y_train).double().sum(),
        (net(data.X_test).argmax(dim=0) == data.y_test).double().sum(),
    ])  # fmt: skip
    train_loss, train_correct, test_correct = all_reduce_sum_(sums).tolist()  # over the ranks' shards
    row["train_loss"] = train_loss
    row["train_acc"] = train_correct / data.n_train
    row["test_acc"] = test_correct / data.n_test
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
            solve_dtype=DTYPES[trainer.solve_dtype],
            state_solve_dtype=DTYPES[trainer.state_solve_dtype] if trainer.state_solve_dtype else dtype,  # null: dtype
            inner_iters=trainer.inner_iters, inner_tol=trainer.inner_tol,
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


def sweeps(
    algorithm: Any,
    loss: Any,
    data: Dataset,
    epochs: int,
    *,
    start: int = 0,
    previous: dict[str, Any] | None = None,
    grad_norm: bool = True,
) -> Iterator[dict[str, Any]]:
    """Yields the metrics row of the initial point, then of each sweep up to ``epochs``.

    ``grad_norm`` (the config key) chooses whether each row carries ||grad L|| (autograd, about as much
    time and memory again as the rest of the evaluation) or NaN.

    A resumed run passes ``start`` (the sweeps already done) and ``previous`` (the row of sweep
    ``start``); the initial row is then not yielded again. Raises NumericalError at the first
    non-finite objective, iterate or factorisation, naming the sweep and the block, before
    yielding that sweep's row.
    """
    device = data.X_train.device
    if previous is None:
        previous = {"sweep": 0, "seconds": 0.0, "D": math.nan, "descent_ratio": math.nan}
        previous |= _evaluate(algorithm, loss, data, grad_norm=grad_norm)
        if not math.isfinite(previous["objective"]):
            block = algorithm.nonfinite_block()
            where = f"block {block} is non-finite" if block else "the objective overflows"
            raise NumericalError(
                f"non-finite objective at the initial point (sweep 0): {where}; "
                "lower model.init_std or use dtype=float64"
            )
        yield previous
    for k in range(start + 1, epochs + 1):
        _synchronize(device)
        started = time.perf_counter()
        try:
            D = algorithm.sweep()
        except NumericalError as err:  # a factorisation met a non-finite matrix or failed even in float64
            origin = algorithm.nonfinite_block()
            first = f"; block {origin} went non-finite first" if origin else ""
            raise NumericalError(f"sweep {k}: {err}{first}") from err
        _synchronize(device)
        row = {"sweep": k, "seconds": time.perf_counter() - started, "D": D}
        row |= _evaluate(algorithm, loss, data, grad_norm=grad_norm)
        row["descent_ratio"] = (previous["objective"] - row["objective"]) / D if D > 0 else math.nan
        if not (math.isfinite(row["objective"]) and math.isfinite(D)):
            block = algorithm.nonfinite_block()
            where = f"block {block} went non-finite first" if block else "the objective overflowed (every block finite)"
            remedy = "a smaller trainer.lr" if hasattr(algorithm, "optimizer") else "a larger alpha"
            raise NumericalError(f"sweep {k} diverged: {where}; try {remedy} or dtype=float64")
        log.debug("sweep %d: %s", k, ", ".join(f"{key}={value:.6g}" for key, value in row.items()))
        yield row
        previous = row


@dataclass
class _Start:
    """Where a run starts: its config, and for a resumed run its checkpoint (None: from sweep 0)."""

    cfg: DictConfig
    checkpoint: Checkpoint | None = None
    resumed: bool = False


def _resolve_start(cfg: DictConfig, out_dir: Path) -> _Start:
    """A fresh run starts from ``cfg``; ``resume=DIR`` continues DIR with the config it was started with."""
    if cfg.get("resume") is None:
        if (out_dir / METRICS_FILE).exists():
            raise ConfigError(
                "hydra.run.dir", str(out_dir),
                f"a new or empty folder: it holds a run; continue it with resume={out_dir}, or choose a new folder",
            )  # fmt: skip
        return _Start(cfg)
    folder = Path(str(cfg.resume))
    saved_path = folder / ".hydra" / "config.yaml"
    try:
        saved = OmegaConf.load(saved_path)
    except FileNotFoundError:
        raise DataError(f"resume={folder}: not a bcd-train run folder (no {saved_path})") from None
    except Exception as exc:
        raise DataError(f"{saved_path}: unreadable ({type(exc).__name__}: {exc})") from exc
    assert isinstance(saved, DictConfig)
    with_keys_added_since(saved)
    for key in RESUMABLE:  # the sweeps, the checkpoint cadence and the folder may change on resume
        saved[key] = cfg[key]
    return _Start(saved, resumed=True)


def run(cfg: DictConfig, out_dir: Path, progress: Progress | None = None) -> RunResult:
    """Trains the network of ``cfg`` and writes metrics.csv, summary.json, curves.png and checkpoints to ``out_dir``.

    metrics.csv gains a row after every sweep; checkpoint.pt holds the full state every
    ``checkpoint.every`` sweeps, at the end and on Ctrl-C. With ``resume=DIR`` (``out_dir`` is
    DIR) the run continues from DIR's checkpoint with DIR's config, its metrics cut back to the
    checkpoint's sweep, and ends as the uninterrupted run would. When training stops on a
    numerical error or Ctrl-C, summary.json (status ``failed`` or ``interrupted``) and the
    figures of the sweeps done are still written before the error propagates.
    """
    start = _resolve_start(cfg, out_dir)
    cfg = start.cfg
    validate(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = run_lock(out_dir) if rank() == 0 else contextlib.nullcontext()  # rank 0 alone writes
    with lock, matmul_precision(cfg) as precision:
        device, dtype = resolve_device(cfg), DTYPES[cfg.dtype]
        data = shard(load_data(cfg.data, dtype=dtype, device=device))
        memory.check(memory.estimate_for(cfg, data), device, what="this run")  # before the network exists
        if precision != "highest":
            log.info("float32 matrix products at precision %s (torch.set_float32_matmul_precision)", precision)
        try:
            algorithm, loss = build_algorithm(cfg, data, device, dtype)
        except torch.OutOfMemoryError as err:
            raise ResourceError(f"out of memory while building the network on {device}: {_first_line(err)}") from None
        with GracefulStop() as stop:
            rows: list[dict[str, Any]] = []
            elapsed = 0.0
            if start.resumed:
                start.checkpoint = _resume_state(cfg, out_dir, algorithm, data)
                if start.checkpoint is not None:
                    rows, elapsed = list(start.checkpoint.rows), start.checkpoint.elapsed
            return _train(cfg, out_dir, algorithm, loss, data, start.checkpoint, rows, elapsed, stop, progress)


def _resume_state(cfg: DictConfig, out_dir: Path, algorithm: Any, data: Dataset) -> Checkpoint | None:
    """Loads out_dir's checkpoint into ``algorithm`` and cuts metrics.csv back to it; None: restart at sweep 0."""
    checkpoint = read_checkpoint(out_dir)
    metrics = out_dir / METRICS_FILE
    if checkpoint is None:
        log.warning("resuming %s: no checkpoint yet, so the run starts again from sweep 0", out_dir)
        if rank() == 0:
            metrics.unlink(missing_ok=True)
        return None
    config, saved = run_config(cfg), run_config(with_keys_added_since(OmegaConf.create(checkpoint.config)))
    if saved != config:
        changed = sorted(k for k in {*saved, *config} if saved.get(k) != config.get(k))
        raise DataError(
            f"{out_dir / CHECKPOINT_FILE}: written by a different config than {out_dir}/.hydra/config.yaml "
            f"(keys {', '.join(changed)} differ)"
        )
    if checkpoint.data_shape != _data_shape(data):
        raise DataError(
            f"{out_dir / CHECKPOINT_FILE}: written for data of shape {checkpoint.data_shape}, "
            f"but {cfg.data.name} now loads as {_data_shape(data)}"
        )
    if checkpoint.sweep > cfg.epochs:
        raise ConfigError("epochs", cfg.epochs, f"at least {checkpoint.sweep}, the sweeps {out_dir} already holds")
    if rank() == 0:
        truncate_metrics(metrics, checkpoint.metrics_bytes)
    restore(algorithm, checkpoint.state)
    log.info("resuming %s at sweep %d of %d", out_dir, checkpoint.sweep, cfg.epochs)
    return checkpoint


def _data_shape(data: Dataset) -> list[int]:
    return [data.n_features, data.n_train, data.n_test, data.n_classes]


def _train(
    cfg: DictConfig,
    out_dir: Path,
    algorithm: Any,
    loss: Any,
    data: Dataset,
    checkpoint: Checkpoint | None,
    rows: list[dict[str, Any]],
    elapsed: float,
    stop: GracefulStop,
    progress: Progress | None,
) -> RunResult:
    """The sweep loop of ``run``: metrics row, checkpoint and Ctrl-C check after every sweep."""
    writer = MetricsWriter(out_dir / METRICS_FILE)
    main, device = rank() == 0, data.X_train.device  # rank 0 alone writes files in a data-parallel run
    started = time.perf_counter() - elapsed
    every, epochs = int(cfg.checkpoint.every), int(cfg.epochs)
    saved_sweep = checkpoint.sweep if checkpoint is not None else None
    config = run_config(cfg)
    if progress is not None:
        progress.start(epochs)
        for row in rows[-1:]:
            progress.update(row)

    def checkpoint_now(row: dict[str, Any]) -> None:
        nonlocal saved_sweep
        state = Checkpoint(
            sweep=int(row["sweep"]), config=config, state=capture(algorithm, data.n_train), rows=rows,
            metrics_bytes=writer.size, elapsed=time.perf_counter() - started, data_shape=_data_shape(data),
        )  # fmt: skip
        if main:
            write_checkpoint(out_dir, state)
        saved_sweep = state.sweep
        log.debug("checkpoint of sweep %d written", state.sweep)

    def kept() -> str:
        if not rows:
            return "nothing was recorded"
        saved = f"the checkpoint of sweep {saved_sweep}" if saved_sweep is not None else "no checkpoint yet"
        last = rows[-1]["sweep"]
        return f"metrics of sweep{f's 0..{last}' if last else ' 0'} and {saved} are kept in {out_dir}"

    def reports(status: str, error: str | None = None) -> None:
        """summary.json and the figures of the sweeps recorded, when a run stops early; never raises."""
        if not rows:
            return
        try:
            _write_reports(cfg, rows, algorithm, data, out_dir, status=status, error=error, started=started)
        except Exception as exc:  # a full disk: the metrics and checkpoint already written stay
            log.warning("reports of %s not written: %s", out_dir, _first_line(exc))

    previous = checkpoint.rows[-1] if checkpoint is not None else None
    start = checkpoint.sweep if checkpoint is not None else 0
    if main:  # a killed run, or a killed extension of a finished one, never claims to be completed
        write_summary(out_dir / SUMMARY_FILE, {"status": "running", "sweeps": start, "epochs": epochs})
    k = start
    try:
        for row in sweeps(algorithm, loss, data, epochs, start=start, previous=previous, grad_norm=cfg.grad_norm):
            rows.append(row)
            if main:
                writer.append(row)
            if progress is not None:
                progress.update(row)
            k = row["sweep"]
            stopping = any_rank(stop.requested, device)  # every rank stops after the same sweep
            if k == epochs or stopping or (every and k % every == 0 and k > 0):
                checkpoint_now(row)
            if stopping and k < epochs:
                raise Interrupted(
                    f"stopped after sweep {k}; {kept()}; resume with: {resume_command(out_dir, epochs)}", stop.signum
                )
    except NumericalError as err:
        reports("failed", str(err))
        raise NumericalError(f"{err}; {kept()}") from err
    except (torch.OutOfMemoryError, MemoryError, OSError) as err:
        sweep = k + 1 if rows else 0
        what = _out_of_memory(err, sweep) if not isinstance(err, OSError) else _unwritable(err, out_dir)
        reports("failed", what)
        raise BCDError(f"{what}; {kept()}") from None  # exit status 1: the run failed, it was not refused
    except (Interrupted, KeyboardInterrupt) as err:
        signum = err.signum if isinstance(err, Interrupted) else stopped_by(err)
        reports("interrupted")
        if isinstance(err, Interrupted):
            raise
        raise Interrupted(
            f"stopped during sweep {k + 1}; {kept()}; resume with: {resume_command(out_dir, epochs)}", signum
        ) from None
    metrics, summary = _write_reports(cfg, rows, algorithm, data, out_dir, status="completed", started=started)
    return RunResult(metrics, summary, algorithm.net, algorithm, data)


def resume_command(out_dir: Path, epochs: int) -> str:
    """The shell command that continues the run in ``out_dir`` to ``epochs`` sweeps, quoted as printed.

    ``epochs=N`` is added where it differs from the run folder's config (an extended run), without
    which the command would stop at the folder's own number of sweeps.
    """
    words = ["bcd-train", f"resume={quoted(str(out_dir))}"]
    try:
        saved = OmegaConf.select(OmegaConf.load(out_dir / ".hydra" / "config.yaml"), "epochs")
    except Exception:
        saved = None
    if saved != epochs:
        words.append(f"epochs={epochs}")
    return shlex.join(words)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def _out_of_memory(err: BaseException, sweep: int) -> str:
    """Where the run ran out of memory: the block whose update did (found in the traceback: the scheme's
    ``sweep`` holds the paper's layer index ``i``, the engine's ``update_*`` function the kind of block),
    or the evaluation."""
    kinds = {"update_output_state": "V", "update_hidden_state": "V", "update_preactivation": "U", "update_weights": "W"}
    layer, block = None, None
    for frame, _ in traceback.walk_tb(err.__traceback__):
        name = frame.f_code.co_name
        if name == "sweep" and isinstance(frame.f_locals.get("i"), int):
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
    return f"out of memory in {where} ({_first_line(err)}); try fewer samples (data.n_train) or narrower layers"


def _unwritable(err: OSError, out_dir: Path) -> str:
    return f"cannot write {err.filename or out_dir}: {err.strerror or _first_line(err)}"


def _write_reports(
    cfg: DictConfig,
    rows: list[dict[str, Any]],
    algorithm: Any,
    data: Dataset,
    out_dir: Path,
    *,
    status: str,
    started: float,
    error: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """summary.json and curves.png of the rows recorded so far."""
    metrics = pd.DataFrame(rows, columns=METRIC_COLUMNS)
    net = algorithm.net
    summary = summarize(
        metrics, status=status, **({"error": error} if error else {}),
        wall_seconds=time.perf_counter() - started, device=str(data.X_train.device),
        dtype=cfg.dtype, parameters=net.n_parameters(),
        sizes=net.sizes, n_train=data.n_train, n_test=data.n_test,
        method=algorithm.name, alpha_output_block=getattr(algorithm, "alpha_out", None),
    )  # fmt: skip
    if rank() != 0:  # rank 0 alone writes the reports of a data-parallel run
        return metrics, summary
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
