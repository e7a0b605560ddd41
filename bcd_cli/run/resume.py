"""Continuing a run in its folder: what may change, the command line, the folder's files read and migrated, the checks.

``bcd-train resume=DIR [epochs=N] [checkpoint.every=N]`` continues the run in DIR with the config
it was started with (DIR/.hydra/config.yaml); only the keys of ``MAY_CHANGE`` may differ. The run
starts again from DIR's checkpoint.pt, whose config and data shape must be the run's, with
metrics.csv cut back to the checkpoint's sweep; without a checkpoint it starts from sweep 0.

Formats. checkpoint.pt records the number of its layout (``bcd_cli.run.checkpoint.FORMAT``). An older
file is migrated when read, one version step at a time, by one function per step (``_MIGRATIONS``):

- format 1 -> 2: the training state became the trainer's ``state_dict`` (named blocks W, b, V and,
  in three-splitting, U; the optimizer and the shuffling generator of SGD/Adam), with the RNG
  states beside it; and the run config gained three keys, set to what reproduces how a format-1
  run ran: ``grad_norm`` true, ``device.matmul_precision`` highest and, for BCD,
  ``trainer.state_solve_dtype`` = ``trainer.solve_dtype`` (``_config_1_to_2``).

A run folder's .hydra/config.yaml has no format number of its own, and a run killed before its
first checkpoint leaves nothing else. Its version is read from its keys: a config lacking a key
that format 2 added is a format-1 config, and goes through the same config step as a format-1
checkpoint's config. That step only adds missing keys, so it leaves a format-2 config as it is.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

from bcd_cli.app import quoted
from bcd_cli.errors import ConfigError, DataError, first_line
from bcd_cli.run.checkpoint import CHECKPOINT_FILE, FORMAT, Checkpoint, set_rng_state
from bcd_cli.run.records import METRICS_FILE

if TYPE_CHECKING:
    from bcd_cli.engine.trainer import Trainer

log = logging.getLogger(__name__)

# the keys a resumed run may change: the number of sweeps, the checkpoint cadence (the checkpoint node), the folder
MAY_CHANGE = ("epochs", "checkpoint.every", "resume")
SAVED_CONFIG = Path(".hydra") / "config.yaml"


def override_key(arg: str) -> str:
    """The key of a command-line override (``+key=value``, ``~key``, ``key=value``)."""
    return arg.partition("=")[0].lstrip("+~")


def resume_arguments(argv: list[str]) -> list[str]:
    """The command line of ``bcd-train resume=DIR [epochs=N] [checkpoint.every=N]``, made to continue in DIR.

    Hydra then writes into DIR itself (no new run folder, no new .hydra/), and the run keeps
    DIR's sweeps and checkpoint cadence unless given anew; any other override is refused,
    since a resumed run continues with the config it was started with.
    """
    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    given = [a for a in overrides if override_key(a) == "resume"]
    value = given[-1].partition("=")[2].strip().strip("'\"") if given else ""
    if value in ("", "null"):
        return argv
    if any(a in ("-m", "--multirun") for a in argv):
        raise ConfigError(
            "resume", value, "a single run folder, without --multirun; resume a multirun's jobs one by one "
            "(resume=SWEEP_DIR/N), then regenerate its report with bcd-report SWEEP_DIR",
        )  # fmt: skip
    folder = Path(value).expanduser()
    config = saved_config(folder, value)
    changeable = [key for key in MAY_CHANGE if key != "resume"]
    others = [a for a in overrides if override_key(a) not in MAY_CHANGE and not override_key(a).startswith("hydra.")]
    if others:
        raise ConfigError(
            "resume", value, f"alone or with {', '.join(k + '=N' for k in changeable)}: the run continues "
            f"with the config it was started with ({folder / SAVED_CONFIG}); got {' '.join(others)}",
        )  # fmt: skip
    extra = [f"hydra.run.dir={quoted(str(folder))}", "hydra.output_subdir=null"]
    for key in changeable:
        if not any(override_key(a) == key for a in overrides) and OmegaConf.select(config, key) is not None:
            extra.append(f"{key}={OmegaConf.select(config, key)}")
    return [*argv, *extra]


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line: what is wrong and where (line, column), without the file's name twice."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    if problem and mark is not None:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return first_line(exc)


def saved_config(folder: Path, value: str | None = None) -> DictConfig:
    """The config a run folder was started with (.hydra/config.yaml), migrated to the current keys (see the module
    docstring). Raises ConfigError on ``resume`` (given as ``value``, default the folder) when it is missing or
    unreadable."""
    value = str(folder) if value is None else value
    path = folder / SAVED_CONFIG
    if not path.is_file():
        state = "has no .hydra/config.yaml" if folder.is_dir() else "is a file" if folder.exists() else "does not exist"
        raise ConfigError("resume", value, f"a bcd-train run folder; {folder} {state}")
    try:
        config = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError("resume", value, f"a run folder with a readable {path} ({yaml_problem(exc)})") from None
    if not isinstance(config, DictConfig) or not isinstance(config.get("trainer"), DictConfig):
        raise ConfigError("resume", value, f"a run folder with a bcd-train config in {path}")
    return _config_1_to_2(config)


def resumed_config(cfg: DictConfig) -> DictConfig:
    """The config of the run ``cfg`` resumes (``cfg.resume``): its folder's, with ``cfg``'s values of the keys that
    may change."""
    config = saved_config(Path(str(cfg.resume)))
    with open_dict(config):
        for key in MAY_CHANGE:
            OmegaConf.update(config, key, OmegaConf.select(cfg, key), force_add=True)
    return config


def run_config(plain: Mapping[str, Any]) -> dict[str, Any]:
    """A run's resolved config (plain values) without the keys a resume may change: what must match to continue
    it."""
    dropped = {key.split(".")[0] for key in MAY_CHANGE} | {"hydra"}  # the checkpoint node holds only its cadence
    return {str(k): v for k, v in plain.items() if k not in dropped}


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder`` migrated to the current format, or None when there is none; a partial ``.tmp``
    left by a kill is removed (call it only while holding the folder's run lock)."""
    import torch  # here: bcd-report reads run folders through this module without loading torch

    path = folder / CHECKPOINT_FILE
    path.with_name(path.name + ".tmp").unlink(missing_ok=True)
    if not path.exists():
        return None
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        version = raw.get("format")
        if not isinstance(version, int) or not 1 <= version <= FORMAT:
            raise ValueError(f"format {version!r}, expected 1 to {FORMAT}")
        for step in range(version, FORMAT):
            raw = _MIGRATIONS[step](raw)
        raw.pop("format")
        return Checkpoint(**raw)
    except Exception as exc:  # any unpickling failure means the file is not a checkpoint of this program
        reason = first_line(exc).split(". ")[0].rstrip(".")  # its first sentence
        raise DataError(
            f"{path}: not a readable bcd-cli checkpoint, truncated or damaged ({reason}); remove it to restart the run "
            "from sweep 0, or restore it from a copy"
        ) from exc


