"""The run spec: a composed (or resumed) config turned once, at the door, into frozen typed settings.

``resolve`` is the only place below the command that reads a ``DictConfig``: it checks every key, builds
the catalogue entries (loss, activation, regularizers) and the trainer's settings once, and hands the run
a ``RunSpec`` of plain values and objects. Everything after it (the data loaders, the memory estimate,
the trainer, the observers, the checkpoints and the figures' titles) reads the spec. A refused value is
one ``ConfigError`` naming its key, its value and what is allowed.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from bcd_cli.app import config_dir
from bcd_cli.engine.baselines import OPTIMIZERS, BaselineSettings, GradientBaseline
from bcd_cli.engine.network import INITS, MLP
from bcd_cli.engine.parallel import world_size
from bcd_cli.engine.scheme import BCDScheme, BCDSettings
from bcd_cli.engine.trainer import DTYPES, Trainer
from bcd_cli.errors import ConfigError, ParameterError, require, require_number
from bcd_cli.run.resume import resumed_config, run_config

__all__ = ["DTYPES", "RunSpec", "resolve", "validate"]
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
# tracker -> the package it needs, from the optional extra ``tracking``
PACKAGES = {"tensorboard": "tensorboard", "mlflow": "mlflow"}
EXTRA = "pip install 'bcd-cli[tracking]'"


# ------------------------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class ModelSpec:
    """The network: ``mlp`` with hidden ``widths``, or ``resnet`` with ``depth`` residual layers of ``width``;
    its initialisation (``model.init``, ``init_std``, ``init_scale``, ``init_bias``)."""

    name: str
    widths: tuple[int, ...]
    init: str
    init_std: float
    init_bias: float
    residual: tuple[bool, ...]  # of the hidden layers' successors: ``architecture`` adds the input and output layers
    init_scale: float = 1.0

    def architecture(self, n_features: int, n_classes: int) -> tuple[list[int], list[bool]]:
        """Layer sizes (input, hidden..., classes) and residual flags of each layer."""
        return [n_features, *self.widths, n_classes], [False, *self.residual, False]

    def build(self, n_features: int, n_classes: int, act: Any, *, seed: int, dtype: torch.dtype,
              device: torch.device) -> MLP:  # fmt: skip
        """The network drawn as ``init`` says, with ``seed``."""
        sizes, residual = self.architecture(n_features, n_classes)
        return MLP.init(
            sizes, act, init=self.init, init_std=self.init_std, init_bias=self.init_bias, seed=seed, dtype=dtype,
            device=device, residual=residual, init_scale=self.init_scale,
        )  # fmt: skip


@dataclass(frozen=True)
class Catalogue:
    """The catalogue entries of the objective, each built once: the loss R, the activation sigma, the
    regularizers r of the weights and s of the states."""

    loss: Any
    act: Any
    reg_w: Any
    reg_v: Any


@dataclass(frozen=True)
class MethodSpec:
    """What trains the network: ``name`` (bcd, sgd, adam), the trainer class (a BCD splitting scheme or the
    gradient baseline) and its checked settings."""

    name: str
    trainer: type[Trainer]
    settings: BCDSettings | BaselineSettings

    @property
    def splitting(self) -> str | None:
        """The BCD objective's splitting (two, three), None for SGD/Adam."""
        return self.trainer.splitting

    def build(self, net: MLP, X: torch.Tensor, Y: torch.Tensor, catalogue: Catalogue, *, seed: int) -> Trainer:
        """The trainer of ``net`` on samples X (features x samples) with one-hot targets Y."""
        return self.trainer.build(
            self.settings, net, X, Y, loss=catalogue.loss, reg_w=catalogue.reg_w, reg_v=catalogue.reg_v, seed=seed
        )


@dataclass(frozen=True)
class DeviceSpec:
    """``device.name`` (auto, cpu, cuda), the CUDA ``index`` and the float32 ``matmul_precision``."""

    name: str
    index: int
    matmul_precision: str

    def torch_device(self) -> torch.device:
        """``auto`` is CUDA when available, else the CPU; a data-parallel run puts each process on its own GPU
        (torchrun's LOCAL_RANK)."""
        name = self.name
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        if name == "cuda":
            return torch.device("cuda", int(os.environ["LOCAL_RANK"]) if world_size() > 1 else self.index)
        return torch.device("cpu")

    @contextlib.contextmanager
    def precision(self) -> Iterator[str]:
        """Runs the block with ``matmul_precision`` for float32 matrix products, then restores the previous
        setting. Factorisations and triangular solves keep their dtype (``trainer.solve_dtype``)."""
        before = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision(self.matmul_precision)
        try:
            yield self.matmul_precision
        finally:
            torch.set_float32_matmul_precision(before)


