"""Experiment trackers of the ``logger`` config group: TensorBoard and MLflow beside the run folder's own files.

``logger=csv`` (the default) adds nothing to the run folder's files. ``logger=tensorboard`` writes event
files in ``RUN/tensorboard/``, ``logger=mlflow`` one MLflow run per run folder, ``logger=many`` both.
What each writes, and where, is told in docs/tracking.md.

A tracker watches a run as a run observer (``bcd_cli.run.observers``) and never decides its fate: every call into
a tracking library goes through ``Guarded``, which turns the first error into one warning and switches that tracker
off for the rest of the run, so that metrics.csv, the checkpoints and the reports are written whatever
happens to a tracking server or its disk. A resumed run continues its tracker's series where the
checkpoint left it: TensorBoard discards the steps written after the checkpoint (``purge_step``), and
MLflow's run, whose id ``RUN/mlflow_run.json`` records, skips the steps it already holds.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bcd_cli.errors import first_line
from bcd_cli.run.records import METRIC_COLUMNS, write_json
from bcd_cli.run.resume import SAVED_CONFIG
from bcd_cli.run.spec import LoggerSettings, RunSpec

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"
MLFLOW_RUN_FILE = "mlflow_run.json"
DEFAULT_TRACKING_URI = "sqlite:///outputs/mlflow.db"
DEFAULT_EXPERIMENT = "bcd-cli"
PARAM_LENGTH = 6000  # MLflow's limit on the length of a param value
PARAMS_PER_BATCH = 100  # MLflow's limit on the params of one log_batch call
# MLflow's HTTP client retries a tracking server that does not answer for minutes by default (7 retries, growing
# waits); a run gives up on it after a few seconds instead. Each is a default: the variable set by the user wins.
HTTP_PATIENCE = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
# the summary fields shown beside the hparams in TensorBoard
FINAL_METRICS = ("final_test_acc", "best_test_acc", "final_train_acc", "final_objective")
# a run's status -> the MLflow run status it ends with
MLFLOW_STATUS = {"completed": "FINISHED", "pruned": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
SERIES = [c for c in METRIC_COLUMNS if c != "sweep"]  # the metrics.csv columns a tracker records, step = sweep


def loggers(logger: LoggerSettings, out_dir: Path) -> list[Guarded]:
    """The trackers ``logger`` names besides the run folder's own files, each behind its ``Guarded`` wall: run
    observers (``bcd_cli.run.observers.RunObserver``)."""
    names = logger.trackers
    trackers: list[Guarded] = []
    if "tensorboard" in names:
        trackers.append(Guarded("tensorboard", TensorBoardTracker()))
    if "mlflow" in names:
        trackers.append(Guarded("mlflow", MlflowTracker(_launch(out_dir))))
    return trackers


def flat_config(plain: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved config (``RunSpec.config``) as ``{"model.widths": [16], ...}``: nested keys joined by dots,
    lists kept whole, Hydra's own node left out."""
    flat: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping) and node:
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            flat[prefix[:-1]] = node

    walk({k: v for k, v in plain.items() if k != "hydra"}, "")
    return flat