def _config_1_to_2(cfg: DictConfig) -> DictConfig:
    """The run config of format 1 completed, in place, with the keys format 2 added (see the module docstring)."""
    with open_dict(cfg):
        if "grad_norm" not in cfg:
            cfg.grad_norm = True
        if "matmul_precision" not in cfg.device:
            cfg.device.matmul_precision = "highest"
        if cfg.trainer.get("name") == "bcd" and "state_solve_dtype" not in cfg.trainer:
            cfg.trainer.state_solve_dtype = cfg.trainer.solve_dtype
    return cfg


def _migrate_1_to_2(raw: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint as format 2: its flat list of blocks (W, b, then V and U of BCD) split by kind into
    the trainer's state_dict, the RNG states moved beside it, its config completed."""
    config = OmegaConf.create(raw["config"])
    _config_1_to_2(config)
    state = raw["state"]
    blocks = state["blocks"]
    if "optimizer" in state:  # SGD/Adam: W_1..W_N, b_1..b_N
        kinds = ["W", "b"]
    else:  # BCD: W, b, V_1..V_N, and U_1..U_N when the scheme has U blocks (its layer_blocks)
        scheme: Any = get_class(config.splitting._target_)
        kinds = ["W", "b", "V", *(["U"] if "U" in scheme.layer_blocks else [])]
    depth = len(blocks) // len(kinds)
    trainer: dict[str, Any] = {kind: list(blocks[i * depth : (i + 1) * depth]) for i, kind in enumerate(kinds)}
    if "optimizer" in state:
        trainer |= {"optimizer": state["optimizer"], "generator": state["generator"]}
    rng = {"cpu": state["rng"], **({"cuda": state["cuda_rng"]} if "cuda_rng" in state else {})}
    migrated = {key: value for key, value in raw.items() if key != "state"}
    return migrated | {"format": 2, "config": OmegaConf.to_container(config), "trainer": trainer, "rng": rng}


# format v -> v + 1, applied in order from a file's format up to FORMAT
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: _migrate_1_to_2}
assert sorted(_MIGRATIONS) == list(range(1, FORMAT)), "one migration step per format before the current one"


