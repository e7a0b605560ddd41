"""What produced a run: ``provenance.json``, one record for the run's start and one more for each resume.

A record holds the code (bcd-cli's version; the git commit and whether the checkout had uncommitted changes, where
the package runs from a git checkout), the versions of Python and of the libraries, the device the run used (with
the GPU's name), the CPU model, torch's intra-op thread count, the run's dtype and its BCD solve dtypes, the host,
the platform and the command line. ``bcd-report`` shows it; the sweep reports say when the runs they compare differ
in it. The file is read as untrusted JSON data: a damaged one is refused with one line naming it
(``ProvenanceError``), and a folder of an earlier version, which has none, reads as None.

Nothing here imports torch at module level: ``bcd-report`` reads run folders through this module.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import os
import platform
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bcd_cli.run.records import write_json

if TYPE_CHECKING:
    import torch

    from bcd_cli.run.spec import RunSpec

log = logging.getLogger(__name__)

PROVENANCE_FILE = "provenance.json"
FORMAT = 1  # the layout of provenance.json: {"format": 1, "records": [record, ...]}, the run's start first
GIT_TIMEOUT = 5.0  # seconds a git command may take before its answer counts as unknown
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # bcd_cli/: where the code that runs lives
# the library versions a record holds: its key -> the distribution's name
LIBRARIES = {"hydra_core": "hydra-core", "omegaconf": "omegaconf", "numpy": "numpy"}
# the columns of sweep_summary.csv taken from each job's records: column -> the record's field
TABLE_COLUMNS = {
    "bcd_cli_version": "bcd_cli", "git_commit": "git_commit", "git_dirty": "git_dirty", "torch_device": "device",
    "cpu_model": "cpu", "torch_threads": "threads",
}  # fmt: skip
PROVENANCE_COLUMNS = list(TABLE_COLUMNS)
LONGEST = 300  # characters of one value shown from a record (a record is untrusted input)


class ProvenanceError(ValueError):
    """A provenance.json that cannot be read as the records bcd-train writes; one line naming the file."""


# ------------------------------------------------------------------------------------------- the record of a run


def git_state(folder: Path = PACKAGE_DIR) -> dict[str, Any]:
    """``{"git_commit": ..., "git_dirty": ...}`` of the git checkout whose tracked files hold ``folder``: the commit
    checked out and whether tracked files had uncommitted changes. Both None where that is not known: ``folder``
    in no checkout or not tracked in it (an installed package inside a checkout's ignored virtualenv), no git, a
    git that fails or takes longer than GIT_TIMEOUT."""
    unknown = {"git_commit": None, "git_dirty": None}
    if _git(folder, "ls-files", "--error-unmatch", "--", ".") is None:  # no checkout, or folder not tracked in it
        return unknown
    commit = _git(folder, "rev-parse", "--verify", "HEAD")
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    if commit is None or status is None:
        return unknown
    return {"git_commit": commit.strip(), "git_dirty": bool(status.strip())}


def _git(folder: Path, *args: str) -> str | None:
    """The output of ``git ARGS`` run in ``folder``; None where git is missing, fails or times out."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}  # the checkout of folder, no other
    try:
        done = subprocess.run(
            ["git", "--no-optional-locks", *args], cwd=folder, capture_output=True, text=True, timeout=GIT_TIMEOUT,
            env=env, check=False,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


@functools.cache
def process_git_state() -> dict[str, Any]:
    """``git_state()`` of the package's checkout, found once per process: the code a process runs is the code it
    imported, so a commit made while a multirun goes on does not relabel its later jobs (and the git calls,
    tens of milliseconds, are not repeated for every run of a process)."""
    return git_state()


@functools.cache
def cpu_model() -> str | None:
    """The CPU's model name: /proc/cpuinfo's ``model name`` on Linux, else ``platform.processor()``; None when
    neither says."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, sep, value = line.partition(":")
            if sep and key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


@functools.cache
def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


@functools.cache
def _platform() -> str:
    return platform.platform()


def _dtype_name(dtype: Any) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def collect(spec: RunSpec, device: torch.device, *, resumed_at: int | None = None) -> dict[str, Any]:
    """This process's record of the run ``spec`` on ``device``: a start, or a resume from sweep ``resumed_at``.
    Never raises for what it cannot find out: such a field is None."""
    import torch

    gpu = None
    if device.type == "cuda":
        try:
            gpu = torch.cuda.get_device_name(device)
        except Exception:  # a driver that cannot say: the name is unknown, the run goes on
            gpu = None
    settings = spec.method.settings
    kind = {"kind": "start"} if resumed_at is None else {"kind": "resume", "from_sweep": resumed_at}
    return {
        **kind,
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bcd_cli": _version("bcd-cli"),
        **process_git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        **{key: _version(name) for key, name in LIBRARIES.items()},
        "device": str(device),
        "gpu": gpu,
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "dtype": spec.dtype_name,
        "solve_dtype": _dtype_name(getattr(settings, "solve_dtype", None)),  # BCD only
        "state_solve_dtype": _dtype_name(getattr(settings, "state_solve_dtype", None)),
        "matmul_precision": spec.device.matmul_precision,
        "hostname": socket.gethostname(),
        "platform": _platform(),
        "command": shlex.join(sys.argv),
    }


def record_run(out_dir: Path, spec: RunSpec, device: torch.device, *, resumed_at: int | None = None) -> dict:
    """Writes ``out_dir``'s provenance.json (atomically, as every JSON file of a run) with this process's record:
    a new run's only one, or a resume's after the records already there. A resumed folder of an earlier version
    (no provenance.json) starts its list with the resume; a damaged one is replaced, with a warning. Returns the
    record written."""
    record = collect(spec, device, resumed_at=resumed_at)
    records: list[dict[str, Any]] = []
    if resumed_at is not None:
        try:
            records = read_provenance(out_dir) or []
        except ProvenanceError as err:
            log.warning("%s; it is replaced by one holding this resume's record only", err)
    write_json(out_dir / PROVENANCE_FILE, {"format": FORMAT, "records": [*records, record]})
    return record


# ------------------------------------------------------------------------------------------------- reading one


def read_provenance(folder: Path) -> list[dict[str, Any]] | None:
    """The records of ``folder``'s provenance.json, the run's start first; None when the folder has none (a run of
    an earlier version). ProvenanceError when the file cannot be read or is not such a list of records."""
    path = Path(folder) / PROVENANCE_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as err:
        what = " ".join(str(err).split())[:200]
        raise ProvenanceError(f"cannot read {path}: {what}; expected the JSON bcd-train writes") from None
    records = data.get("records") if isinstance(data, dict) else None
    if not isinstance(records, list) or not records or not all(isinstance(r, dict) for r in records):
        raise ProvenanceError(
            f"{path} is not a provenance record; expected a JSON object whose 'records' is a list of objects"
        )
    return records


def _text(value: Any) -> str:
    """A record's value as text, cut to LONGEST characters."""
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= LONGEST else text[: LONGEST - 3] + "..."


def code_text(record: Mapping[str, Any]) -> str:
    """bcd-cli's version and the commit, ``+ uncommitted changes`` where the checkout had some."""
    version = record.get("bcd_cli")
    text = f"bcd-cli {_text(version) if version is not None else '(version unknown)'}"
    commit = record.get("git_commit")
    if commit is None:
        return f"{text}, not from a git checkout"
    dirty = record.get("git_dirty")
    changes = " + uncommitted changes" if dirty else "" if dirty is False else " (changes unknown)"
    return f"{text}, commit {_text(commit)[:12]}{changes}"


def device_text(record: Mapping[str, Any]) -> str | None:
    """The device, with the GPU's name where the record has one."""
    device, gpu = record.get("device"), record.get("gpu")
    if device is None:
        return None
    return f"{_text(device)} ({_text(gpu)})" if gpu else _text(device)


def _known(record: Mapping[str, Any], key: str) -> str:
    value = record.get(key)
    return "unknown" if value is None else _text(value)


def describe(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """What ``bcd-report`` shows of a run's records: for the start and each resume, the code, torch and CUDA, the
    device and dtypes, the CPU and threads, the host and the command line."""
    lines: list[str] = []
    for record in records:
        if record.get("kind") == "resume":
            lines.append(f"resumed from sweep {_known(record, 'from_sweep')} at {_known(record, 'time')}:")
        else:
            lines.append(f"started at {_known(record, 'time')}:")
        cuda = record.get("cuda")
        available = "available" if record.get("cuda_available") else "not available"
        solves = record.get("solve_dtype")
        dtypes = _known(record, "dtype") + (
            f", solves {_text(solves)}/{_known(record, 'state_solve_dtype')}" if solves is not None else ""
        )
        lines += [
            f"  code:    {code_text(record)}",
            f"  torch:   {_known(record, 'torch')}, CUDA {_text(cuda) if cuda else 'none'} ({available})",
            f"  device:  {device_text(record) or 'unknown'}, dtype {dtypes}",
            f"  CPU:     {_known(record, 'cpu')}, {_known(record, 'threads')} threads",
            f"  host:    {_known(record, 'hostname')}, {_known(record, 'platform')}",
            f"  command: {_known(record, 'command')}",
        ]
    return lines


# ---------------------------------------------------------------------------------------- comparing many runs


def _solves(record: Mapping[str, Any]) -> str | None:
    solve = record.get("solve_dtype")
    return None if solve is None else f"{_text(solve)}/{_known(record, 'state_solve_dtype')}"


def _field(key: str) -> Callable[[Mapping[str, Any]], str | None]:
    return lambda record: None if record.get(key) is None else _text(record[key])


# what runs compared may differ in: (name, its value in a record (None: not known), whether timings then differ)
ASPECTS: list[tuple[str, Callable[[Mapping[str, Any]], str | None], bool]] = [
    ("code", code_text, False),
    ("device", device_text, True),
    ("CPU", _field("cpu"), True),
    ("threads", _field("threads"), True),
    ("dtype", _field("dtype"), True),
    ("solve dtypes", _solves, True),  # BCD's only: SGD and Adam have none to differ in
]


def differences(runs: Mapping[str, Sequence[Mapping[str, Any]]]) -> str | None:
    """One line saying what the runs (label -> its records, a resume's too) differ in, each value with the runs
    that had it, and what follows: timings are not comparable (device, CPU, threads, dtypes), the results came
    from different code. None when they agree in everything their records know."""
    parts, timing, code = [], False, False
    for name, value_of, timed in ASPECTS:
        seen: dict[str, list[str]] = {}
        for label, records in runs.items():
            for record in records:
                value = value_of(record)
                if value is not None and label not in seen.setdefault(value, []):
                    seen[value].append(label)
        if len(seen) > 1:
            found = "; ".join(f"{value} in {', '.join(labels)}" for value, labels in seen.items())
            parts.append(f"{name} ({found})")
            timing, code = timing or timed, code or not timed
    if not parts:
        return None
    follows = ["timings are not comparable"] if timing else []
    follows += ["the results come from different code"] if code else []
    return f"Runs differ in: {'; '.join(parts)} — {' and '.join(follows)}."


class Check(NamedTuple):
    """What the provenance of runs compared says: the line of ``differences`` (None: no difference known), the runs
    without provenance.json (runs of an earlier version) and the messages of damaged ones, both left out of it."""

    differ: str | None
    missing: list[str]
    damaged: list[str]

    def notes(self) -> list[str]:
        """The runs left out of the check, one line each kind."""
        notes = [f"{message}; left out of the provenance check." for message in self.damaged]
        if self.missing:
            notes.insert(0, f"No {PROVENANCE_FILE} in {', '.join(self.missing)} (runs of an earlier version): left "
                         "out of the provenance check.")  # fmt: skip
        return notes


def check_runs(folders: Mapping[str, Path]) -> Check:
    """``differences`` of the run folders (label -> folder); a folder without provenance.json or with a damaged one
    is left out of it."""
    runs: dict[str, list[dict[str, Any]]] = {}
    missing, damaged = [], []
    for label, folder in folders.items():
        try:
            records = read_provenance(folder)
        except ProvenanceError as err:
            damaged.append(f"{label}: {err}")
            continue
        if records is None:
            missing.append(label)
        else:
            runs[label] = records
    return Check(differences(runs), missing, damaged)


def table_cells(folder: Path) -> dict[str, Any]:
    """A job's cells of TABLE_COLUMNS in sweep_summary.csv: each field's values over its records (a resume on
    another device gives two), joined by "; "; empty where the job has no readable provenance.json."""
    try:
        records = read_provenance(folder) or []
    except ProvenanceError:
        records = []
    cells: dict[str, Any] = {}
    for column, key in TABLE_COLUMNS.items():
        value_of = device_text if key == "device" else _field(key)
        values = list(dict.fromkeys(v for r in records if (v := value_of(r)) is not None))
        cells[column] = "; ".join(values) if values else None
    return cells
