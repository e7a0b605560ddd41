"""Multiruns through Hydra's launcher plugins: joblib (parallel local jobs), submitit_local, and the slurm preset."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bcd_cli.app import compose
from bcd_cli.cli.preflight import preflight
from bcd_cli.errors import ConfigError
from tests.conftest import TINY, default_stop_signals, run_cli

JOB_FILES = ("metrics.csv", "summary.json", "checkpoint.pt", "train.log")
# one sweep of one job, e.g. "BCD #1 sweep 2/2  L=19.2977  train 0.5250  test 0.2667  (0.00 s)"
PROGRESS_LINE = re.compile(r"BCD #\d sweep \d/2  L=\S+  train [\d.]+  test [\d.]+  \([\d.]+ s\)")


def assert_completed_jobs(sweep: Path, jobs: list[int]) -> pd.DataFrame:
    """Jobs ``jobs`` of the multirun in ``sweep`` wrote their files and completed; returns sweep_summary.csv."""
    for job in jobs:
        folder = sweep / str(job)
        assert all((folder / name).is_file() for name in JOB_FILES), sorted(p.name for p in folder.iterdir())
        assert len(pd.read_csv(folder / "metrics.csv")) == 3  # sweeps 0, 1, 2
        assert json.loads((folder / "summary.json").read_text())["status"] == "completed"
        assert "sweep 2:" in (folder / "train.log").read_text()
    table = pd.read_csv(sweep / "sweep_summary.csv").set_index("job")
    assert (table.loc[jobs, "status"] == "completed").all()
    return table


@pytest.fixture(scope="module")
def joblib_sweep(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """One joblib multirun in 2 workers: gamma=0.1,1 x data.n_train=120,5000; 5000 > digits' 1347 fails."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install '.[launchers]'")
    root = tmp_path_factory.mktemp("joblib")
    sweep = root / "sweep"
    proc = run_cli(
        "-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "gamma=0.1,1", "data.n_train=120,5000", *TINY,
        f"hydra.sweep.dir={sweep}", cwd=root,
    )  # fmt: skip
    return proc, sweep


@pytest.mark.process
def test_joblib_runs_jobs_in_parallel_workers_and_writes_the_report(joblib_sweep):
    proc, sweep = joblib_sweep
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout, proc.stdout
    table = assert_completed_jobs(sweep, [0, 2])
    assert table[["gamma", "data.n_train"]].values.tolist() == [[0.1, 120], [0.1, 5000], [1, 120], [1, 5000]]
    assert (sweep / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # jobs print plain lines, never a live bar, and the workers' lines do not break into each other
    lines = [line for line in proc.stdout.splitlines() if "BCD #" in line]
    assert len(lines) == 2 * 3
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines), lines
    assert {line.split()[1] for line in lines} == {"#0", "#2"}
    assert "\x1b[" not in proc.stdout


@pytest.mark.process
def test_joblib_records_the_failing_jobs_and_exits_1(joblib_sweep):
    proc, sweep = joblib_sweep
    assert proc.returncode == 1, proc.stderr
    assert "bcd-train: 2 of 4 jobs failed" in proc.stderr
    for job in (1, 3):
        assert f"job {job}: failed: data.n_train=5000 is invalid: an integer in 1..1347" in proc.stderr
        assert json.loads((sweep / str(job) / "summary.json").read_text())["status"] == "failed"
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["status"].tolist() == ["completed", "failed", "completed", "failed"]
    assert table["error"].iloc[[1, 3]].str.contains("data.n_train=5000").all()


