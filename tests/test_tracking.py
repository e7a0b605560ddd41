"""Experiment trackers (``logger=``): what TensorBoard and MLflow hold, read back with their own readers; resumed
runs continue the same series without a step twice; a missing package is refused before the run, a failing
tracker is one warning and the run keeps all its files."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

from mlflow.entities import Metric  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData  # noqa: E402
from torch.utils.tensorboard import SummaryWriter  # noqa: E402

from bcd_cli.errors import ConfigError, NumericalError  # noqa: E402
from bcd_cli.run import tracking  # noqa: E402
from bcd_cli.run.checkpoint import CHECKPOINT_FILE  # noqa: E402
from bcd_cli.run.records import METRIC_COLUMNS, METRICS_FILE, SUMMARY_FILE  # noqa: E402
from bcd_cli.run.spec import resolve, validate  # noqa: E402
from bcd_cli.run.train import run  # noqa: E402
from tests.conftest import TINY, compose_config  # noqa: E402

SERIES = [c for c in METRIC_COLUMNS if c != "sweep"]
REPORTS = {"metrics.csv", "summary.json", "curves.png", "convergence.png", ".hydra/config.yaml"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with its tables made: making them takes seconds, copying this file does not."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite(empty_store: Path):
    """``sqlite(folder)``: the tracking URI of a new MLflow store, ``folder/mlflow.db``."""

    def make(folder: Path) -> str:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store, folder / "mlflow.db")
        return f"sqlite:///{folder / 'mlflow.db'}"

    return make


def tensorboard_of(run_dir: Path) -> EventAccumulator:
    """The run's TensorBoard events as TensorBoard reads them (every event kept, orphaned steps purged)."""
    events = EventAccumulator(str(run_dir / tracking.TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0})
    return events.Reload()


