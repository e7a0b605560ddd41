"""Parameter checks shared by catalogue entries: ``require`` raises ``bcd_cli.errors.ParameterError``."""

from __future__ import annotations

from bcd_cli.errors import require

__all__ = ["require"]