class Guarded:
    """One tracker behind a wall: the first error of any of its calls is logged as one warning naming the tracker,
    and the tracker is switched off (its ``close`` tried, quietly) for the rest of the run."""

    def __init__(self, name: str, tracker: Any) -> None:
        self.name, self.tracker, self.off = name, tracker, False

    def _call(self, what: str, *args: Any) -> None:
        if self.off:
            return
        try:
            getattr(self.tracker, what)(*args)
        except Exception as exc:
            self.off = True
            log.warning("%s tracker switched off for the rest of this run: %s", self.name, _error(exc))
            try:
                self.tracker.close()
            except Exception as again:
                log.debug("%s tracker not closed: %s", self.name, _error(again))

    def start(self, spec: RunSpec, out_dir: Path, start_sweep: int) -> None:
        self._call("start", spec, out_dir, start_sweep)

    def sweep(self, row: dict[str, Any]) -> None:
        self._call("sweep", row)

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        self._call("finish", status, summary, files)
        self._call("close")
        self.off = True


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {first_line(exc)}"


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number; None for an empty cell (NaN) or anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class TensorBoardTracker:
    """Event files in ``RUN/tensorboard/``: every metrics.csv column per sweep as a scalar (step = sweep; empty
    cells are left out), and at the end the flattened config as hparams with the final accuracies and
    objective as their metrics, and the run's figures as images."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.params: dict[str, Any] = {}
        self.last_sweep = 0

    def start(self, spec: RunSpec, out_dir: Path, start_sweep: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        folder = out_dir / TENSORBOARD_DIR
        earlier = sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []
        purge_step = None
        if earlier:  # a resumed run: readers drop what the stopped process wrote after the checkpoint
            purge_step = start_sweep + 1 if start_sweep > 0 else 0
            _after_second_of(earlier)
        self.params, self.last_sweep = flat_config(spec.config), start_sweep
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)

    def sweep(self, row: dict[str, Any]) -> None:
        step = int(row["sweep"])
        for key in SERIES:
            value = _finite(row.get(key))
            if value is not None:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()
        self.last_sweep = step

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        from torch.utils.tensorboard.summary import hparams

        metrics = {key: value for key in FINAL_METRICS if (value := _finite(summary.get(key))) is not None}
        if metrics:
            params = {key: _hparam(value) for key, value in self.params.items()}
            params["status"] = status
            file_writer = self.writer._get_file_writer()
            for part in hparams(params, metrics):
                file_writer.add_summary(part, self.last_sweep)
            for key, value in metrics.items():
                self.writer.add_scalar(key, value, self.last_sweep)
        for path in files:
            if path.suffix == ".png" and path.is_file():
                self.writer._get_file_writer().add_summary(_png_summary(path.stem, path.read_bytes()), self.last_sweep)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _after_second_of(earlier: list[Path]) -> None:
    """Waits, a second at most, until the clock is past the second in which the newest of ``earlier`` event files
    was created: readers take a folder's files in the order of their names, which start with that second, and
    the new file's purge must come after the files it purges."""
    seconds = [int(p.name.split(".")[3]) for p in earlier if p.name.split(".")[3].isdigit()]
    newest = max(seconds, default=0)
    deadline = time.monotonic() + 1.5
    while int(time.time()) <= newest and time.monotonic() < deadline:
        time.sleep(0.05)


def _hparam(value: Any) -> bool | int | float | str:
    """A config value as TensorBoard's hparams take it: numbers, booleans and strings as they are, the rest as
    text."""
    return value if isinstance(value, bool | int | float | str) else str(value)


def _png_summary(tag: str, png: bytes) -> Any:
    """A TensorBoard image summary holding a PNG file as it is (its size read from the PNG header)."""
    from tensorboard.compat.proto.summary_pb2 import Summary

    width, height = struct.unpack(">II", png[16:24])
    image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=png)
    return Summary(value=[Summary.Value(tag=tag, image=image)])


class _Launch:
    """Where bcd-train was launched (relative paths of the logger config are taken from there) and, for a job of a
    multirun, its sweep folder."""

    def __init__(self, cwd: Path, sweep_dir: Path | None) -> None:
        self.cwd, self.sweep_dir = cwd, sweep_dir

    def shown(self, path: Path) -> str:
        """``path`` relative to the launch folder when inside it, else absolute."""
        path = path if path.is_absolute() else self.cwd / path
        try:
            return str(path.resolve().relative_to(self.cwd.resolve()))
        except ValueError:
            return str(path.resolve())


def _launch(out_dir: Path) -> _Launch:
    """The launch of the Hydra job writing ``out_dir``; the current folder when no such job runs (``run`` called
    directly, or a Hydra config left from another run in this process)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    cwd = Path.cwd()
    if not HydraConfig.initialized():
        return _Launch(cwd, None)
    hydra_cfg = HydraConfig.get()
    output = OmegaConf.select(hydra_cfg.runtime, "output_dir", default=None, throw_on_missing=False)  # type: ignore[arg-type]
    if not output or Path(output).resolve() != out_dir.resolve():
        return _Launch(cwd, None)
    cwd = Path(hydra_cfg.runtime.cwd or cwd)
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return _Launch(cwd, None)
    sweep_dir = Path(str(hydra_cfg.sweep.dir))
    return _Launch(cwd, sweep_dir if sweep_dir.is_absolute() else cwd / sweep_dir)


def tracking_uri(value: str | None, cwd: Path) -> str:
    """The MLflow tracking URI of ``logger.tracking_uri`` (default a SQLite file in outputs/), with a relative
    path in a ``sqlite:///`` URI or a plain path made absolute from ``cwd``; a SQLite file's folder is made."""
    uri = value or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        path = path if path.is_absolute() else cwd / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri and ":" not in uri.split("/")[0]:
        return str(cwd / uri) if not Path(uri).is_absolute() else uri
    return uri