def mlflow_run(run_dir: Path, uri: str):
    """(client, run) of the MLflow run recorded in the run folder."""
    client = MlflowClient(tracking_uri=uri)
    run_id = json.loads((run_dir / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
    return client, client.get_run(run_id)


def csv_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """metrics.csv as {column: {sweep: value}}, its empty cells left out as the trackers leave them out."""
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    return {
        key: {int(s): float(v) for s, v in zip(metrics["sweep"], metrics[key], strict=True) if math.isfinite(v)}
        for key in SERIES
    }


def tensorboard_series(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    events = tensorboard_of(run_dir)
    return {key: [(e.step, e.value) for e in events.Scalars(key)] for key in SERIES if key in events.Tags()["scalars"]}


def mlflow_series(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    return {key: sorted((m.step, m.value) for m in client.get_metric_history(run_id, key)) for key in SERIES}


def assert_series_match(logged: dict[str, list[tuple[int, float]]], expected: dict[str, dict[int, float]]) -> None:
    """Each metrics.csv column's values by sweep, each step once (float32 precision: TensorBoard's scalars)."""
    for key, values in expected.items():
        steps = [step for step, _ in logged.get(key, [])]
        assert steps == sorted(values), (key, steps)
        for step, value in logged.get(key, []):
            assert value == pytest.approx(values[step], rel=1e-6, abs=1e-30), (key, step)


@pytest.fixture(scope="module")
def many(tmp_path_factory, empty_store: Path) -> tuple[Path, str, dict]:
    """(run folder, tracking URI, summary) of a tiny run with logger=many."""
    root = tmp_path_factory.mktemp("many")
    shutil.copyfile(empty_store, root / "mlflow.db")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    result = run(compose_config(*TINY, "logger=many", f"logger.tracking_uri={uri}"), root / "run")
    return root / "run", uri, result.summary


def test_tensorboard_holds_every_column_per_sweep_the_hparams_and_the_figures(many):
    run_dir, _, summary = many
    assert_series_match(tensorboard_series(run_dir), csv_series(run_dir))
    events = tensorboard_of(run_dir)
    for key in tracking.FINAL_METRICS:
        assert [e.value for e in events.Scalars(key)] == pytest.approx([summary[key]], rel=1e-6)
    content = events.PluginTagToContent("hparams")
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["model.widths"].string_value == "[16]"
    assert start.hparams["epochs"].number_value == 2
    assert start.hparams["trainer.name"].string_value == "bcd"
    assert start.hparams["status"].string_value == "completed"
    for name in ("curves", "convergence"):
        (image,) = events.Images(name)
        assert image.encoded_image_string == (run_dir / f"{name}.png").read_bytes()


def test_mlflow_holds_the_flattened_config_every_sweep_and_the_reports(many):
    run_dir, uri, _ = many
    client, mlrun = mlflow_run(run_dir, uri)
    expected = tracking.flat_config(resolve(compose_config(*TINY, "logger=many", f"logger.tracking_uri={uri}")).config)
    params = mlrun.data.params
    assert params["model.widths"] == "[16]" and params["epochs"] == "2" and params["logger.name"] == "many"
    assert set(params) == set(expected)
    assert_series_match(mlflow_series(client, mlrun.info.run_id), csv_series(run_dir))
    metrics = pd.read_csv(run_dir / METRICS_FILE)
    history = {m.step: m.value for m in client.get_metric_history(mlrun.info.run_id, "objective")}
    assert [history[k] for k in range(3)] == metrics["objective"].tolist()  # MLflow keeps float64 exactly
    listed = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    listed |= {a.path for a in client.list_artifacts(mlrun.info.run_id, ".hydra")}
    assert REPORTS - {".hydra/config.yaml"} <= listed  # run() called directly: Hydra writes no .hydra/
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["bcd.status"] == "completed"
    assert mlrun.data.tags["bcd.run_dir"] == str(run_dir.resolve())
    assert mlrun.info.run_name == str(run_dir.resolve())  # outside the launch folder: its absolute path


def test_the_default_logger_writes_only_the_run_folder_files(tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, stderr
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert tracking.TENSORBOARD_DIR not in names and tracking.MLFLOW_RUN_FILE not in names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no mlflow.db beside it


def test_a_multirun_groups_its_jobs_in_an_experiment_named_after_its_folder(tmp_path: Path, bcd_train, sqlite):
    """The default tracking URI is relative to the launch folder; each job is one run named after its folder."""
    sqlite(tmp_path / "outputs")
    code, stderr = bcd_train("-m", *TINY, "logger=mlflow", "seed=0,1", "hydra.sweep.dir=sweeps/a", cwd=tmp_path)
    assert code == 0, stderr
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sweeps/a")
    assert experiment is not None
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["sweeps/a/0", "sweeps/a/1"]
    assert {r.data.params["seed"] for r in runs} == {"0", "1"}
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert not (tmp_path / "mlruns").exists()  # the artifacts lie beside the SQLite file
    assert (tmp_path / "outputs" / "mlartifacts").is_dir()


def test_a_resumed_run_continues_the_same_series_with_each_step_once(tmp_path: Path, bcd_train, sqlite):
    uri = sqlite(tmp_path)
    code, stderr = bcd_train(*TINY, "logger=many", f"logger.tracking_uri={uri}", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, stderr
    run_dir = tmp_path / "run"
    first = json.loads((run_dir / tracking.MLFLOW_RUN_FILE).read_text())["run_id"]
    code, stderr = bcd_train("resume=run", "epochs=4", cwd=tmp_path)
    assert code == 0, stderr
    client, mlrun = mlflow_run(run_dir, uri)
    assert mlrun.info.run_id == first and mlrun.info.status == "FINISHED"
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    assert mlrun.data.tags["bcd.epochs"] == "4"
    listed = {a.path for a in client.list_artifacts(first)} | {a.path for a in client.list_artifacts(first, ".hydra")}
    assert REPORTS <= listed
    expected = csv_series(run_dir)
    assert sorted(expected["objective"]) == [0, 1, 2, 3, 4]
    assert_series_match(mlflow_series(client, first), expected)
    assert_series_match(tensorboard_series(run_dir), expected)
    assert len(list((run_dir / tracking.TENSORBOARD_DIR).iterdir())) == 2  # the same folder, a file per process


def test_steps_a_killed_process_logged_after_its_checkpoint_are_not_twice_after_resume(
    tmp_path: Path, bcd_train, sqlite
):
    """A process killed after sweep 4 with its last checkpoint at sweep 2 has logged sweeps 3 and 4 to both
    trackers (simulated: TensorBoard with wrong values, which the resume's purge must drop; MLflow with the values
    the uninterrupted run has, which the resume must not log again)."""
    uri = sqlite(tmp_path)
    code, stderr = bcd_train(*TINY, "logger=many", f"logger.tracking_uri={uri}", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 0, stderr
    code, stderr = bcd_train(*TINY, "epochs=4", "hydra.run.dir=ref", cwd=tmp_path)
    assert code == 0, stderr
    run_dir, reference = tmp_path / "run", pd.read_csv(tmp_path / "ref" / METRICS_FILE)
    client, mlrun = mlflow_run(run_dir, uri)
    later = reference[reference["sweep"] > 2]
    client.log_batch(
        mlrun.info.run_id,
        metrics=[
            Metric(k, float(r[k]), 0, int(r["sweep"])) for _, r in later.iterrows() for k in SERIES if r[k] == r[k]
        ],
    )
    tracking._after_second_of(sorted((run_dir / tracking.TENSORBOARD_DIR).iterdir()))
    with SummaryWriter(str(run_dir / tracking.TENSORBOARD_DIR)) as killed:
        for sweep in (3, 4):
            for key in SERIES:
                killed.add_scalar(key, -1.0, sweep)
    code, stderr = bcd_train("resume=run", "epochs=4", cwd=tmp_path)
    assert code == 0, stderr
    expected = csv_series(run_dir)
    tensorboard = tensorboard_series(run_dir)
    assert_series_match(tensorboard, expected)
    assert all(value != -1.0 for series in tensorboard.values() for _, value in series)
    logged = mlflow_series(client, mlrun.info.run_id)
    assert [step for step, _ in logged["objective"]] == [0, 1, 2, 3, 4]
    expected["seconds"] = {**expected["seconds"], 3: reference["seconds"][3], 4: reference["seconds"][4]}
    assert_series_match(logged, expected)


@pytest.mark.parametrize("logger, package", [("mlflow", "mlflow"), ("tensorboard", "tensorboard"), ("many", "mlflow")])
def test_a_tracker_without_its_package_is_refused_before_the_run(
    tmp_path: Path, bcd_train, monkeypatch, logger, package
):
    monkeypatch.setitem(sys.modules, package, None)  # import mlflow now fails as when it is not installed
    code, stderr = bcd_train(*TINY, f"logger={logger}", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 2
    assert f"logger={logger} needs the {package} package: pip install 'bcd-cli[tracking]'" in stderr
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert not (tmp_path / "run").exists()


def test_bad_logger_settings_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match=r"logger.trackers=\['wandb'\] is invalid: a list of tensorboard, mlflow"):
        validate(compose_config(*TINY, "logger.trackers=[wandb]"))
    with pytest.raises(ConfigError, match="logger.tracking_uri=' ' is invalid: a non-empty string"):
        validate(compose_config(*TINY, "logger=mlflow", "logger.tracking_uri=' '"))


def test_a_failing_tracker_is_one_warning_and_the_run_keeps_all_its_files(tmp_path: Path, monkeypatch, caplog, sqlite):
    calls = {"log_batch": 0, "add_scalar": 0}

    def failing(name: str, original, error: Exception, counted, after: int):
        """``original``, raising ``error`` from the call after the ``after``-th that ``counted`` selects."""

        def call(self, *args, **kwargs):
            if counted(kwargs):
                calls[name] += 1
                if calls[name] > after:
                    raise error
            return original(self, *args, **kwargs)

        return call

    gone = ConnectionError("gone")  # the second sweep's metrics (sweep 1) meet a tracking server gone
    monkeypatch.setattr(
        MlflowClient, "log_batch", failing("log_batch", MlflowClient.log_batch, gone, lambda kw: "metrics" in kw, 1)
    )
    disk_full = OSError(28, "No space left on device")  # the 16th scalar: sweep 0 has 11 (D, descent_ratio empty)
    monkeypatch.setattr(
        SummaryWriter, "add_scalar", failing("add_scalar", SummaryWriter.add_scalar, disk_full, lambda kw: True, 15)
    )
    with caplog.at_level(logging.WARNING, logger="bcd_cli"):
        result = run(compose_config(*TINY, "logger=many", f"logger.tracking_uri={sqlite(tmp_path)}"), tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2, warnings
    assert any(w.startswith("mlflow tracker switched off") and "ConnectionError: gone" in w for w in warnings)
    assert any(w.startswith("tensorboard tracker switched off") and "No space left" in w for w in warnings)
    assert calls["log_batch"] == 2 and calls["add_scalar"] == 16  # nothing called once switched off
    assert result.summary["status"] == "completed" and result.summary["sweeps"] == 2
    assert len(pd.read_csv(tmp_path / "run" / METRICS_FILE)) == 3
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["status"] == "completed"
    assert all((tmp_path / "run" / name).is_file() for name in ("curves.png", "convergence.png", CHECKPOINT_FILE))


def test_a_tracking_server_that_does_not_answer_is_given_up_after_a_few_retries(tmp_path: Path, monkeypatch, caplog):
    """A real HTTP tracking URI where nothing listens: the run sets MLflow's retry settings to a few (those the
    user set are kept), the tracker is switched off with one warning and the run completes with its files."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for variable in tracking.HTTP_PATIENCE:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "7")
    cfg = compose_config(*TINY, "logger=mlflow", f"logger.tracking_uri=http://127.0.0.1:{port}")
    with caplog.at_level(logging.WARNING, logger="bcd_cli"):
        result = run(cfg, tmp_path / "run")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("bcd_cli")]
    assert len(warnings) == 1 and warnings[0].startswith("mlflow tracker switched off"), warnings
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "7"  # the user's own setting wins
    assert result.summary["status"] == "completed"
    assert all((tmp_path / "run" / name).is_file() for name in (METRICS_FILE, SUMMARY_FILE, CHECKPOINT_FILE))


def test_a_run_that_fails_before_any_row_ends_its_mlflow_run_as_failed(tmp_path: Path, sqlite):
    uri = sqlite(tmp_path)
    cfg = compose_config(*TINY, "logger=mlflow", f"logger.tracking_uri={uri}", "model.init_scale=1e30")
    with pytest.raises(NumericalError):
        run(cfg, tmp_path / "run")
    _, mlrun = mlflow_run(tmp_path / "run", uri)
    assert mlrun.info.status == "FAILED"
    assert mlrun.data.tags["bcd.status"] == "failed"


def test_a_run_folder_without_the_logger_key_resumes_as_csv(tmp_path: Path, bcd_train, tiny_run):
    tiny_run("old")
    saved = tmp_path / "old" / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved)
    del config["logger"]
    OmegaConf.save(config, saved)
    path = tmp_path / "old" / CHECKPOINT_FILE
    raw = torch.load(path, weights_only=True)
    del raw["config"]["logger"]
    torch.save(raw, path)
    code, stderr = bcd_train("resume=old", "epochs=3", cwd=tmp_path)
    assert code == 0, stderr
    assert len(pd.read_csv(tmp_path / "old" / METRICS_FILE)) == 4
    names = {p.name for p in (tmp_path / "old").iterdir()}
    assert tracking.TENSORBOARD_DIR not in names and tracking.MLFLOW_RUN_FILE not in names


def test_long_param_values_are_cut_to_mlflows_limit():
    cfg = OmegaConf.create({"note": "x" * 7000, "model": {"widths": [16, 8]}, "hydra": {"run": 1}})
    params = tracking._params(cfg)
    assert len(params["note"]) == tracking.PARAM_LENGTH and params["note"].endswith("...")
    assert params["model.widths"] == "[16, 8]" and "hydra.run" not in params