@dataclass(frozen=True)
class LoggerSettings:
    """The ``logger`` group: the ``trackers`` besides the run folder's own files (none for a run folder older than
    the key: it resumes as ``logger=csv`` ran), and the MLflow settings, None for their defaults."""

    trackers: tuple[str, ...] = ()
    tracking_uri: str | None = None
    artifact_location: str | None = None
    experiment: str | None = None


def logger_settings(logger: Mapping[str, Any]) -> LoggerSettings:
    """The checked settings of the ``logger`` node (plain values). Raises ConfigError for an unknown tracker,
    settings of the wrong type, or a tracker whose package is not installed: before any run starts, rather than
    as a warning once it has."""
    given = logger.get("trackers", [])
    if not isinstance(given, list) or any(n not in PACKAGES for n in given):
        allowed = f"a list of {', '.join(PACKAGES)} ([] for the run folder's files only)"
        raise ConfigError("logger.trackers", given, allowed)
    names = tuple(str(n) for n in given)
    for key in ("tracking_uri", "artifact_location", "experiment"):
        value = logger.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise ConfigError(f"logger.{key}", value, "a non-empty string, or null for the default")
    for name in names:
        if not _installed(PACKAGES[name]):
            shown = logger.get("name", name)
            raise ConfigError("logger", shown, f"logger={shown} needs the {PACKAGES[name]} package: {EXTRA}")
    return LoggerSettings(names, logger.get("tracking_uri"), logger.get("artifact_location"), logger.get("experiment"))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it (MLflow takes seconds to import)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class RunSpec:
    """One run, every key checked: what ``bcd_cli.run.train.run`` builds and records.

    ``config`` is the resolved config as plain values (what trackers record and figures' titles name);
    ``record`` that config without the keys a resume may change: what a checkpoint must match to be continued.
    ``resume`` is the folder a resumed run continues, None for a new run.
    """

    data: Mapping[str, Any]
    model: ModelSpec
    method: MethodSpec
    catalogue: Catalogue
    device: DeviceSpec
    dtype_name: str
    epochs: int
    seed: int
    grad_norm: bool
    checkpoint_every: int
    logger: LoggerSettings
    config: Mapping[str, Any]
    resume: Path | None = None

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def record(self) -> dict[str, Any]:
        return run_config(self.config)


def resolve(cfg: DictConfig) -> RunSpec:
    """The spec of the run ``cfg``: a new run's composed config, or with ``resume=DIR`` the config DIR was started
    with (its keys migrated), with ``cfg``'s values of the keys a resume may change. Raises ConfigError naming
    the first invalid key."""
    return _spec_of(resumed_config(cfg) if _resume_folder(cfg) is not None else cfg)


def validate(cfg: DictConfig) -> None:
    """Raises ConfigError naming the first invalid key of the composed config ``cfg`` (a job of a command line,
    before it runs), its value and what is allowed."""
    _spec_of(cfg)


