"""A run folder belongs to one process from its first byte: concurrent launches, reused and occupied folders,
refused runs and multiruns that leave every byte where it was, folders that cannot be made or written."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bcd_cli.errors import ConfigError
from bcd_cli.run import folders
from bcd_cli.run.folders import LOCK_FILE, claim, run_lock
from bcd_cli.run.records import METRICS_FILE, SUMMARY_FILE
from bcd_cli.run.train import run
from tests.conftest import TINY, compose_config


def checksums(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones included) with the SHA-256 of its bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def start(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bcd_cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def saved_gamma(folder: Path) -> float:
    return float(yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["gamma"])


def final_objective(folder: Path) -> float:
    return float(pd.read_csv(folder / METRICS_FILE)["objective"].iloc[-1])


@pytest.mark.process
def test_runs_launched_together_each_get_their_own_folder_and_all_finish(tmp_path: Path):
    gammas = [0.5, 2.0, 5.0]
    procs = [start(*TINY, f"gamma={g}", cwd=tmp_path) for g in gammas]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    assert all(code == 0 for code, _ in results), results
    runs = sorted(p.parent for p in (tmp_path / "outputs").rglob(METRICS_FILE))
    assert len(runs) == len(gammas)
    assert sorted(saved_gamma(r) for r in runs) == gammas
    # each folder's config is the one that produced its results: the run of that config alone agrees. Two of the
    # three folders are enough: a mix-up permutes the results, and a permutation that moves any moves two
    for folder in runs[:2]:
        alone = run(compose_config(*TINY, f"gamma={saved_gamma(folder)}"), tmp_path / f"alone-{folder.name}")
        assert final_objective(folder) == pytest.approx(float(alone.metrics["objective"].iloc[-1]), rel=1e-5)


def test_a_taken_time_stamped_folder_gives_the_next_free_name(tmp_path: Path):
    first = claim(tmp_path / "12-00-00", mode="fresh", key="hydra.run.dir")
    second = claim(tmp_path / "12-00-00", mode="fresh", key="hydra.run.dir")
    try:
        assert first.folder.name == "12-00-00" and second.folder.name == "12-00-00_1"
        assert (first.folder / LOCK_FILE).exists() and (second.folder / LOCK_FILE).exists()
    finally:
        first.release()
        second.release()


@pytest.mark.process
def test_two_runs_given_one_folder_the_second_is_refused_and_the_first_untouched(tmp_path: Path):
    folder = tmp_path / "shared"
    procs = [start(*TINY, "epochs=6", f"gamma={g}", f"hydra.run.dir={folder}", cwd=tmp_path) for g in (0.5, 5.0)]
    results = [(p.wait(timeout=300), p.communicate()[1]) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert refused.count("\n") == 1 and "hydra.run.dir=" in refused and "Traceback" not in refused
    winner = [0.5, 5.0][[code for code, _ in results].index(0)]
    assert saved_gamma(folder) == winner
    alone = run(compose_config(*TINY, "epochs=6", f"gamma={winner}"), tmp_path / "alone")
    assert final_objective(folder) == pytest.approx(float(alone.metrics["objective"].iloc[-1]), rel=1e-5)


def test_a_refused_run_leaves_a_finished_run_byte_for_byte_and_resumable(tmp_path: Path, bcd_train, tiny_run):
    folder = tiny_run("done")
    before = checksums(folder)
    code, stderr = bcd_train(*TINY, "seed=5", "model.widths=[8]", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert code == 2 and "holds a run" in stderr and f"resume={folder}" in stderr, stderr
    assert checksums(folder) == before
    code, stderr = bcd_train(f"resume={folder}", "epochs=3", cwd=tmp_path)  # still resumable: its config is intact
    assert code == 0, stderr


def test_a_folder_holding_a_users_files_is_refused_untouched(tmp_path: Path, bcd_train):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "summary.json").write_text('{"mine": true}')
    (folder / "checkpoint.pt").write_bytes(b"not a checkpoint")
    before = checksums(folder)
    code, stderr = bcd_train(*TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert code == 2 and "a new or empty folder" in stderr and "checkpoint.pt" in stderr, stderr
    assert checksums(folder) == before and sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "summary.json"]


def test_an_empty_run_dir_value_is_refused_instead_of_writing_into_the_working_folder(tmp_path: Path, bcd_train):
    (tmp_path / "notes.txt").write_text("keep")
    code, stderr = bcd_train(*TINY, "hydra.run.dir=", cwd=tmp_path)
    assert code == 2 and "hydra.run.dir" in stderr, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_a_multirun_into_a_folder_holding_a_sweep_is_refused_before_any_job(tmp_path: Path, bcd_train):
    sweep = tmp_path / "sweep"
    assert bcd_train("-m", "gamma=1", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)[0] == 0  # a sweep of one job
    before = checksums(sweep)
    code, stderr = bcd_train("-m", "gamma=3,4", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 2 and "hydra.sweep.dir" in stderr and "multirun" in stderr, stderr
    assert checksums(sweep) == before


def test_a_multirun_into_a_sweep_folder_another_process_holds_is_refused(tmp_path: Path, bcd_train):
    first = claim(tmp_path / "multirun" / "10-00-00", mode="fresh", key="hydra.sweep.dir")
    try:  # another bcd-train holds the sweep folder (a multirun started a moment before): its flock is on another
        # open file, which excludes this one as another process's would
        code, stderr = bcd_train("-m", "gamma=1,2", *TINY, "hydra.sweep.dir=multirun/10-00-00", cwd=tmp_path)
        assert code == 2 and "another bcd-train process" in stderr, stderr
        assert not any((tmp_path / "multirun").rglob("*.yaml"))  # refused, not shared
    finally:
        first.release()


@pytest.mark.parametrize(
    "where",
    ["/proc/bcd-cli-run", "under-a-file/run", "file-itself"],
)
def test_folders_that_cannot_be_made_are_refused_in_one_line(tmp_path: Path, bcd_train, where: str):
    (tmp_path / "under-a-file").write_text("a file")
    (tmp_path / "file-itself").write_text("a file")
    folder = where if where.startswith("/") else str(tmp_path / where)
    code, stderr = bcd_train(*TINY, f"hydra.run.dir={folder}", cwd=tmp_path)
    assert code == 2, stderr
    assert (
        stderr.count("\n") == 1 and stderr.startswith("bcd-train: error: hydra.run.dir=") and "Traceback" not in stderr
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file-itself", "under-a-file"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folders_are_refused_before_any_sweep(tmp_path: Path, bcd_train, tiny_run):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    done = tiny_run("done")
    try:
        code, stderr = bcd_train(*TINY, f"hydra.run.dir={locked / 'run'}", cwd=tmp_path)
        assert code == 2 and "can create" in stderr, stderr
        done.chmod(0o555)
        code, stderr = bcd_train(f"resume={done}", "epochs=50", cwd=tmp_path)
        assert code == 2 and "resume=" in stderr and "read-only" in stderr, stderr
    finally:
        locked.chmod(0o755)
        done.chmod(0o755)


def test_a_run_that_cannot_start_leaves_no_folder(tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, "data=mnist", f"data.root={tmp_path / 'nowhere'}", cwd=tmp_path)
    assert code == 2, stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.yaml"))


def test_a_relative_data_root_is_recorded_absolute_so_the_run_resumes_from_anywhere(
    tmp_path: Path, idx_folder: Path, bcd_train
):
    work = tmp_path / "work"
    work.mkdir()
    (work / "mnist").symlink_to(idx_folder)
    folder = tmp_path / "run"
    code, stderr = bcd_train(*TINY, "data=mnist", "data.root=mnist", f"hydra.run.dir={folder}", cwd=work)
    assert code == 0, stderr
    assert yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())["data"]["root"] == str(work / "mnist")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code, stderr = bcd_train(f"resume={folder}", "epochs=3", cwd=elsewhere)
    assert code == 0, stderr


def test_a_lock_left_by_a_dead_process_does_not_block_an_empty_folder(tmp_path: Path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text("")  # a run killed between claiming the folder and writing into it
    taken = claim(folder, mode="exclusive", key="hydra.run.dir")
    try:
        assert folders.is_locked(folder)
        with pytest.raises(ConfigError, match="another bcd-train process is running in this folder"):
            claim(folder, mode="resume", key="resume")
    finally:
        taken.release()
    assert not folders.is_locked(folder)
    with run_lock(folder):
        assert folders.is_locked(folder)


def test_a_claim_released_without_results_removes_only_what_it_made(tmp_path: Path):
    made = claim(tmp_path / "outputs" / "day" / "time", mode="fresh", key="hydra.run.dir")
    (made.folder / ".hydra").mkdir()
    made.release(discard=True)
    assert not (tmp_path / "outputs").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    taken = claim(empty, mode="exclusive", key="hydra.run.dir")
    (empty / "train.log").write_text("log")
    taken.release(discard=True)
    assert empty.is_dir() and not any(empty.iterdir())
    kept = claim(tmp_path / "kept", mode="exclusive", key="hydra.run.dir")
    (kept.folder / SUMMARY_FILE).write_text("{}")
    kept.release(discard=True)
    assert (tmp_path / "kept" / SUMMARY_FILE).exists()


def test_a_network_too_big_for_memory_is_refused_before_allocation_and_leaves_no_folder(tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, "model.widths=[10000000]", cwd=tmp_path)
    assert code == 2, stderr
    line = stderr.strip().splitlines()[-1]
    assert line.startswith("bcd-train: error: this run needs about") and "is available" in line, stderr
    assert "Traceback" not in stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("*.yaml"))


def test_the_memory_limit_can_be_set_by_hand(tmp_path: Path, bcd_train, monkeypatch):
    monkeypatch.setenv("BCD_MEMORY_LIMIT", "64K")
    code, stderr = bcd_train(*TINY, cwd=tmp_path)
    assert code == 2 and "BCD_MEMORY_LIMIT=64K" in stderr, stderr