@pytest.mark.process
def test_submitit_local_runs_each_job_as_a_process_and_writes_the_report(tmp_path: Path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[launchers]'")
    sweep = tmp_path / "sweep"
    # timeout_min: a job that hangs is stopped after 5 minutes instead of the plugin's 60
    proc = run_cli(
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=5", "gamma=0.1,1", *TINY,
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_completed_jobs(sweep, [0, 1])
    # each job's console output goes to its submitit log, not to the terminal
    logs = sorted(sweep.glob(".submitit/*/*_0_log.out"))
    assert len(logs) == 2
    assert all("sweep 2/2" in log.read_text() for log in logs)


def metrics_rows(folder: Path) -> int:
    path = folder / "metrics.csv"
    return max(0, path.read_bytes().count(b"\n") - 1) if path.exists() else 0


@pytest.mark.process
@pytest.mark.slow
def test_ctrl_c_stops_a_joblib_multirun_and_reports_it(tmp_path: Path):
    """Ctrl-C reaches the command and its workers (one process group, as in a terminal): exit 130, a report."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install '.[launchers]'")
    sweep = tmp_path / "sweep"
    args = ["-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "gamma=1,2", "data.n_train=600", "epochs=500"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bcd_cli", *args, "checkpoint.every=1", "device=cpu", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=default_stop_signals,  # SIGINT as in a terminal, even under a background job that ignores it
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
        if min(metrics_rows(sweep / "0"), metrics_rows(sweep / "1")) >= 3:  # both jobs checkpointed sweep 1
            os.killpg(proc.pid, signal.SIGINT)
            break
        time.sleep(0.05)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "bcd-train: interrupted by SIGINT" in stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["job"].tolist() == [0, 1]
    # joblib ends its workers on Ctrl-C: a job it ended before its summary was written is reported killed
    assert set(table["status"]) <= {"interrupted", "killed", "missing"}
    assert all((sweep / str(job) / "checkpoint.pt").is_file() for job in (0, 1))


def launcher_config(*overrides: str):
    """``hydra.launcher`` of the real config composed with ``overrides``."""
    return compose(*overrides, hydra_config=True).hydra.launcher


def test_slurm_preset_extends_the_plugins_slurm_launcher():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[launchers]'")
    launcher = launcher_config("hydra/launcher=slurm", "hydra.launcher.partition=gpu")
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.partition == "gpu" and launcher.account is None
    assert (launcher.timeout_min, launcher.cpus_per_task, launcher.mem_gb) == (240, 4, 16)
    assert launcher.gpus_per_node is None and launcher.array_parallelism == 16
    assert launcher.max_num_timeout == 0  # a requeued job would start again from sweep 0
    assert list(launcher.setup) == ["export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK"]


def test_slurm_preset_writes_a_valid_sbatch_script(tmp_path: Path, monkeypatch):
    """The preset's settings as the plugin hands them to submitit, and the sbatch script submitit writes."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[launchers]'")
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for command in ("srun", "sbatch"):
        (fake_bin / command).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / command).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    node = launcher_config("hydra/launcher=slurm", "hydra.launcher.account=lab")
    launcher = OmegaConf.to_container(node, resolve=True)  # as BaseSubmititLauncher.__init__ receives it
    assert isinstance(launcher, dict)
    launcher.pop("_target_")
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit")
    base = set(OmegaConf.structured(BaseQueueConf).keys())  # as BaseSubmititLauncher.launch names them
    params = {
        k if k in base else f"slurm_{k}": v
        for k, v in launcher.items()
        if k not in ("submitit_folder", "max_num_timeout")
    }
    executor.update_parameters(**params)
    script = executor._executor._make_submission_file_text("python -m bcd_cli", "uid")
    for line in ("--time=240", "--cpus-per-task=4", "--mem=16GB", "--account=lab", "--job-name=train"):
        assert f"#SBATCH {line}" in script
    assert "--partition" not in script and "--gpus" not in script
    assert "export OMP_NUM_THREADS=$SLURM_CPUS_PER_TASK" in script


def test_preflight_accepts_the_launchers_and_refuses_slurm_without_slurm(tmp_path: Path, monkeypatch):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install '.[launchers]'")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[launchers]'")
    sweep = ["-m", "gamma=0.1,1", *TINY, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    for launcher in ("joblib", "submitit_local"):
        preflight([*sweep, f"hydra/launcher={launcher}"])
    with pytest.raises(ConfigError, match=r"one of basic, joblib, slurm, submitit_local, submitit_slurm"):
        preflight([*sweep, "hydra/launcher=foo"])
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch nor srun
    with pytest.raises(ConfigError, match=r"hydra/launcher='slurm' is invalid: .*sbatch and srun are not on PATH"):
        preflight([*sweep, "hydra/launcher=slurm"])
    for command in ("srun", "sbatch"):
        (tmp_path / command).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / command).chmod(0o755)
    preflight([*sweep, "hydra/launcher=slurm"])  # on a SLURM login node
    assert not (tmp_path / "sweep").exists()