def _spec_of(cfg: DictConfig) -> RunSpec:
    """Every key of ``cfg`` checked, in the order the messages have always named them, then built."""
    _number(cfg, "epochs", lambda x: x >= 1, "an integer >= 1 (BCD sweeps)", integer=True)
    _number(cfg, "seed", lambda x: x >= 0, "an integer >= 0", integer=True)
    _number(
        cfg, "checkpoint.every", lambda x: x >= 0,
        "an integer >= 0 (sweeps between checkpoints; 0: only at the end and on Ctrl-C)", integer=True,
    )  # fmt: skip
    if not isinstance(OmegaConf.select(cfg, "grad_norm"), bool):
        raise ConfigError("grad_norm", OmegaConf.select(cfg, "grad_norm"), "true or false")
    resume = _resume_folder(cfg)
    if OmegaConf.select(cfg, "dtype") not in DTYPES:
        raise ConfigError("dtype", OmegaConf.select(cfg, "dtype"), f"one of {', '.join(DTYPES)}")
    model = _model(cfg)
    method = _method(cfg)
    catalogue = Catalogue(*(_build(cfg, group) for group in CATALOGUE))
    if world_size() > 1:
        _check_data_parallel(cfg, method)
    device = _device(cfg)
    logger = logger_settings(_plain(OmegaConf.select(cfg, "logger", default=None)) or {})
    data = _plain(cfg.get("data"))
    return RunSpec(
        data=MappingProxyType(data if isinstance(data, dict) else {"name": data}), model=model, method=method,
        catalogue=catalogue, device=device, dtype_name=str(cfg.dtype), epochs=int(cfg.epochs), seed=int(cfg.seed),
        grad_norm=bool(cfg.grad_norm), checkpoint_every=int(cfg.checkpoint.every), logger=logger,
        config=MappingProxyType(_resolved(cfg)), resume=resume,
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ the parts


def _resume_folder(cfg: DictConfig) -> Path | None:
    """The run folder ``resume`` names, None for a new run."""
    resume = OmegaConf.select(cfg, "resume")
    if resume is not None and (not isinstance(resume, str) or not resume.strip()):
        raise ConfigError("resume", resume, "the path of a run folder to continue, or null")
    return Path(resume) if resume is not None else None


def _number(cfg: DictConfig, key: str, ok: Callable[[float], bool], allowed: str, *, integer: bool = False) -> None:
    require_number(key, OmegaConf.select(cfg, key), ok, allowed, integer=integer)


def _model(cfg: DictConfig) -> ModelSpec:
    """The architecture keys of ``model``, their agreement with the splitting scheme, and the initialisation."""
    name = OmegaConf.select(cfg, "model.name")
    if name not in MODELS:
        raise ConfigError("model.name", name, f"one of {', '.join(MODELS)}")
    if name == "mlp":
        widths = OmegaConf.select(cfg, "model.widths")
        if (
            not isinstance(widths, ListConfig)
            or len(widths) == 0
            or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
        ):
            raise ConfigError(
                "model.widths", _plain(widths), "a non-empty list of positive integers (hidden layer widths)"
            )
        hidden, residual = tuple(int(w) for w in widths), (False,) * (len(widths) - 1)
    else:
        _number(cfg, "model.width", lambda x: x >= 1, "an integer >= 1 (width of the residual layers)", integer=True)
        _number(cfg, "model.depth", lambda x: x >= 1, "an integer >= 1 (number of residual layers)", integer=True)
        depth = int(cfg.model.depth)
        hidden, residual = (int(cfg.model.width),) * (depth + 1), (True,) * depth
    if OmegaConf.select(cfg, "trainer.name") == "bcd":  # the gradient baselines train any network
        _check_scheme(_trainer_class(cfg), name)
    init = OmegaConf.select(cfg, "model.init", default="normal")  # a run folder saved without it drew by Remark 1
    if init not in INITS:
        raise ConfigError("model.init", init, f"one of {', '.join(INITS)} (the weights' initialisation)")
    _number(cfg, "model.init_std", lambda x: x >= 0, "a number >= 0")
    _number(cfg, "model.init_bias", lambda x: True, "a finite number")
    # a run folder saved before init_scale existed drew init=scaled with the activation's gain itself
    scale = 1.0
    if "init_scale" in cfg.model:
        _number(cfg, "model.init_scale", lambda x: x > 0, "a number > 0 (a multiple of the activation's gain)")
        scale = cfg.model.init_scale
    return ModelSpec(name, hidden, str(init), float(cfg.model.init_std), float(cfg.model.init_bias), residual,
                     float(scale))  # fmt: skip


def _check_scheme(scheme: type[Trainer], model: str) -> None:
    if scheme.residual and model != "resnet":
        allowed = f"model=resnet: splitting={scheme.name} trains residual networks only"
        raise ConfigError("splitting", scheme.name, allowed)
    if not scheme.residual and model == "resnet":
        raise ConfigError(
            "splitting", scheme.name,
            "model=resnet is trained by splitting=resnet (Algorithm 3, three-splitting with residual layers); "
            "the paper gives no two-splitting scheme for residual layers",
        )  # fmt: skip


def _trainer_class(cfg: DictConfig) -> type[Trainer]:
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
    if not (isinstance(scheme, type) and issubclass(scheme, BCDScheme)):
        raise ConfigError("splitting", target, _splittings())
    return scheme


def _splittings() -> str:
    """What ``splitting._target_`` may name: a scheme class, as in the options of conf/splitting."""
    options = ", ".join(sorted(p.stem for p in (config_dir() / "splitting").glob("*.yaml")))
    return f"a BCD scheme class, as chosen by splitting={{{options}}}"


def _method(cfg: DictConfig) -> MethodSpec:
    """The trainer class and its settings, a refused value reported under its config key (``trainer.lr``)."""
    trainer = _trainer_class(cfg)
    name = str(cfg.trainer.name)
    settings = _bcd_settings(cfg) if name == "bcd" else _baseline_settings(cfg.trainer)
    return MethodSpec(name, trainer, settings)


def _bcd_settings(cfg: DictConfig) -> BCDSettings:
    """gamma, rho, alpha at the config's top level, the others in ``trainer``. A run always names its
    ``trainer.solve_dtype``; ``trainer.state_solve_dtype`` null is the run's dtype. A config without
    ``trainer.extrapolation`` (a run folder of an earlier version) is plain BCD."""
    trainer = cfg.trainer
    top = ("gamma", "rho", "alpha")
    values = {key: cfg.get(key) for key in top}
    values |= {key: trainer.get(key) for key in ("solve_dtype", "inner_iters", "inner_tol", "alpha_check")}
    values |= {key: trainer.get(key) for key in ("extrapolation", "safeguard") if key in trainer}
    values["state_solve_dtype"] = trainer.get("state_solve_dtype")
    try:
        require(values["solve_dtype"] is not None, "solve_dtype", None, f"one of {', '.join(DTYPES)}")
        if values["state_solve_dtype"] is None:
            require(cfg.get("dtype") in DTYPES, "state_solve_dtype", None, "null only with dtype float32 or float64")
            values["state_solve_dtype"] = cfg.dtype
        return BCDSettings(**values)
    except ParameterError as err:
        raise err.within(None if err.key in top else "trainer") from None


def _baseline_settings(trainer: DictConfig) -> BaselineSettings:
    """The settings of the ``trainer`` node (sgd or adam); SGD's keys are not read for Adam, nor Adam's for SGD."""
    values: dict[str, Any] = {"optimizer": trainer.get("name")}
    values |= {key: trainer.get(key) for key in ("lr", "batch_size", "weight_decay")}
    if values["optimizer"] == "sgd":
        values |= {key: trainer.get(key) for key in ("momentum", "nesterov")}
    elif values["optimizer"] == "adam":
        values["betas"] = _plain(trainer.get("betas"))
    try:
        return BaselineSettings(**values)
    except ParameterError as err:
        raise err.within("trainer", "name" if err.key == "optimizer" else None) from None


def _build(cfg: DictConfig, group: str) -> Any:
    """The catalogue entry of config group ``group``; a refused parameter is named by its full key ``group.field``."""
    try:
        return instantiate(cfg[group])
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, ParameterError):
            raise cause.within(group) from None
        if isinstance(cause, TypeError):  # a parameter the entry does not take
            params = {k: v for k, v in cfg[group].items() if not str(k).startswith("_")}
            raise ConfigError(group, params, str(cause)) from None
        raise


