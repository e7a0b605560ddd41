"""Errors that end a run with one clear line instead of a traceback."""

from __future__ import annotations


class BCDError(Exception):
    """Base class: its message is printed as is and the run exits non-zero."""

    exit_code = 1


class ConfigError(BCDError):
    """An invalid configuration value: names the key, the value and what is allowed."""

    exit_code = 2

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")


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
    """The run was stopped by Ctrl-C (SIGINT); its message says how to resume it."""

    exit_code = 130
