"""Shared fixtures: the real config tree composed with overrides, tiny runs, a synthetic idx folder."""

from __future__ import annotations

import contextlib
import gzip
import logging
import os
import shutil
import signal
import struct
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bcd_cli.app import compose, config_dir
from bcd_cli.cli import command as cli
from bcd_cli.reports.command import main as report_main
from bcd_cli.run import signals
from bcd_cli.run.signals import FAULT_VARIABLE

CONF = config_dir()
# a run small enough for a unit test (conf/debug/fast.yaml): 120 training and 60 test samples, one hidden layer
# of 16 (model=resnet: width 16, one residual layer), two sweeps, on the CPU, one checkpoint at the end; tests
# count on these values (3 rows of metrics.csv, 120 samples) and override what they need on top of it
TINY = ["debug=fast"]


def compose_config(*overrides: str):
    """The real ``conf/train.yaml`` composed with ``overrides``; Hydra's global state is cleared after."""
    return compose(*overrides)


def catalogue_entries(group: str) -> dict:
    """Every entry of ``conf/<group>`` (act, loss or reg) built as the CLI builds it, keyed by its YAML file name."""
    return {p.stem: instantiate(OmegaConf.load(p)) for p in sorted((CONF / group).glob("*.yaml"))}


@pytest.fixture(scope="module")
def one_thread():
    """Tiny matrices: a second intra-op thread only adds synchronisation (slow on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def default_stop_signals() -> None:
    """In a child before it starts: SIGINT, SIGTERM and SIGHUP back to their default disposition. A shell's
    background job (``make test &``, nohup, CI) starts with SIGINT ignored, and bcd-train keeps a signal it was
    started ignoring ignored; a test that sends one must start its process as a terminal would."""
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def cli_env(fault: str | None = None) -> dict[str, str]:
    """The environment of a bcd-train child: this one's, with ``BCD_CLI_FAULT=fault`` (POINT:N:SIGNAL, see
    ``bcd_cli.run.signals.fault_point``) when given, and without an inherited one otherwise."""
    env = {k: v for k, v in os.environ.items() if k != FAULT_VARIABLE}
    return env | ({FAULT_VARIABLE: fault} if fault else {})


def run_cli(*args: str, cwd: Path, timeout: float = 300, fault: str | None = None) -> subprocess.CompletedProcess:
    """``bcd-train ARGS`` in a subprocess, from ``cwd``; ``fault``: see :func:`cli_env`."""
    return subprocess.run(
        [sys.executable, "-m", "bcd_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=cli_env(fault), preexec_fn=default_stop_signals,
    )  # fmt: skip


def start_cli(*args: str, cwd: Path, fault: str | None = None, command: tuple[str, ...] = ()) -> subprocess.Popen:
    """``bcd-train ARGS`` started in a subprocess from ``cwd`` (behind ``command``, e.g. ``("nohup",)``)."""
    return subprocess.Popen(
        [*command, sys.executable, "-m", "bcd_cli", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=cli_env(fault), preexec_fn=default_stop_signals,
    )  # fmt: skip


@pytest.fixture
def fault(monkeypatch) -> Callable[[str], None]:
    """``fault("POINT:N:SIGNAL")``: sets BCD_CLI_FAULT for an in-process run, its point counts starting afresh."""

    def arm(spec: str) -> None:
        monkeypatch.setenv(FAULT_VARIABLE, spec)
        monkeypatch.setattr(signals, "_reached", {})

    monkeypatch.delenv(FAULT_VARIABLE, raising=False)
    return arm


@pytest.fixture
def bcd_train_output(monkeypatch, capsys) -> Callable[..., tuple[int, str, str]]:
    """``bcd-train ARGS`` in this process (no interpreter start-up): returns (exit status, stdout, stderr).

    Its output is not a terminal, as in a subprocess with captured output: plain progress lines, no live bar."""

    def call(*args: str, cwd: Path) -> tuple[int, str, str]:
        monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", ["bcd-train", *args])
        with logging_restored():
            try:
                cli.main()
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return call


def cli_in_process(*args: str, cwd: Path) -> int:
    """``bcd-train ARGS`` in this process from ``cwd``, outside any test (a fixture of a wider scope): its exit
    status; the working folder, sys.argv and the logging set-up are put back after."""
    argv, here = sys.argv, Path.cwd()
    os.chdir(cwd)
    sys.argv = ["bcd-train", *args]
    try:
        with logging_restored():
            cli.main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(here)


@pytest.fixture(scope="session")
def tiny_run_once(tmp_path_factory) -> Path:
    """One finished ``bcd-train debug=fast`` run (3 rows of metrics, a checkpoint of sweep 2), trained once per
    worker; tests take a copy of it with ``tiny_run``, never this folder itself."""
    cwd = tmp_path_factory.mktemp("tiny")
    assert cli_in_process(*TINY, "hydra.run.dir=run", cwd=cwd) == 0
    return cwd / "run"


@pytest.fixture
def tiny_run(tiny_run_once, tmp_path) -> Callable[..., Path]:
    """``tiny_run(name="done")``: a copy of the finished ``bcd-train debug=fast`` run at ``tmp_path / name``, as if
    ``bcd-train debug=fast hydra.run.dir=NAME`` had run in ``tmp_path``."""

    def copy(name: str = "done") -> Path:
        return Path(shutil.copytree(tiny_run_once, tmp_path / name))

    return copy


@pytest.fixture
def bcd_train(bcd_train_output) -> Callable[..., tuple[int, str]]:
    """``bcd-train ARGS`` in this process (no interpreter start-up): returns (exit status, stderr)."""

    def call(*args: str, cwd: Path) -> tuple[int, str]:
        code, _, err = bcd_train_output(*args, cwd=cwd)
        return code, err

    return call


@contextlib.contextmanager
def logging_restored() -> Iterator[None]:
    """Undoes the logging set-up of a Hydra run in this process: its handlers write into the run's folder."""
    manager = logging.Logger.manager
    loggers = [logging.getLogger(), *(lg for lg in manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers}
    try:
        yield
    finally:
        for lg in [logging.getLogger(), *manager.loggerDict.values()]:
            if not isinstance(lg, logging.Logger):
                continue
            handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.level, lg.propagate, lg.disabled = level, propagate, disabled


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> None:
    """Writes a uint8 array in the idx format (big-endian dimensions), gzipped when ``gz``."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


@pytest.fixture(scope="session")
def idx_folder(tmp_path_factory) -> Path:
    """A folder with the four MNIST-format idx files (200 train, 100 test), half gzipped.

    Each class has its own bright 7x7 square, so the images are learnable.
    """
    folder = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for split, n, gz in (("train", 200, True), ("t10k", 100, False)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for j, label in enumerate(labels):
            r, c = divmod(int(label), 4)
            images[j, 7 * r : 7 * r + 7, 7 * c : 7 * c + 7] = 255
        write_idx(folder / f"{split}-images-idx3-ubyte", images, gz=gz)
        write_idx(folder / f"{split}-labels-idx1-ubyte", labels, gz=gz)
    return folder


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def report_in_process(capsys, *args: str) -> tuple[int, str, str]:
    """``bcd-report ARGS`` in this process: (exit status, stdout, stderr)."""
    try:
        report_main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