def _check_data_parallel(cfg: DictConfig, method: MethodSpec) -> None:
    """What a data-parallel run (torchrun, more than one process) supports: BCD with sample-separable blocks."""
    if method.name != "bcd":
        raise ConfigError(
            "trainer", method.name, "bcd under torchrun: data-parallel runs train by BCD; run the baselines in one "
            "process",
        )  # fmt: skip
    if method.splitting == "two":
        raise ConfigError(
            "splitting", method.trainer.name, "a three-splitting scheme under torchrun (three, "
            "resnet): two-splitting's W blocks with a nonlinear activation need sums over all samples inside their "
            "inner solver",
        )  # fmt: skip
    reduction = OmegaConf.select(cfg, "loss.reduction")
    if reduction != "sum":
        raise ConfigError(
            "loss.reduction", reduction, "sum under torchrun: with mean, each sample's weight 1/n depends on all shards"
        )


def _device(cfg: DictConfig) -> DeviceSpec:
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
    return DeviceSpec(str(name), int(OmegaConf.select(cfg, "device.index", default=0) or 0), str(precision))


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig | ListConfig) else value


def _resolved(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain values; an interpolation that resolves only inside Hydra keeps its text."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        plain = OmegaConf.to_container(cfg, resolve=False)
    assert isinstance(plain, dict)
    return {str(k): v for k, v in plain.items()}
