"""Parameter checks shared by catalogue entries."""

from __future__ import annotations


def require(ok: bool, field: str, value: object, allowed: str) -> None:
    """Raises ValueError(field, value, allowed) unless ``ok``; the CLI reports it as ``group.field``."""
    if not ok:
        raise ValueError(field, value, allowed)
