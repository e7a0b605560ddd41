"""Validation of a composed run configuration, before anything is built."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from bcd_cli.app import config_dir
from bcd_cli.engine.baselines import OPTIMIZERS, GradientBaseline
from bcd_cli.engine.network import INITS
from bcd_cli.engine.parallel import world_size
from bcd_cli.engine.scheme import BCDScheme
from bcd_cli.engine.trainer import DTYPES, Trainer
from bcd_cli.errors import ConfigError, ParameterError, require_number
from bcd_cli.run.tracking import check as check_logger

__all__ = ["DTYPES", "architecture", "build", "matmul_precision", "resolve_device", "trainer_class", "validate"]
TRAINERS = ("bcd", *OPTIMIZERS)
# keys bcd-train reads that no config file sets: the only ones `+key=value` may add
OPTIONAL_KEYS = ("device.index",)  # the CUDA device of device=auto (device=cuda has it)
# keys holding file-system paths: a relative one given on the command line is recorded absolute in the run folder
PATH_KEYS = ("data.root", "data.path", "data.test_path")
DEVICES = ("auto", "cpu", "cuda")
# torch.set_float32_matmul_precision: exact float32 products, TF32 (NVIDIA, Ampere on), bfloat16 where supported
MATMUL_PRECISIONS = ("highest", "high", "medium")
MODELS = ("mlp", "resnet")
CATALOGUE = ("loss", "act", "reg_w", "reg_v")


def _number(cfg: DictConfig, key: str, ok: Callable[[float], bool], allowed: str, *, integer: bool = False) -> None:
    require_number(key, OmegaConf.select(cfg, key), ok, allowed, integer=integer)


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError naming the first invalid key, its value and what is allowed.

    The trainer's settings (gamma, rho, alpha and the trainer group) are checked by the trainer
    itself (``Trainer.check_config``), without data or a network.
    """
    _number(cfg, "epochs", lambda x: x >= 1, "an integer >= 1 (BCD sweeps)", integer=True)
    _number(cfg, "seed", lambda x: x >= 0, "an integer >= 0", integer=True)
    _number(
        cfg, "checkpoint.every", lambda x: x >= 0,
        "an integer >= 0 (sweeps between checkpoints; 0: only at the end and on Ctrl-C)", integer=True,
    )  # fmt: skip
    if not isinstance(OmegaConf.select(cfg, "grad_norm"), bool):
        raise ConfigError("grad_norm", OmegaConf.select(cfg, "grad_norm"), "true or false")
    resume = OmegaConf.select(cfg, "resume")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError("resume", resume, "the path of a run folder to continue, or null")
    if OmegaConf.select(cfg, "dtype") not in DTYPES:
        raise ConfigError("dtype", OmegaConf.select(cfg, "dtype"), f"one of {', '.join(DTYPES)}")

    _validate_model(cfg)
    init = OmegaConf.select(cfg, "model.init", default="normal")  # a run folder saved without it drew by Remark 1
    if init not in INITS:
        raise ConfigError("model.init", init, f"one of {', '.join(INITS)} (the weights' initialisation)")
    _number(cfg, "model.init_std", lambda x: x >= 0, "a number >= 0")
    _number(cfg, "model.init_bias", lambda x: True, "a finite number")

    trainer_class(cfg).check_config(cfg)
    for group in CATALOGUE:  # small objects: building them checks their parameters before any data is read
        build(cfg, group)

    if world_size() > 1:
        _validate_data_parallel(cfg)
    name = OmegaConf.select(cfg, "device.name")
    if name not in DEVICES:
        raise ConfigError("device.name", name, f"one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", "cuda", "CUDA is not available on this machine; use device=cpu or device=auto")
    precision = OmegaConf.select(cfg, "device.matmul_precision")
    if precision not in MATMUL_PRECISIONS:
        raise ConfigError(
            "device.matmul_precision", precision,
            "highest (exact float32 products), high (TF32 on NVIDIA GPUs) or medium (bfloat16 products)",
        )  # fmt: skip
    check_logger(cfg)


def _validate_data_parallel(cfg: DictConfig) -> None:
    """What a data-parallel run (torchrun, more than one process) supports: BCD with sample-separable blocks."""
    trainer = OmegaConf.select(cfg, "trainer.name")
    if trainer != "bcd":
        raise ConfigError(
            "trainer", trainer, "bcd under torchrun: data-parallel runs train by BCD; run the baselines in one process"
        )
    scheme = bcd_scheme(cfg)
    if scheme.splitting == "two":
        raise ConfigError(
            "splitting", scheme.name, "a three-splitting scheme under torchrun (three, resnet): two-splitting's W "
            "blocks with a nonlinear activation need sums over all samples inside their inner solver",
        )  # fmt: skip
    reduction = OmegaConf.select(cfg, "loss.reduction")
    if reduction != "sum":
        raise ConfigError(
            "loss.reduction", reduction, "sum under torchrun: with mean, each sample's weight 1/n depends on all shards"
        )