class MlflowTracker:
    """One MLflow run per run folder, through ``MlflowClient`` with explicit run ids (the jobs of a multirun share
    one process). Params: the flattened config, values as text; metrics: every metrics.csv column per sweep
    (step = sweep; empty cells left out); at the end the run's reports as artifacts, its status as a tag and as
    MLflow's run status. The run's id and tracking URI are kept in ``RUN/mlflow_run.json``, so that a resumed run
    continues the same MLflow run, where steps already logged are not logged again."""

    def __init__(self, launch: _Launch) -> None:
        self.launch = launch
        self.client: Any = None
        self.run_id = ""
        self.out_dir = Path()
        self.logged: dict[str, set[int]] = {}  # metric -> the steps the MLflow run already holds

    def start(self, spec: RunSpec, out_dir: Path, start_sweep: int) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.out_dir = out_dir
        for variable, value in HTTP_PATIENCE.items():
            os.environ.setdefault(variable, value)
        record = out_dir / MLFLOW_RUN_FILE
        if record.is_file():  # a resumed run: its MLflow run continues
            saved = json.loads(record.read_text())
            self.client, self.run_id = MlflowClient(tracking_uri=saved["tracking_uri"]), saved["run_id"]
            params = self.client.get_run(self.run_id).data.params
            self.logged = {k: {m.step for m in self.client.get_metric_history(self.run_id, k)} for k in SERIES}
            self.client.update_run(self.run_id, status="RUNNING")
        else:
            uri = tracking_uri(spec.logger.tracking_uri, self.launch.cwd)
            self.client, params = MlflowClient(tracking_uri=uri), {}
            tags = {"bcd.run_dir": str(out_dir.resolve())}
            experiment = self._experiment(spec.logger, uri)
            run = self.client.create_run(experiment, run_name=self.launch.shown(out_dir), tags=tags)
            self.run_id = run.info.run_id
            write_json(record, {"run_id": self.run_id, "tracking_uri": uri, "experiment_id": run.info.experiment_id})
        self.client.set_tag(self.run_id, "bcd.status", "running")
        self.client.set_tag(self.run_id, "bcd.epochs", str(spec.epochs))
        # a resume keeps the first values
        new = [Param(k, v) for k, v in _params(spec.config).items() if k not in params]
        for i in range(0, len(new), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=new[i : i + PARAMS_PER_BATCH])

    def _experiment(self, logger: LoggerSettings, uri: str) -> str:
        """The id of the run's experiment: ``logger.experiment``, else the sweep folder of a multirun's job, else
        ``bcd-cli``; created when new (with its artifacts beside a SQLite file, or where ``logger.artifact_location``
        says)."""
        name = logger.experiment
        if name is None:
            name = self.launch.shown(self.launch.sweep_dir) if self.launch.sweep_dir else DEFAULT_EXPERIMENT
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        location = logger.artifact_location
        if location is None and uri.startswith("sqlite:///"):
            location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        try:
            return str(self.client.create_experiment(name, artifact_location=location))
        except Exception:  # another job of the multirun created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)

    def sweep(self, row: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step, now = int(row["sweep"]), int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, step)
            for key in SERIES
            if (value := _finite(row.get(key))) is not None and step not in self.logged.get(key, ())
        ]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        config = self.out_dir / SAVED_CONFIG
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        if config.is_file():
            self.client.log_artifact(self.run_id, str(config), artifact_path=SAVED_CONFIG.parent.name)
        self.client.set_tag(self.run_id, "bcd.status", status)
        self.client.set_terminated(self.run_id, status=MLFLOW_STATUS.get(status, "FAILED"))

    def close(self) -> None:
        """Nothing stays open between calls: each call of ``MlflowClient`` is complete when it returns."""


def _params(config: Mapping[str, Any]) -> dict[str, str]:
    """The flattened config as MLflow params: values as text, cut to MLflow's length limit."""
    params = {}
    for key, value in flat_config(config).items():
        text = json.dumps(value) if isinstance(value, list | dict) else str(value)
        params[key] = text if len(text) <= PARAM_LENGTH else text[: PARAM_LENGTH - 3] + "..."
    return params