def resume_checkpoint(
    record: Mapping[str, Any],
    epochs: int,
    out_dir: Path,
    trainer: Trainer,
    data_shape: list[int],
    *,
    writer: bool = True,
) -> Checkpoint | None:
    """Loads out_dir's checkpoint into ``trainer`` (and the RNG states) and cuts metrics.csv back to its sweep;
    None: there is no checkpoint yet, and the run starts again from sweep 0 (metrics.csv removed).
    ``record`` is the run's resolved config (``RunSpec.record``), ``epochs`` the sweeps it runs to.
    ``writer``: whether this process writes the run's files (rank 0 of a data-parallel run).

    Refuses (DataError, ConfigError) a checkpoint written by another config or for other data, or
    holding more sweeps than ``epochs``, before anything in the folder is changed.
    """
    checkpoint = read_checkpoint(out_dir)
    metrics = out_dir / METRICS_FILE
    if checkpoint is None:
        log.warning("resuming %s: no checkpoint yet, so the run starts again from sweep 0", out_dir)
        if writer:
            metrics.unlink(missing_ok=True)
        return None
    _check_compatible(record, epochs, out_dir, checkpoint, data_shape)
    try:
        trainer.load_state_dict(checkpoint.trainer)
    except ValueError as err:
        raise DataError(f"{out_dir / CHECKPOINT_FILE}: {err} (was the data or the model changed?)") from None
    set_rng_state(checkpoint.rng)
    if writer:
        truncate_metrics(metrics, checkpoint.metrics_bytes)
    log.info("resuming %s at sweep %d of %d", out_dir, checkpoint.sweep, epochs)
    return checkpoint


def _check_compatible(
    record: Mapping[str, Any], epochs: int, out_dir: Path, checkpoint: Checkpoint, data_shape: list[int]
) -> None:
    """The checkpoint was written by the run whose config is ``record`` (all but the keys that may change), for
    data of this shape, and holds no more sweeps than ``epochs``."""
    config, saved = run_config(record), run_config(checkpoint.config)
    if saved != config:
        changed = sorted(k for k in {*saved, *config} if saved.get(k) != config.get(k))
        raise DataError(
            f"{out_dir / CHECKPOINT_FILE}: written by a different config than {out_dir / SAVED_CONFIG} "
            f"(keys {', '.join(changed)} differ)"
        )
    if checkpoint.data_shape != data_shape:
        raise DataError(
            f"{out_dir / CHECKPOINT_FILE}: written for data of {_shape_text(checkpoint.data_shape)}, "
            f"but {config.get('data', {}).get('name')} now loads as {_shape_text(data_shape)}; was its file changed?"
        )
    if checkpoint.sweep > epochs:
        raise ConfigError("epochs", epochs, f"at least {checkpoint.sweep}, the sweeps {out_dir} already holds")


def _shape_text(shape: list[int]) -> str:
    """A checkpoint's data shape [features, train samples, test samples, classes] in words."""
    if len(shape) != 4:
        return str(shape)
    return f"{shape[0]} features, {shape[1]} train and {shape[2]} test samples, {shape[3]} classes"


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


def resume_command(out_dir: Path, epochs: int) -> str:
    """The shell command that continues the run in ``out_dir`` to ``epochs`` sweeps, quoted as printed.

    ``epochs=N`` is added where it differs from the run folder's config (an extended run), without
    which the command would stop at the folder's own number of sweeps.
    """
    words = ["bcd-train", f"resume={quoted(str(out_dir))}"]
    try:
        saved = OmegaConf.select(saved_config(out_dir), "epochs")
    except ConfigError:
        saved = None
    if saved != epochs:
        words.append(f"epochs={epochs}")
    return shlex.join(words)