def _validate_model(cfg: DictConfig) -> None:
    """The architecture keys of ``model`` and its agreement with the splitting scheme."""
    model = OmegaConf.select(cfg, "model.name")
    if model not in MODELS:
        raise ConfigError("model.name", model, f"one of {', '.join(MODELS)}")
    if model == "mlp":
        widths = OmegaConf.select(cfg, "model.widths")
        if (
            not isinstance(widths, ListConfig)
            or len(widths) == 0
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
        ):
            raise ConfigError(
                "model.widths", _plain(widths), "a non-empty list of positive integers (hidden layer widths)"
            )
    else:
        _number(cfg, "model.width", lambda x: x >= 1, "an integer >= 1 (width of the residual layers)", integer=True)
        _number(cfg, "model.depth", lambda x: x >= 1, "an integer >= 1 (number of residual layers)", integer=True)

    if OmegaConf.select(cfg, "trainer.name") != "bcd":
        return  # the gradient baselines train the network itself, whatever the splitting
    scheme = bcd_scheme(cfg)
    if scheme.residual and model != "resnet":
        allowed = f"model=resnet: splitting={scheme.name} trains residual networks only"
        raise ConfigError("splitting", scheme.name, allowed)
    if not scheme.residual and model == "resnet":
        raise ConfigError(
            "splitting", scheme.name,
            "model=resnet is trained by splitting=resnet (Algorithm 3, three-splitting with residual layers); "
            "the paper gives no two-splitting scheme for residual layers",
        )  # fmt: skip


def trainer_class(cfg: DictConfig) -> type[Trainer]:
    """The class that trains the run ``cfg``: the splitting scheme for ``trainer=bcd``, else the gradient baseline."""
    name = OmegaConf.select(cfg, "trainer.name")
    if name not in TRAINERS:
        raise ConfigError("trainer.name", name, f"one of {', '.join(TRAINERS)}")
    if name != "bcd":
        return GradientBaseline
    target = OmegaConf.select(cfg, "splitting._target_")
    try:
        scheme = get_class(target)
    except Exception:
        raise ConfigError("splitting", target, _splittings()) from None
    if not (isinstance(scheme, type) and issubclass(scheme, Trainer)):
        raise ConfigError("splitting", target, _splittings())
    return scheme


def _splittings() -> str:
    """What ``splitting._target_`` may name: a scheme class, as in the options of conf/splitting."""
    options = ", ".join(sorted(p.stem for p in (config_dir() / "splitting").glob("*.yaml")))
    return f"a BCD scheme class, as chosen by splitting={{{options}}}"


def bcd_scheme(cfg: DictConfig) -> type[BCDScheme]:
    """The splitting scheme of a ``trainer=bcd`` run ``cfg``."""
    scheme = trainer_class(cfg)
    if not issubclass(scheme, BCDScheme):
        raise ConfigError("trainer.name", OmegaConf.select(cfg, "trainer.name"), "bcd (a splitting scheme trains it)")
    return scheme


def architecture(model: DictConfig, n_features: int, n_classes: int) -> tuple[list[int], list[bool]]:
    """Layer sizes (input, hidden..., classes) and residual flags of the network ``model`` describes."""
    if model.name == "resnet":
        sizes = [n_features] + [model.width] * (model.depth + 1) + [n_classes]
        return sizes, [False] + [True] * model.depth + [False]
    sizes = [n_features, *model.widths, n_classes]
    return sizes, [False] * (len(sizes) - 1)


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, ListConfig) else value


@contextlib.contextmanager
def matmul_precision(cfg: DictConfig) -> Iterator[str]:
    """Runs the block with ``cfg.device.matmul_precision`` for float32 matrix products, then restores the
    previous setting. Factorisations and triangular solves keep their dtype (``trainer.solve_dtype``)."""
    before = torch.get_float32_matmul_precision()
    precision = cfg.device.matmul_precision
    torch.set_float32_matmul_precision(precision)
    try:
        yield precision
    finally:
        torch.set_float32_matmul_precision(before)


def resolve_device(cfg: DictConfig) -> torch.device:
    """The torch device of ``cfg.device``: ``auto`` is CUDA when available, else the CPU."""
    name = cfg.device.name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":  # a data-parallel run puts each process on its own GPU: torchrun's LOCAL_RANK
        index = int(os.environ["LOCAL_RANK"]) if world_size() > 1 else int(cfg.device.get("index", 0))
        return torch.device("cuda", index)
    return torch.device("cpu")


def build(cfg: DictConfig, group: str, **kwargs: Any) -> Any:
    """Instantiates the catalogue entry of config group ``group``.

    An entry refuses a bad parameter with ``ParameterError`` (see ``bcd_cli.errors.require``);
    it is raised again naming the full key ``group.field``.
    """
    try:
        return instantiate(cfg[group], **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ParameterError):
            raise cause.within(group) from None
        if isinstance(cause, TypeError):  # a parameter the entry does not take
            params = {k: v for k, v in cfg[group].items() if not str(k).startswith("_")}
            raise ConfigError(group, params, str(cause)) from None
        raise
