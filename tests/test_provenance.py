"""provenance.json: what produced a run (code, libraries, device, CPU, threads, dtypes, command line), kept over
resumes, shown by bcd-report and compared by the sweep reports."""

from __future__ import annotations

import importlib.metadata
import json
import logging
import platform
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcd_cli.reports.sweep import write_sweep_report
from bcd_cli.run import provenance
from bcd_cli.run.provenance import (
    PROVENANCE_FILE,
    ProvenanceError,
    code_text,
    collect,
    differences,
    git_state,
    read_provenance,
    record_run,
)
from bcd_cli.run.spec import resolve
from tests.conftest import TINY, compose_config, report_in_process

DATA = Path(__file__).parent / "data"
RECORD_KEYS = {
    "kind", "time", "bcd_cli", "git_commit", "git_dirty", "python", "torch", "cuda", "cuda_available", "hydra_core",
    "omegaconf", "numpy", "device", "gpu", "cpu", "threads", "dtype", "solve_dtype", "state_solve_dtype",
    "matmul_precision", "hostname", "platform", "command",
}  # fmt: skip
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def records_of(folder: Path) -> list[dict]:
    return json.loads((folder / PROVENANCE_FILE).read_text())["records"]


def write_records(folder: Path, records: list[dict]) -> None:
    (folder / PROVENANCE_FILE).write_text(json.dumps({"format": 1, "records": records}))


def a_record(**changes) -> dict:
    """A record as bcd-train writes one, on the CPU, with ``changes``."""
    record = {
        "kind": "start", "time": "2026-01-01T00:00:00+00:00", "bcd_cli": "0.1.0", "git_commit": "a" * 40,
        "git_dirty": False, "python": "3.11.7", "torch": "2.5.1", "cuda": None, "cuda_available": False,
        "hydra_core": "1.3.2", "omegaconf": "2.3.0", "numpy": "2.1.0", "device": "cpu", "gpu": None,
        "cpu": "AMD EPYC 7763", "threads": 4, "dtype": "float32", "solve_dtype": "float64",
        "state_solve_dtype": "float32", "matmul_precision": "highest", "hostname": "node1",
        "platform": "Linux", "command": "bcd-train -m trainer=bcd,sgd",
    }  # fmt: skip
    return record | changes


# --- the record a run writes ------------------------------------------------------------------------------------


def test_a_run_records_what_produced_it(tiny_run):
    folder = tiny_run()
    [record] = records_of(folder)
    assert set(record) == RECORD_KEYS
    assert record["kind"] == "start"
    assert record["bcd_cli"] == importlib.metadata.version("bcd-cli")
    assert record["python"] == platform.python_version() and record["torch"] == torch.__version__
    assert record["cuda"] == torch.version.cuda and record["cuda_available"] == torch.cuda.is_available()
    assert record["numpy"] == importlib.metadata.version("numpy")
    assert record["hydra_core"] == importlib.metadata.version("hydra-core")
    assert record["device"] == "cpu" and record["gpu"] is None  # debug=fast runs on the CPU
    assert record["dtype"] == "float32" and record["solve_dtype"] == "float64"
    assert record["state_solve_dtype"] == "float32"  # null in the config: the run's dtype
    assert isinstance(record["threads"], int) and record["threads"] >= 1
    assert record["hostname"] == socket.gethostname()
    assert shlex.split(record["command"])[:2] == ["bcd-train", *TINY]
    assert record["git_commit"] is None or len(record["git_commit"]) == 40
    # the checkout as this process found it at its first run: the code it imported, whatever is committed later
    assert {key: record[key] for key in ("git_commit", "git_dirty")} == provenance.process_git_state()
    assert record["cpu"] == provenance.cpu_model()


def test_the_command_line_is_shell_quoted_and_a_baseline_has_no_solve_dtypes(monkeypatch):
    spec = resolve(compose_config(*TINY, "trainer=sgd"))
    monkeypatch.setattr(sys, "argv", ["bcd-train", "data.root=/my data", "seed=1"])
    record = collect(spec, torch.device("cpu"))
    assert record["command"] == "bcd-train 'data.root=/my data' seed=1"
    assert shlex.split(record["command"]) == sys.argv
    assert record["solve_dtype"] is None and record["state_solve_dtype"] is None


