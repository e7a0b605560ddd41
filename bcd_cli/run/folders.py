"""Run folders owned by one process from the moment they exist.

Before Hydra (or anything else) writes a byte, ``bcd-train`` claims the folder its run or multirun
will write into, and holds the claim until the command ends:

- ``fresh`` (the time-stamped default, ``outputs/DATE/TIME``): the folder is made with one atomic
  ``mkdir``; when another run already made it (two launches in the same second) the next free name
  ``TIME_1``, ``TIME_2``, ... is taken instead. Every launch gets a folder of its own.
- ``exclusive`` (a folder named on the command line with ``hydra.run.dir`` or ``hydra.sweep.dir``):
  the folder must not exist or be empty. An empty folder is taken by creating its lock file with
  ``O_EXCL``, so of two processes given the same folder exactly one gets it; the other is refused
  without writing anything there. A folder with anything in it (a finished run, a sweep, a user's
  files) is refused as it is.
- ``resume`` (``resume=DIR``): the run folder must exist and be writable, and no other process may
  hold it.
- ``search`` (``hydra.sweep.dir`` of an Optuna search, ``hydra/sweeper=optuna``): as ``exclusive``, but a
  folder holding a search's study (``optuna.db``) is taken too, when no other process holds it, so that the
  same command continues the study there; such a claim is recorded as ``continue`` and never discards.

The claim is an exclusive advisory lock (``flock``) on ``.lock`` in the folder: the operating system
releases it when the process ends, even on SIGKILL, so a crashed run never blocks its folder. Within
one process, :func:`run_lock` on a claimed folder does not lock it twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bcd_cli.errors import ConfigError, DataError
from bcd_cli.run.signals import STOP_SIGNALS, fault_point

LOCK_FILE = ".lock"
STUDY_FILE = "optuna.db"  # the SQLite storage of an Optuna search, in its sweep folder
MULTIRUN_FILE = "multirun.yaml"  # Hydra's record of a multirun's config, in its sweep folder
MODES = ("fresh", "exclusive", "resume", "search")
# files whose presence makes a folder a result worth keeping, even when the run failed or was stopped
RESULT_FILES = ("metrics.csv", "summary.json")
_SUFFIXES = 10_000  # fresh names tried after the time-stamped one: TIME_1 ... TIME_9999

_claims: list[Claim] = []  # this process's claims not yet released
_held: dict[Path, int] = {}  # folder (resolved) -> descriptor of its locked .lock, in this process


@dataclass
class Claim:
    """A folder this process owns until :meth:`release`; ``created`` when the claim made it."""

    folder: Path
    mode: str
    created: bool
    fd: int
    made: list[Path] = field(default_factory=list)  # parent folders the claim made (removed with it)

    def release(self, *, discard: bool = False) -> None:
        """Unlocks the folder; with ``discard`` and when the claim found it new or empty and it holds no
        result yet (no metrics.csv or summary.json anywhere in it), removes what was written there."""
        if _held.get(self.folder) == self.fd:
            del _held[self.folder]
        if self in _claims:
            _claims.remove(self)
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if not discard or self.mode in ("resume", "continue") or holds_results(self.folder):
            return
        if self.created:
            shutil.rmtree(self.folder, ignore_errors=True)
            for parent in reversed(self.made):  # outputs/DATE made for this run alone
                with contextlib.suppress(OSError):
                    parent.rmdir()
        else:  # the folder was empty when claimed: everything in it is this run's
            for entry in list(self.folder.iterdir()) if self.folder.is_dir() else []:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)


def holds_results(folder: Path) -> bool:
    """Whether ``folder`` or a folder below it holds a metrics.csv or a summary.json."""
    return any(True for name in RESULT_FILES for _ in folder.rglob(name))


def claim(folder: Path, *, mode: str, key: str) -> Claim:
    """See :func:`_claim`; a stop signal arriving meanwhile waits until the claim is made and recorded, so that
    :func:`open_claims` always knows a folder this process made."""
    blocked = set(STOP_SIGNALS) if hasattr(signal, "pthread_sigmask") else set()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, blocked) if blocked else set()
    try:
        made = _claim(folder, mode=mode, key=key)
        _claims.append(made)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    fault_point("claim")
    return made


def open_claims() -> list[Claim]:
    """The claims of this process not yet released."""
    return list(_claims)


def _claim(folder: Path, *, mode: str, key: str) -> Claim:
    """Claims ``folder`` (absolute) in ``mode`` (see the module docstring); ``key`` names the setting it came
    from in refusals (``hydra.run.dir``, ``hydra.sweep.dir``, ``resume``). Raises ConfigError (exit 2) when the
    folder is taken, holds something, or cannot be made or written; nothing is written into a refused folder."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r}: one of {', '.join(MODES)}")
    folder = Path(os.path.abspath(folder))
    if mode == "resume":
        return _claim_resumed(folder, key)
    made = _make_parents(folder.parent, key, folder)
    if mode == "fresh":
        for n in range(_SUFFIXES):
            candidate = folder if n == 0 else folder.with_name(f"{folder.name}_{n}")
            if _mkdir(candidate, key):
                return _locked(candidate, mode, key, created=True, made=made)
        raise ConfigError(key, str(folder), f"a free folder name: {folder}_1 ... _{_SUFFIXES - 1} are all taken")
    if _mkdir(folder, key):
        return _locked(folder, mode, key, created=True, made=made)
    if not folder.is_dir():
        raise ConfigError(key, str(folder), f"a folder; {folder} exists and is not one")
    if mode == "search" and (folder / STUDY_FILE).is_file():  # a search to continue
        return _locked(folder, "continue", key, created=False, made=made)
    _refuse_if_occupied(folder, key)
    return _locked(folder, mode, key, created=False, made=made)


