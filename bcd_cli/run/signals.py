"""Stop signals: SIGINT (Ctrl-C), SIGTERM (kill, timeout, docker stop, SLURM) and SIGHUP (a closed terminal).

Outside the sweeps, each of them stops ``bcd-train`` at once by raising :class:`Stopped` (a
KeyboardInterrupt, so that every ``except KeyboardInterrupt`` treats the three alike). During the
sweeps :class:`GracefulStop` replaces that: the first signal asks the run to stop after the current
sweep, with a checkpoint and its reports; a second one stops it at once. The command then exits with
status 128 + the signal's number (130, 143, 129), as a shell reports a process ended by that signal.

:func:`fault_point` marks the places where a run is most delicate to stop; the environment variable
``BCD_CLI_FAULT`` makes the process signal itself at one of them, to reproduce exactly what a run
stopped or killed there leaves behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

from bcd_cli.errors import ConfigError

log = logging.getLogger(__name__)

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


FAULT_VARIABLE = "BCD_CLI_FAULT"
FAULT_POINTS = ("claim", "sweep", "checkpoint")
_reached: dict[str, int] = {}  # how many times this process reached each fault point


def fault_point(name: str) -> None:
    """A place where a run can be stopped on purpose: with ``BCD_CLI_FAULT=NAME:N:SIGNAL`` in the environment
    (e.g. ``checkpoint:2:SIGKILL``) the process sends itself SIGNAL the N-th time it reaches the point NAME,
    counted from 1 over the whole process (every job of a multirun). The points are

    - ``claim``: the run's (or multirun's) folder has just been claimed; nothing is written in it yet;
    - ``sweep``: a sweep is about to update the blocks (the N-th sweep that this process computes);
    - ``checkpoint``: a checkpoint's temporary file is written and flushed, and has not replaced the
      previous checkpoint yet.

    Without the variable, or at another point, nothing happens. A stop signal sent at a point is handled
    as one from outside: the run stops after the current sweep, or at once outside the sweeps."""
    spec = os.environ.get(FAULT_VARIABLE)
    if not spec:
        return
    point, _, rest = spec.partition(":")
    count, _, sig = rest.partition(":")
    sig = sig.upper() if sig.upper().startswith("SIG") else f"SIG{sig.upper()}"
    if point not in FAULT_POINTS or not count.isdigit() or sig not in signal.Signals.__members__:
        allowed = f"POINT:N:SIGNAL, POINT one of {', '.join(FAULT_POINTS)}, N >= 1, e.g. checkpoint:2:SIGKILL"
        raise ConfigError(FAULT_VARIABLE, spec, allowed)
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count):
        os.kill(os.getpid(), signal.Signals[sig])


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The exit status of a command stopped by ``signum``: 128 + its number."""
    return 128 + int(signum)


EXIT_STATUSES = frozenset(exit_status(s) for s in STOP_SIGNALS)


class Stopped(KeyboardInterrupt):
    """Raised where a stop signal interrupts the program; ``signum`` says which."""

    def __init__(self, signum: int = signal.SIGINT) -> None:
        super().__init__(signal_name(signum))
        self.signum = int(signum)

    @property
    def exit_code(self) -> int:
        return exit_status(self.signum)


def stopped_by(err: BaseException) -> int:
    """The signal behind a KeyboardInterrupt (SIGINT for Python's own)."""
    return err.signum if isinstance(err, Stopped) else int(signal.SIGINT)


def _raise(signum: int, frame: Any) -> None:
    raise Stopped(signum)


@contextlib.contextmanager
def _handlers(handler: Any) -> Iterator[None]:
    """Installs ``handler`` for every stop signal (main thread only; elsewhere nothing changes). A signal the
    process was started ignoring stays ignored: ``nohup`` ignores SIGHUP, a shell's background job SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS if signal.getsignal(s) != signal.SIG_IGN}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def stop_signals() -> contextlib.AbstractContextManager[None]:
    """While active, every stop signal raises :class:`Stopped` at once."""
    return _handlers(_raise)


class GracefulStop:
    """While active, the first stop signal sets ``requested`` (and ``signum``); the next raises Stopped."""

    def __init__(self) -> None:
        self.requested = False
        self.signum = int(signal.SIGINT)
        self._handlers: contextlib.AbstractContextManager[None] | None = None

    def __enter__(self) -> GracefulStop:
        self._handlers = _handlers(self._handle)
        self._handlers.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._handlers is not None
        self._handlers.__exit__(None, None, None)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise Stopped(signum)
        self.requested, self.signum = True, int(signum)
        log.warning(
            "%s: stopping after the current sweep with a checkpoint (a second signal stops at once)",
            "Ctrl-C" if signum == signal.SIGINT else signal_name(signum),
        )