def test_a_resume_keeps_the_earlier_records_and_adds_its_own(tiny_run, bcd_train, capsys):
    folder = tiny_run("done")
    [first] = records_of(folder)
    first |= {"hostname": "elsewhere", "device": "cuda:0", "gpu": "NVIDIA H100"}  # as if started on another machine
    write_records(folder, [first])
    code, stderr = bcd_train(f"resume={folder}", "epochs=3", cwd=folder.parent)
    assert code == 0, stderr
    records = records_of(folder)
    assert len(records) == 2 and records[0] == first
    assert records[1]["kind"] == "resume" and records[1]["from_sweep"] == 2
    assert records[1]["device"] == "cpu" and records[1]["hostname"] == socket.gethostname()
    assert "resume=" in records[1]["command"] and "epochs=3" in records[1]["command"]
    code, stdout, stderr = report_in_process(capsys, str(folder))
    assert code == 0, stderr
    assert "device:  cuda:0 (NVIDIA H100), dtype float32" in stdout
    assert "resumed from sweep 2 at " in stdout and "device:  cpu, dtype float32" in stdout


def test_a_resume_over_a_damaged_record_replaces_it_with_a_warning(tmp_path: Path, caplog):
    spec = resolve(compose_config(*TINY))
    (tmp_path / PROVENANCE_FILE).write_text("{not json")
    with caplog.at_level(logging.WARNING):
        record_run(tmp_path, spec, torch.device("cpu"), resumed_at=2)
    assert str(tmp_path / PROVENANCE_FILE) in caplog.text
    [record] = records_of(tmp_path)
    assert record["kind"] == "resume" and record["from_sweep"] == 2


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_each_job_of_a_multirun_records_its_own(tmp_path: Path, bcd_train_output):
    sweep = tmp_path / "sweep"
    code, _, stderr = bcd_train_output("-m", "trainer=bcd,sgd", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 0, stderr
    bcd, sgd = records_of(sweep / "0"), records_of(sweep / "1")
    assert len(bcd) == 1 and len(sgd) == 1
    assert bcd[0]["solve_dtype"] == "float64" and sgd[0]["solve_dtype"] is None
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["torch_device"].tolist() == ["cpu", "cpu"]
    assert table["torch_threads"].tolist() == [bcd[0]["threads"], sgd[0]["threads"]]
    text = (sweep / "comparison.md").read_text()
    assert "timings are not comparable" not in text  # one machine; BCD's solve dtypes are not a difference


# --- git ----------------------------------------------------------------------------------------------------------


def git(folder: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, check=True, timeout=30)
    return done.stdout.strip()


@needs_git
def test_git_state_of_a_checkout(tmp_path: Path):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "code.py").write_text("x = 1\n")
    (repo / ".gitignore").write_text("venv/\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert git_state(repo / "pkg") == {"git_commit": head, "git_dirty": False}
    (repo / "pkg" / "new.py").write_text("")  # untracked: not a change of the code that ran
    assert git_state(repo / "pkg") == {"git_commit": head, "git_dirty": False}
    (repo / "pkg" / "code.py").write_text("x = 2\n")
    assert git_state(repo / "pkg") == {"git_commit": head, "git_dirty": True}
    installed = repo / "venv" / "site-packages" / "pkg"  # a copy installed into the checkout's ignored virtualenv
    installed.mkdir(parents=True)
    assert git_state(installed) == {"git_commit": None, "git_dirty": None}


def test_git_state_outside_a_checkout_without_git_or_with_a_hanging_git(tmp_path: Path, monkeypatch):
    plain = tmp_path / "plain"
    plain.mkdir()
    unknown = {"git_commit": None, "git_dirty": None}
    if shutil.which("git") is not None:
        assert git_state(plain) == unknown
    assert git_state(tmp_path / "no such folder") == unknown
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    assert git_state(plain) == unknown  # no git at all
    hanging = bin_dir / "git"
    hanging.write_text(f"#!{sys.executable}\nimport time\ntime.sleep(30)\n")
    hanging.chmod(0o755)
    monkeypatch.setattr(provenance, "GIT_TIMEOUT", 0.5)
    assert git_state(plain) == unknown


# --- bcd-report ---------------------------------------------------------------------------------------------------


def test_bcd_report_shows_the_provenance_of_a_run(tiny_run, capsys):
    folder = tiny_run()
    [record] = records_of(folder)
    code, stdout, stderr = report_in_process(capsys, str(folder))
    assert code == 0, stderr
    assert stderr == ""
    lines = stdout.splitlines()
    start = lines.index("provenance:")
    block = [line.strip() for line in lines[start + 1 : start + 8]]
    assert block[0] == f"started at {record['time']}:"
    assert block[1] == f"code:    {code_text(record)}"
    assert block[2].startswith(f"torch:   {torch.__version__}, CUDA ")
    assert block[3] == "device:  cpu, dtype float32, solves float64/float32"
    assert block[4] == f"CPU:     {record['cpu']}, {record['threads']} threads"
    assert block[6] == f"command: {record['command']}"
    assert str(folder / "curves.png") in stdout


def test_code_text_names_the_commit_and_its_changes():
    assert code_text(a_record()) == f"bcd-cli 0.1.0, commit {'a' * 12}"
    assert code_text(a_record(git_dirty=True)) == f"bcd-cli 0.1.0, commit {'a' * 12} + uncommitted changes"
    assert code_text(a_record(git_commit=None, git_dirty=None)) == "bcd-cli 0.1.0, not from a git checkout"


DAMAGED = [b"{not json", b"\xff\xfe\x00garbage", b"[1, 2]", b'{"records": 3}', b'{"records": []}', b'{"records": [1]}']


@pytest.mark.parametrize("content", DAMAGED)
def test_a_damaged_provenance_file_is_an_error_naming_it(tmp_path: Path, content: bytes):
    (tmp_path / PROVENANCE_FILE).write_bytes(content)
    with pytest.raises(ProvenanceError, match=str(tmp_path / PROVENANCE_FILE)):
        read_provenance(tmp_path)


def test_a_damaged_provenance_file_is_one_note_of_bcd_report(tiny_run, capsys):
    folder = tiny_run()
    (folder / PROVENANCE_FILE).write_bytes(DAMAGED[0])
    code, stdout, stderr = report_in_process(capsys, str(folder))
    assert code == 0, stderr
    [note] = stderr.splitlines()
    assert note.startswith("bcd-report: note: ") and str(folder / PROVENANCE_FILE) in note
    assert "provenance not shown" in note and "Traceback" not in stderr
    assert "provenance:" not in stdout and str(folder / "curves.png") in stdout


def test_a_run_folder_of_an_earlier_version_reports_as_before(tmp_path: Path, capsys):
    folder = Path(shutil.copytree(DATA / "run", tmp_path / "run"))
    assert read_provenance(folder) is None
    code, stdout, stderr = report_in_process(capsys, str(folder))
    assert code == 0 and stderr == ""
    assert f"provenance: none recorded (no {PROVENANCE_FILE}: a run of an earlier version)" in stdout
    assert str(folder / "curves.png") in stdout


# --- comparisons --------------------------------------------------------------------------------------------------


def compare_folder(tmp_path: Path, **per_job: dict) -> Path:
    """tests/data/compare (bcd: jobs 0 and 1, sgd: jobs 2 and 3) with a record in every job, ``per_job["jN"]``'s
    changes in job N's."""
    folder = Path(shutil.copytree(DATA / "compare", tmp_path / "compare"))
    for job in range(4):
        changes = per_job.get(f"j{job}", {})
        solves = {} if job < 2 else {"solve_dtype": None, "state_solve_dtype": None}  # SGD has none
        write_records(folder / str(job), [a_record(**solves, **changes)])
    return folder


def test_a_comparison_of_runs_from_one_machine_and_commit_says_nothing_more(tmp_path: Path):
    folder = compare_folder(tmp_path)
    write_sweep_report(folder)
    text = (folder / "comparison.md").read_text()
    assert text.startswith("| method |") and "Runs differ" not in text and "provenance" not in text
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert table["git_commit"].tolist() == ["a" * 40] * 4 and table["torch_device"].tolist() == ["cpu"] * 4


def test_a_comparison_says_when_devices_and_commits_differ(tmp_path: Path):
    folder = compare_folder(tmp_path, j2={"device": "cuda:0", "gpu": "NVIDIA H100"}, j3={"git_commit": "b" * 40})
    write_sweep_report(folder)
    first = (folder / "comparison.md").read_text().splitlines()[0]
    assert first.startswith("Runs differ in: code (")
    assert f"commit {'b' * 12} in job 3" in first
    assert "device (cpu in job 0, job 1, job 3; cuda:0 (NVIDIA H100) in job 2)" in first
    assert first.endswith("timings are not comparable and the results come from different code.")
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert table["torch_device"].tolist() == ["cpu", "cpu", "cuda:0 (NVIDIA H100)", "cpu"]
    assert table["git_commit"].tolist() == ["a" * 40] * 3 + ["b" * 40]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"git_dirty": True}, "code ("),
        ({"bcd_cli": "0.2.0"}, "code ("),
        ({"cpu": "Intel Xeon"}, "CPU (AMD EPYC 7763 in a, c; Intel Xeon in b)"),
        ({"threads": 16}, "threads (4 in a, c; 16 in b)"),
        ({"dtype": "float64"}, "dtype (float32 in a, c; float64 in b)"),
        ({"solve_dtype": "float32"}, "solve dtypes (float64/float32 in a, c; float32/float32 in b)"),
    ],
)
def test_differences_name_each_kind_of_difference(changes: dict, expected: str):
    runs = {"a": [a_record()], "b": [a_record(**changes)], "c": [a_record()]}
    line = differences(runs)
    assert line is not None and line.startswith("Runs differ in: ") and expected in line
    assert differences({"a": [a_record()], "c": [a_record(hostname="other", time="later")]}) is None
    baseline = a_record(solve_dtype=None, state_solve_dtype=None)  # SGD: no solve dtypes to differ in
    assert differences({"bcd": [a_record()], "sgd": [baseline]}) is None


