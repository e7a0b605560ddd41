"""The Optuna search (hydra/sweeper=optuna): trials as job folders, the study's report, failures, pruning,
refusals, and a search stopped by a signal and continued by the same command."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import optuna
import pandas as pd
import pytest

from bcd_cli.reports.sweep import HEATMAP_FILE, SWEEP_SUMMARY_FILE, read_overrides
from bcd_cli.run.checkpoint import CHECKPOINT_FILE
from bcd_cli.run.folders import STUDY_FILE, run_lock
from bcd_cli.run.records import METRICS_FILE, SUMMARY_FILE
from bcd_cli.search.study import BEST_FILE, HISTORY_FILE, IMPORTANCES_FILE, TRIALS_FILE, parse_space
from tests.conftest import TINY

SEARCH = ["-m", "hydra/sweeper=optuna", *TINY, "hydra.sweeper.seed=0"]
GAMMA, ALPHA = "gamma=tag(log, interval(0.01, 100))", "alpha=tag(log, interval(0.1, 100))"


def study(folder: Path) -> optuna.Study:
    [name] = optuna.study.get_all_study_names(f"sqlite:///{folder / STUDY_FILE}")
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / STUDY_FILE}")


def states(folder: Path) -> list[str]:
    return [t.state.name for t in study(folder).trials]


def status(job: Path) -> str:
    return json.loads((job / SUMMARY_FILE).read_text())["status"]


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_a_search_runs_its_trials_as_job_folders_and_reports_the_study(tmp_path: Path, bcd_train):
    sweep = tmp_path / "search"
    args = [*SEARCH, GAMMA, ALPHA, "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={sweep}"]
    code, stderr = bcd_train(*args, cwd=tmp_path)
    assert code == 0, stderr
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    for t in trials:  # job folder N is trial N, with the trial's values as its overrides
        job = sweep / str(t.number)
        overrides = read_overrides(job)
        assert float(overrides["gamma"]) == t.params["gamma"] and float(overrides["alpha"]) == t.params["alpha"]
        assert overrides["debug"] == "fast" and status(job) == "completed"
        assert json.loads((job / SUMMARY_FILE).read_text())["best_test_acc"] == t.value  # the default objective
    table = pd.read_csv(sweep / TRIALS_FILE)
    assert table["number"].tolist() == [0, 1, 2] and table["state"].tolist() == ["COMPLETE"] * 3
    assert table["job"].astype(str).tolist() == ["0", "1", "2"] and (table["duration_seconds"] > 0).all()
    best = json.loads((sweep / BEST_FILE).read_text())
    assert best["best_value"] == max(t.value for t in trials) and best["direction"] == "maximize"
    assert 0.01 <= best["best_params"]["gamma"] <= 100 and 0.1 <= best["best_params"]["alpha"] <= 100
    assert best["best_job"] == str(best["best_trial"])
    for png in (HISTORY_FILE, IMPORTANCES_FILE):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (sweep / png).stat().st_size > 5000
    assert len(pd.read_csv(sweep / SWEEP_SUMMARY_FILE)) == 3
    assert not (sweep / HEATMAP_FILE).exists()  # continuous values make no grid


def test_the_objective_chooses_the_value_and_direction(tmp_path: Path, bcd_train):
    sweep = tmp_path / "search"
    code, stderr = bcd_train(
        *SEARCH, GAMMA, "hydra.sweeper.n_trials=2", "hydra.sweeper.objective=final_objective",
        "hydra.sweeper.sampler=random", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    found = study(sweep)
    assert found.direction == optuna.study.StudyDirection.MINIMIZE
    for t in found.trials:
        assert t.value == json.loads((sweep / str(t.number) / SUMMARY_FILE).read_text())["final_objective"]
    best = json.loads((sweep / BEST_FILE).read_text())
    assert best["best_value"] == min(t.value for t in found.trials)
    assert "parameter importances" in " ".join(best["notes"])  # one searched key: no importances drawn
    assert not (sweep / IMPORTANCES_FILE).exists()


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_a_failing_trial_is_failed_in_the_study_and_the_search_goes_on(tmp_path: Path, bcd_train):
    """data.n_train=5000 fails when the data is loaded (digits has fewer): seeded so that trial 0 draws it."""
    space = ["data.n_train=choice(5000, 120)", "hydra.sweeper.sampler=random", "hydra.sweeper.n_trials=2"]
    sweep = tmp_path / "search"
    code, stderr = bcd_train(*SEARCH, *space, "hydra.sweeper.max_failures=10", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, stderr
    trials = study(sweep).trials
    assert sum(t.state.name == "COMPLETE" for t in trials) == 2
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert failed and all(t.params["data.n_train"] == "5000" for t in failed)
    assert all(status(sweep / str(t.number)) == "failed" for t in failed)
    assert all("retry_of" not in t.user_attrs for t in trials)  # a run that failed is not tried again
    # too many failures: the search stops short, says so, and exits 1
    other = tmp_path / "short"
    code, stderr = bcd_train(*SEARCH, *space, "hydra.sweeper.max_failures=1", f"hydra.sweep.dir={other}", cwd=tmp_path)
    assert code == 1
    assert "of 2 trials complete; 1 failed" in stderr.strip().splitlines()[-1]


def test_a_pruned_trial_ends_as_a_finished_run_of_fewer_sweeps(tmp_path: Path, bcd_train):
    sweep = tmp_path / "search"
    code, stderr = bcd_train(
        *SEARCH, GAMMA, "epochs=4", "hydra.sweeper.n_trials=2", "hydra.sweeper.pruner=threshold",
        "+hydra.sweeper.pruner_args.lower=0.99", f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    for t in trials:  # pruned at its first report, after sweep 1, with a checkpoint
        job = sweep / str(t.number)
        assert list(t.intermediate_values) == [1]
        assert status(job) == "pruned" and (job / CHECKPOINT_FILE).exists()
        assert pd.read_csv(job / METRICS_FILE)["sweep"].tolist() == [0, 1]
    assert pd.read_csv(sweep / TRIALS_FILE)["state"].tolist() == ["PRUNED", "PRUNED"]


@pytest.mark.process
def test_no_pruner_outside_a_search_and_optuna_not_imported(tmp_path: Path):
    code = (
        "import sys; from bcd_cli.run import observers; from bcd_cli.search import study; "
        "assert study.pruners() == []; "
        "assert 'optuna' not in sys.modules, 'optuna imported'"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("gamma=interval(5, 1)", "gamma", "low < high"),
        ("gamma=tag(log, interval(0, 1))", "gamma", "both bounds > 0"),
        ("gamma=tag(log, choice(1, 2))", "gamma", "tag(log, ...) around an interval"),
        ("hydra.job.name=choice(a, b)", "hydra.job.name", "cannot be swept"),
        ("gama=interval(1, 2)", "gama", "did you mean gamma"),
        ("dtype=choice(float16, float32)", "dtype", "float32"),
        ("hydra.sweeper.objective=best_train_acc", "hydra.sweeper.objective", "best_test_acc"),
        ("hydra.sweeper.n_trials=0", "hydra.sweeper.n_trials", "at least 1"),
        ("+hydra.sweeper.pruner_args.nonsense=1", "hydra.sweeper.pruner_args", "arguments of the none pruner"),
    ],
)
def test_a_bad_search_is_refused_in_one_line_before_the_study_starts(tmp_path: Path, bcd_train, override, key, allowed):
    code, stderr = bcd_train(*SEARCH, GAMMA, override, "hydra.sweep.dir=search", cwd=tmp_path)
    assert code == 2
    [line] = stderr.strip().splitlines()
    assert key in line and allowed in line, line
    assert not (tmp_path / "search").exists()


def test_the_search_space_syntax():
    space, fixed = parse_space(
        {"alpha": "interval(1, 2)", "seed": "0"},
        ["alpha=int(tag(log, interval(1, 64)))", "act=relu,tanh", "model.widths=[8]", "epochs=range(2, 9, 3)"],
    )
    assert fixed == ["seed=0", "model.widths=[8]"]
    assert space["alpha"].describe() == "log int [1, 64]"  # the command line wins over hydra.sweeper.params
    assert space["act"].choices == ("relu", "tanh") and space["act"].first() == "act=relu"
    assert (space["epochs"].kind, space["epochs"].low, space["epochs"].high, space["epochs"].step) == ("int", 2, 8, 3)


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_a_study_folder_is_continued_only_by_the_same_search_and_one_process(tmp_path: Path, bcd_train):
    sweep = tmp_path / "search"
    args = [*SEARCH, GAMMA, f"hydra.sweep.dir={sweep}"]
    assert bcd_train(*args, "hydra.sweeper.n_trials=1", cwd=tmp_path)[0] == 0
    code, stderr = bcd_train(*SEARCH, "gamma=tag(log, interval(0.01, 10))", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 2 and "the space study search was started with" in stderr, stderr
    with run_lock(sweep):  # another process holds it
        code, stderr = bcd_train(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert code == 2 and "another bcd-train process is running in this folder" in stderr, stderr
    code, stderr = bcd_train("-m", *TINY, "gamma=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)  # a grid
    assert code == 2 and "it holds an Optuna search" in stderr, stderr
    code, stderr = bcd_train(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path)  # the same search: continued
    assert code == 0, stderr
    assert states(sweep) == ["COMPLETE", "COMPLETE"]
    first, second = (t.params["gamma"] for t in study(sweep).trials)
    assert first != second  # the continued, seeded sampler does not draw the first launch's point again
    (tmp_path / "grid").mkdir()
    (tmp_path / "grid" / "notes.txt").write_text("mine")
    code, stderr = bcd_train(*SEARCH, GAMMA, f"hydra.sweep.dir={tmp_path / 'grid'}", cwd=tmp_path)
    assert code == 2 and "a new or empty folder" in stderr, stderr


def kill_when(proc, ready, sig: int, timeout: float = 240) -> str | None:
    """Sends ``sig`` to ``proc`` as soon as ``ready()`` holds and returns its stderr; None if it ended first."""
    import time

    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            proc.send_signal(sig)
            return proc.communicate(timeout=timeout)[1]
        time.sleep(0.0005)
    proc.communicate(timeout=timeout)
    return None


@pytest.mark.slow
@pytest.mark.process
def test_a_search_stopped_by_sigterm_continues_with_the_same_command(tmp_path: Path, bcd_train):
    """SIGTERM while trial 2 trains: exit 143, trial 2 failed in the study with its checkpoint kept; the same
    command then retries trial 2's values as trial 3 and completes the study's 4 trials."""
    from tests.conftest import start_cli

    sweep = tmp_path / "search"
    args = [*SEARCH, GAMMA, "model.widths=[300,300]", "epochs=8", "checkpoint.every=1", "hydra.sweeper.n_trials=4"]
    args.append(f"hydra.sweep.dir={sweep}")
    metrics = sweep / "2" / METRICS_FILE
    proc = start_cli(*args, cwd=tmp_path)
    stderr = kill_when(proc, lambda: metrics.exists() and len(metrics.read_text().splitlines()) >= 3, signal.SIGTERM)
    assert stderr is not None, "the search ended before trial 2 trained"
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert f"continue it with: bcd-train {' '.join(args[:2])}" in stderr and f"hydra.sweep.dir={sweep}" in stderr
    assert states(sweep) == ["COMPLETE", "COMPLETE", "FAIL", "WAITING"]  # trial 2's values queued again
    assert status(sweep / "2") == "interrupted" and (sweep / "2" / CHECKPOINT_FILE).exists()
    assert (sweep / TRIALS_FILE).exists()  # the report of what was done
    code, stderr = bcd_train(*args, cwd=tmp_path)
    assert code == 0, stderr
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[3].user_attrs["retry_of"] == 2 and trials[3].params == trials[2].params
    assert sorted(int(p.name) for p in sweep.iterdir() if p.name.isdigit()) == [0, 1, 2, 3, 4]
    assert status(sweep / "2") == "interrupted" and all(status(sweep / str(n)) == "completed" for n in (0, 1, 3, 4))
    assert not any(math.isnan(t.value) for t in trials if t.value is not None)


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_a_trial_a_killed_process_left_running_is_failed_and_its_values_tried_again(tmp_path: Path, bcd_train):
    """A launch killed outright (SIGKILL, a lost node) leaves its trial running in the study and its job folder
    mid-run: the same command settles that trial as failed and runs its values again as a new trial."""
    sweep = tmp_path / "search"
    args = [*SEARCH, GAMMA, f"hydra.sweep.dir={sweep}"]
    assert bcd_train(*args, "hydra.sweeper.n_trials=1", cwd=tmp_path)[0] == 0
    killed = study(sweep).ask({"gamma": optuna.distributions.FloatDistribution(0.01, 100, log=True)})
    job = sweep / str(killed.number)
    job.mkdir()
    (job / SUMMARY_FILE).write_text(json.dumps({"status": "running", "sweeps": 1, "epochs": 2}))
    code, stderr = bcd_train(*args, "hydra.sweeper.n_trials=2", cwd=tmp_path)
    assert code == 0, stderr
    trials = study(sweep).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert trials[2].params == trials[1].params and trials[2].user_attrs["retry_of"] == 1
    assert status(job) == "running"  # its folder is left as the killed process left it
    assert status(sweep / "2") == "completed"
