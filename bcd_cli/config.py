"""Validation of a composed run configuration, before anything is built."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from bcd_cli.engine.blocks import ALPHA_CHECKS
from bcd_cli.engine.parallel import world_size
from bcd_cli.errors import ConfigError

DTYPES = {"float32": torch.float32, "float64": torch.float64}
# keys bcd-train reads that no config file sets: the only ones `+key=value` may add
OPTIONAL_KEYS = ("device.index",)  # the CUDA device of device=auto (device=cuda has it)
# keys holding file-system paths: a relative one given on the command line is recorded absolute in the run folder
PATH_KEYS = ("data.root",)
DEVICES = ("auto", "cpu", "cuda")
# torch.set_float32_matmul_precision: exact float32 products, TF32 (NVIDIA, Ampere on), bfloat16 where supported
MATMUL_PRECISIONS = ("highest", "high", "medium")
MODELS = ("mlp", "resnet")
CATALOGUE = ("loss", "act", "reg_w", "reg_v")


def _number(cfg: DictConfig, key: str, ok: Callable[[float], bool], allowed: str, *, integer: bool = False) -> None:
    value = OmegaConf.select(cfg, key)
    kind = int if integer else (int, float)
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(key, value, f"a finite value: {allowed}")
    if integer and isinstance(value, float) and value.is_integer():  # 1e9 is read as a float
        raise ConfigError(key, value, f"{allowed}, written as an integer: {key}={int(value)}")
    if isinstance(value, bool) or not isinstance(value, kind) or not ok(value):
        raise ConfigError(key, value, allowed)


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError naming the first invalid key, its value and what is allowed."""
    _number(cfg, "gamma", lambda x: x > 0, "a number > 0")
    if cfg.get("rho") is not None:
        _number(cfg, "rho", lambda x: x > 0, "a number > 0, or null for rho = gamma")
    _number(cfg, "alpha", lambda x: x > 0, "a number > 0")
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
    bcd = OmegaConf.select(cfg, "trainer.name") == "bcd"
    for key in ("dtype", "trainer.solve_dtype") if bcd else ("dtype",):
        if OmegaConf.select(cfg, key) not in DTYPES:
            raise ConfigError(key, OmegaConf.select(cfg, key), f"one of {', '.join(DTYPES)}")
    if bcd and OmegaConf.select(cfg, "trainer.state_solve_dtype") not in (None, *DTYPES):
        raise ConfigError(
            "trainer.state_solve_dtype", OmegaConf.select(cfg, "trainer.state_solve_dtype"),
            f"one of {', '.join(DTYPES)}, or null for the run's dtype",
        )  # fmt: skip

    _validate_model(cfg)
    _number(cfg, "model.init_std", lambda x: x >= 0, "a number >= 0")
    _number(cfg, "model.init_bias", lambda x: True, "a finite number")

    _validate_trainer(cfg)
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


def _validate_data_parallel(cfg: DictConfig) -> None:
    """What a data-parallel run (torchrun, more than one process) supports: BCD with sample-separable blocks."""
    trainer = OmegaConf.select(cfg, "trainer.name")
    if trainer != "bcd":
        raise ConfigError(
            "trainer", trainer, "bcd under torchrun: data-parallel runs train by BCD; run the baselines in one process"
        )
    scheme = getattr(get_class(OmegaConf.select(cfg, "splitting._target_")), "name", None)
    if scheme == "two":
        raise ConfigError(
            "splitting", scheme, "three or resnet under torchrun: two-splitting's W blocks with a nonlinear "
            "activation need sums over all samples inside their inner solver",
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
    target = OmegaConf.select(cfg, "splitting._target_")
    try:
        scheme = get_class(target)
    except Exception:
        raise ConfigError("splitting", target, "splitting=two, three or resnet") from None
    if getattr(scheme, "residual", False) and model != "resnet":
        raise ConfigError("splitting", "resnet", "splitting=resnet (Algorithm 3) trains model=resnet only")
    if not getattr(scheme, "residual", False) and model == "resnet":
        raise ConfigError(
            "splitting", getattr(scheme, "name", target),
            "model=resnet is trained by splitting=resnet (Algorithm 3, three-splitting with residual layers); "
            "the paper gives no two-splitting scheme for residual layers",
        )  # fmt: skip


def _validate_trainer(cfg: DictConfig) -> None:
    """The inner solver's budget and the Theorem 2 policy of the BCD trainer; the optimizer settings of sgd/adam."""
    trainers = ("bcd", "sgd", "adam")
    name = OmegaConf.select(cfg, "trainer.name")
    if name not in trainers:
        raise ConfigError("trainer.name", name, f"one of {', '.join(trainers)}")
    if name != "bcd":
        _number(cfg, "trainer.lr", lambda x: x > 0, "a number > 0 (step size)")
        _number(cfg, "trainer.batch_size", lambda x: x >= 1, "an integer >= 1 (samples per step)", integer=True)
        _number(cfg, "trainer.weight_decay", lambda x: x >= 0, "a number >= 0")
        if name == "sgd":
            _number(cfg, "trainer.momentum", lambda x: 0 <= x < 1, "a number in [0, 1)")
            nesterov = OmegaConf.select(cfg, "trainer.nesterov")
            if not isinstance(nesterov, bool):
                raise ConfigError("trainer.nesterov", nesterov, "true or false")
            if nesterov and cfg.trainer.momentum == 0:
                raise ConfigError(
                    "trainer.nesterov", nesterov, "false when trainer.momentum=0 (Nesterov needs momentum > 0)"
                )
        else:
            betas = OmegaConf.select(cfg, "trainer.betas")
            if not (
                isinstance(betas, ListConfig)
                and len(betas) == 2
                and all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1
                    for x in betas
                )
            ):
                raise ConfigError("trainer.betas", _plain(betas), "a list of two numbers in [0, 1)")
        return
    _number(cfg, "trainer.inner_iters", lambda x: x >= 1, "an integer >= 1 (inner solver steps)", integer=True)
    _number(cfg, "trainer.inner_tol", lambda x: x >= 0, "a number >= 0 (relative step size)")
    check = OmegaConf.select(cfg, "trainer.alpha_check")
    if check not in ALPHA_CHECKS:
        raise ConfigError("trainer.alpha_check", check, f"one of {', '.join(ALPHA_CHECKS)}")


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
    """Instantiates the catalogue entry or scheme of config group ``group``.

    An entry refuses a bad parameter with ``ValueError(field, value, allowed)``
    (see ``bcd_cli.catalogue.require``); this becomes a ConfigError naming the
    full key ``group.field``.
    """
    try:
        return instantiate(cfg[group], **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ValueError) and len(cause.args) == 3:
            field, value, allowed = cause.args
            raise ConfigError(f"{group}.{field}", value, allowed) from None
        if isinstance(cause, TypeError):  # a parameter the entry does not take
            params = {k: v for k, v in cfg[group].items() if not str(k).startswith("_")}
            raise ConfigError(group, params, str(cause)) from None
        raise