def test_a_run_resumed_on_another_device_differs_from_itself():
    line = differences({"job 0": [a_record(), a_record(kind="resume", from_sweep=2, device="cuda:0")]})
    assert line is not None and "device (cpu in job 0; cuda:0 in job 0)" in line


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_a_comparison_with_damaged_and_missing_records_notes_them(tmp_path: Path, capsys):
    folder = compare_folder(tmp_path)
    (folder / "1" / PROVENANCE_FILE).write_text("{oops")
    (folder / "3" / PROVENANCE_FILE).unlink()
    write_sweep_report(folder)
    text = (folder / "comparison.md").read_text()
    assert text.startswith("| method |")
    assert f"No {PROVENANCE_FILE} in job 3 (runs of an earlier version)" in text
    assert f"job 1: cannot read {folder / '1' / PROVENANCE_FILE}" in text
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert table["torch_device"].isna().tolist() == [False, True, False, True]
    code, _, stderr = report_in_process(capsys, str(folder))
    assert code == 0 and "Traceback" not in stderr
    [note] = [line for line in stderr.splitlines() if PROVENANCE_FILE in line]
    assert note.startswith("bcd-report: note: job 1: ") and note.endswith("left out of the provenance check")


def test_a_comparison_of_runs_of_an_earlier_version_notes_it(tmp_path: Path):
    folder = Path(shutil.copytree(DATA / "compare", tmp_path / "compare"))
    write_sweep_report(folder)
    text = (folder / "comparison.md").read_text()
    assert text.startswith("| method |")
    assert text.rstrip().endswith(f"No {PROVENANCE_FILE} in job 0, job 1, job 2, job 3 (runs of an earlier "
                                  "version): left out of the provenance check.")  # fmt: skip
    table = pd.read_csv(folder / "sweep_summary.csv")
    assert table[list(provenance.TABLE_COLUMNS)].isna().all().all()


@pytest.mark.slow  # a whole multirun with its reports: run by CI's slow step
def test_bcd_report_of_a_multirun_notes_what_its_jobs_differ_in(tmp_path: Path, capsys):
    folder = compare_folder(tmp_path, j0={"threads": 1})
    code, _, stderr = report_in_process(capsys, str(folder))
    assert code == 0, stderr
    assert "bcd-report: note: Runs differ in: threads (1 in job 0; 4 in job 1, job 2, job 3)" in stderr
