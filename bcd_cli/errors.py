"""Errors that end a run with one clear line instead of a traceback."""

from __future__ import annotations

import math
from collections.abc import Callable


def first_line(err: BaseException) -> str:
    """The first line of an exception's message that says something (its ``msg`` where it has one, as
    Hydra's and YAML's exceptions do); the exception's type name when the message is empty."""
    text = str(getattr(err, "msg", None) or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class BCDError(Exception):
    """Base class: its message is printed as is and the run exits non-zero."""

    exit_code = 1


class ConfigError(BCDError):
    """An invalid configuration value: names the key, the value and what is allowed."""

    exit_code = 2

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")


class ParameterError(ConfigError, ValueError):
    """A parameter refused by the object it configures (a catalogue entry, a trainer's settings).

    ``key`` names the parameter as that object knows it (``lr``, ``margin``); the code that builds
    the object from the run's config prefixes the config group with ``within`` (``trainer.lr``),
    so the user reads the key to change. It is a ValueError too, so that code building these
    objects directly (not from a config) can catch the usual exception type; ``args`` is
    ``(key, value, allowed)``.
    """

    def __init__(self, key: str, value: object, allowed: str, *, written: object = None) -> None:
        super().__init__(key, value, allowed)
        self.args = (key, value, allowed)
        self.written = written  # how to write the value instead (a whole float given for an integer), if any

    def __str__(self) -> str:
        how = f": {self.key}={self.written}" if self.written is not None else ""
        return f"{self.key}={self.value!r} is invalid: {self.allowed}{how}"

    def within(self, group: str | None, key: str | None = None) -> ParameterError:
        """The same refusal with ``group.`` before the key (the key itself for None: a top-level key); ``key``
        renames the parameter where its config key differs from the object's field."""
        key = key or self.key
        return ParameterError(f"{group}.{key}" if group else key, self.value, self.allowed, written=self.written)


def require(ok: bool, key: str, value: object, allowed: str) -> None:
    """Raises ParameterError(key, value, allowed) unless ``ok``."""
    if not ok:
        raise ParameterError(key, value, allowed)


def require_number(
    key: str, value: object, ok: Callable[[float], bool], allowed: str, *, integer: bool = False
) -> None:
    """Raises ParameterError unless ``value`` is a finite number (an int when ``integer``; never a bool) with ``ok``.

    A whole float given for an integer (``1e9`` is read as a float) is refused with the integer to write.
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ParameterError(key, value, f"a finite value: {allowed}")
    if integer and isinstance(value, float) and value.is_integer():
        raise ParameterError(key, value, f"{allowed}, written as an integer", written=int(value))
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
        raise ParameterError(key, value, allowed)


class DataError(BCDError):
    """Missing, unreadable or inconsistent data: names the file or data set."""

    exit_code = 2


class ResourceError(BCDError):
    """A run the machine cannot hold (memory) or a folder it cannot write: names the estimate or the path."""

    exit_code = 2


class NumericalError(BCDError):
    """A non-finite value or a failed factorisation inside the engine."""

    exit_code = 3


class Interrupted(BCDError):
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); its message says how to resume it.

    The exit status is 128 + the signal's number, as a shell reports a process that signal ended.
    """

    exit_code = 130

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
