"""Checkpoints of a run: the full training state, written atomically, and the point a resumed run starts from.

A checkpoint (``checkpoint.pt`` in the run folder) holds every block of the state (W, b, V
and U for BCD; W, b, the optimizer state and the shuffling generator for SGD/Adam), the
global RNG states, the sweep counter, the metrics row of that sweep, the length of
metrics.csv when that row was written, and the run's resolved config. It is written to a
temporary file, flushed to disk and renamed over the previous one, so a process killed at
any moment leaves either the previous checkpoint or the new one, never a mixture.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from bcd_cli.engine.parallel import gather_columns, local_columns
from bcd_cli.errors import DataError

CHECKPOINT_FILE = "checkpoint.pt"
FORMAT = 1
# keys a resumed run may change: the number of sweeps, the checkpoint cadence, the folder it resumes
RESUMABLE = ("epochs", "checkpoint", "resume")


@dataclass
class Checkpoint:
    """A run's state at the end of sweep ``sweep`` (see the module docstring)."""

    sweep: int
    config: dict[str, Any]
    state: dict[str, Any]
    rows: list[dict[str, Any]]
    metrics_bytes: int
    elapsed: float
    data_shape: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, **self.__dict__}


def with_keys_added_since(cfg: DictConfig) -> DictConfig:
    """A run's saved config (a run folder's, or a checkpoint's) completed, in place, with the keys added to
    ``conf/`` after it may have been written, set to what reproduces how that run ran: ``grad_norm`` true,
    ``device.matmul_precision`` highest and, for BCD, ``trainer.state_solve_dtype`` = ``trainer.solve_dtype``."""
    with open_dict(cfg):
        if "grad_norm" not in cfg:
            cfg.grad_norm = True
        if "matmul_precision" not in cfg.device:
            cfg.device.matmul_precision = "highest"
        if cfg.trainer.get("name") == "bcd" and "state_solve_dtype" not in cfg.trainer:
            cfg.trainer.state_solve_dtype = cfg.trainer.solve_dtype
    return cfg


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config of a run without the keys a resume may change: what must match to continue it."""
    plain = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items() if k not in RESUMABLE and k != "hydra"}


def capture(algorithm: Any, n_samples: int) -> dict[str, Any]:
    """The algorithm's full state, detached (the baselines' optimizer state and generator included).

    In a data-parallel run the V and U blocks of the ``n_samples`` samples are gathered from
    the ranks' shards (a collective: every rank calls it), so the checkpoint is the same as
    that of one process and can be resumed with any number of processes.
    """
    from bcd_cli.baselines import GradientBaseline

    state: dict[str, Any] = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    if isinstance(algorithm, GradientBaseline):
        state["blocks"] = [_own(p.detach()) for p in (*algorithm.W, *algorithm.b)]
        state["optimizer"] = algorithm.optimizer.state_dict()
        state["generator"] = algorithm.generator.get_state()
    else:
        blocks, n_weights = algorithm.blocks(), 2 * algorithm.net.depth
        states = [gather_columns(t, n_samples) for t in blocks[n_weights:]]
        state["blocks"] = [_own(t) for t in (*blocks[:n_weights], *states)]
    return state


def restore(algorithm: Any, state: dict[str, Any]) -> None:
    """Puts ``capture(algorithm)``'s result back into ``algorithm`` (same shapes; moved to its device and dtype)."""
    from bcd_cli.baselines import GradientBaseline

    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    if isinstance(algorithm, GradientBaseline):
        params = [*algorithm.W, *algorithm.b]
        _check_shapes(params, state["blocks"])
        with torch.no_grad():
            for p, saved in zip(params, state["blocks"], strict=True):
                p.copy_(saved)
        algorithm.optimizer.load_state_dict(state["optimizer"])
        algorithm.generator.set_state(state["generator"])
    else:
        current, n_weights = algorithm.blocks(), 2 * algorithm.net.depth
        saved = [*state["blocks"][:n_weights], *(local_columns(t) for t in state["blocks"][n_weights:])]
        _check_shapes(current, saved)
        algorithm._set_blocks([s.to(device=c.device, dtype=c.dtype) for c, s in zip(current, saved, strict=True)])


def _own(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself when it owns its storage, else a compact copy (torch.save writes a view's whole storage)."""
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()


def _check_shapes(current: list[torch.Tensor], saved: list[torch.Tensor]) -> None:
    if [tuple(t.shape) for t in current] != [tuple(t.shape) for t in saved]:
        raise DataError(
            f"{CHECKPOINT_FILE}: its blocks do not fit the network built from the run's config "
            "(was the data or the model changed?)"
        )


def write_checkpoint(folder: Path, checkpoint: Checkpoint) -> Path:
    """Writes ``folder/checkpoint.pt`` atomically: temporary file, fsync, rename, fsync of the folder."""
    path = folder / CHECKPOINT_FILE
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint.to_dict(), f)
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as err:  # torch's zip writer reports a failed write (a full disk) as a RuntimeError
        tmp.unlink(missing_ok=True)
        reason = (str(err).strip().splitlines() or [""])[0]
        raise OSError(errno.EIO, f"the write failed: a full disk or a file-size limit? ({reason})", str(tmp)) from err
    except BaseException:  # a full disk, a signal: the previous checkpoint stays as it was
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    _fsync_folder(folder)
    return path


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder``, or None when there is none; a partial ``.tmp`` left by a kill is removed."""
    path = folder / CHECKPOINT_FILE
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, expected {FORMAT}")
        raw.pop("format")
        return Checkpoint(**raw)
    except Exception as exc:  # any unpickling failure means the file is not a checkpoint of this version
        reason = (str(exc).strip().splitlines() or [""])[0].split(". ")[0].rstrip(".")  # its first sentence
        raise DataError(
            f"{path}: not a readable bcd-cli checkpoint, truncated or damaged ({reason}); remove it to restart the run "
            "from sweep 0, or restore it from a copy"
        ) from exc


def truncate_metrics(path: Path, size: int) -> None:
    """Cuts metrics.csv back to its first ``size`` bytes: the rows up to the checkpoint's sweep."""
    if not path.exists():
        if size:
            raise DataError(f"{path}: missing, but the checkpoint records {size} bytes of metrics")
        return
    if path.stat().st_size < size:
        raise DataError(f"{path}: shorter ({path.stat().st_size} bytes) than the checkpoint records ({size} bytes)")
    with open(path, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def _fsync_folder(folder: Path) -> None:
    """Makes a rename in ``folder`` durable (where the platform allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
