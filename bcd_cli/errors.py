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
    """The run was stopped by a signal (SIGINT, SIGTERM, SIGHUP); its message says how to resume it.

    The exit status is 128 + the signal's number, as a shell reports a process that signal ended.
    """

    exit_code = 130

    def __init__(self, message: str, signum: int = 2) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