def _make_parents(parent: Path, key: str, folder: Path) -> list[Path]:
    """Makes the missing parents of a run folder; returns those it made, outermost first."""
    missing = []
    p = parent
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():
        raise ConfigError(key, str(folder), f"a folder bcd-train can create: {p} is a file, not a folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(key, str(folder), f"a folder bcd-train can create ({_reason(err)})") from None
    return list(reversed(missing))


def _mkdir(folder: Path, key: str) -> bool:
    """Makes ``folder`` atomically: True when this call made it, False when it already existed."""
    try:
        folder.mkdir()
    except FileExistsError:
        return False
    except OSError as err:
        raise ConfigError(key, str(folder), f"a folder bcd-train can create ({_reason(err)})") from None
    return True


def _refuse_if_occupied(folder: Path, key: str) -> None:
    try:
        entries = sorted(p.name for p in folder.iterdir())
    except OSError as err:
        raise ConfigError(key, str(folder), f"a folder bcd-train can read and write ({_reason(err)})") from None
    if not entries or entries == [LOCK_FILE]:  # a lock file alone: a run that never started
        return
    if (folder / STUDY_FILE).exists():
        hint = "it holds an Optuna search: continue it with hydra/sweeper=optuna and its search space, or a new folder"
    elif (folder / "metrics.csv").exists():
        hint = f"it holds a run: continue it with resume={folder}, or choose a new folder"
    elif any(p.parent.name == ".hydra" for p in folder.glob("*/.hydra/overrides.yaml")):
        hint = "it holds a multirun; choose a new folder (bcd-report reports on it as it is)"
    else:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        hint = f"it already holds {shown}; choose a new or empty folder"
    raise ConfigError(key, str(folder), f"a new or empty folder: {hint}")


def _locked(folder: Path, mode: str, key: str, *, created: bool, made: list[Path]) -> Claim:
    """Puts a locked ``.lock`` into ``folder``: the file is locked before it appears under that name (a hard
    link, which fails when the name exists), so a process that finds ``.lock`` unlocked knows it is stale."""
    lock = folder / LOCK_FILE
    try:
        fd = os.open(folder / f"{LOCK_FILE}.{os.getpid()}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except OSError as err:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise ConfigError(key, str(folder), f"a folder bcd-train can write ({_reason(err)})") from None
    _flock(fd)
    try:
        os.link(folder / f"{LOCK_FILE}.{os.getpid()}", lock)
        linked = True
    except FileExistsError:
        linked = False
    finally:
        os.unlink(folder / f"{LOCK_FILE}.{os.getpid()}")
    if not linked:  # another process put its lock there: held, or left by a process that died
        os.close(fd)
        fd = os.open(lock, os.O_WRONLY | os.O_APPEND)
        if not _flock(fd):
            os.close(fd)
            raise ConfigError(
                key, str(folder), "a folder no other process uses: another bcd-train process is running in this folder"
            )
        if mode != "continue" and {p.name for p in folder.iterdir()} - {LOCK_FILE}:  # written before it died
            os.close(fd)
            _refuse_if_occupied(folder, key)
    found = Claim(folder, mode, created, fd, made)
    _held[folder] = fd
    return found


def _claim_resumed(folder: Path, key: str) -> Claim:
    if not os.access(folder, os.W_OK):
        raise ConfigError(key, str(folder), "a run folder bcd-train can write (it is read-only)")
    try:
        fd = os.open(folder / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        raise ConfigError(key, str(folder), f"a run folder bcd-train can write ({_reason(err)})") from None
    if not _flock(fd):
        os.close(fd)
        raise ConfigError(
            key, str(folder), "a run folder no other process uses: another bcd-train process is running in this folder"
        )
    found = Claim(folder, "resume", False, fd)
    _held[folder] = fd
    return found


def _flock(fd: int) -> bool:
    """Locks ``fd`` exclusively without waiting; False when another process holds the lock."""
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: the O_EXCL lock file is the claim
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _reason(err: OSError) -> str:
    return f"{err.strerror or type(err).__name__}: {err.filename}" if err.filename else str(err)


@contextlib.contextmanager
def run_lock(folder: Path) -> Iterator[None]:
    """Holds the lock of ``folder`` while a run writes into it; refused (DataError) when another process holds it.

    A folder this process has claimed is already locked, and is left so.
    """
    resolved = Path(os.path.abspath(folder))
    if resolved in _held:
        yield
        return
    try:
        fd = os.open(resolved / LOCK_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    except OSError as err:
        raise DataError(f"{folder}: cannot be written ({_reason(err)})") from None
    try:
        if not _flock(fd):
            raise DataError(f"{folder}: another bcd-train process is running in this folder")
        _held[resolved] = fd
        try:
            yield
        finally:
            del _held[resolved]
    finally:
        os.close(fd)


def is_locked(folder: Path) -> bool:
    """Whether a process (this one included) holds the lock of ``folder``; creates nothing."""
    resolved = Path(os.path.abspath(folder))
    if resolved in _held:
        return True
    try:
        fd = os.open(resolved / LOCK_FILE, os.O_RDONLY)
    except OSError:  # no lock file: no bcd-train process has run there since locks were kept
        return False
    try:
        if not _flock(fd):
            return True
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)
