"""Checkpoints of a run: the full training state, written atomically.

A checkpoint (``checkpoint.pt`` in the run folder, layout number ``FORMAT``) holds the trainer's
``state_dict`` (every block: W, b, V and U for BCD; W, b, the optimizer state and the shuffling
generator for SGD/Adam), the global RNG states, the sweep counter, the metrics rows up to that
sweep, the length of metrics.csv when its row was written, and the run's resolved config. It is
written to a temporary file, flushed to disk and renamed over the previous one, so a process
killed at any moment leaves either the previous checkpoint or the new one, never a mixture.
Reading one back, migrating older formats and checking it against a run are ``bcd_cli.run.resume``'s.

torch is imported where a tensor is saved or an RNG set: ``bcd_cli.run.resume``, which bcd-report uses
to read run folders, imports this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcd_cli.errors import first_line
from bcd_cli.run.signals import fault_point

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 2  # the layout written; bcd_cli.run.resume migrates older ones when it reads them


@dataclass
class Checkpoint:
    """A run's state at the end of sweep ``sweep`` (see the module docstring); ``rng`` holds the CPU generator's
    state under "cpu" and the CUDA devices' under "cuda"."""

    sweep: int
    config: dict[str, Any]
    trainer: dict[str, Any]
    rng: dict[str, Any]
    rows: list[dict[str, Any]]
    metrics_bytes: int
    elapsed: float
    data_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.__dict__}


def rng_state() -> dict[str, Any]:
    """The states of torch's global generators: the CPU's, and every CUDA device's where CUDA is available."""
    import torch

    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts ``rng_state()``'s result back (the CUDA states where CUDA is available)."""
    import torch

    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Writes ``folder/checkpoint.pt`` atomically: temporary file, fsync, rename, fsync of the folder."""
    import torch

    path = folder / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
        fault_point("checkpoint")
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = first_line(err)
        raise OSError(errno.EIO, f"the write failed: a full disk or a file-size limit? ({reason})", str(tmp)) from err
    except BaseException:  # a full disk, a signal: the previous checkpoint stays as it was
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_folder(folder)
    return path


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (where the platform allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
