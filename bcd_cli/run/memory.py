"""The memory a run needs, estimated before anything is allocated, and checked against what the device has.

``estimate`` adds up what the engine declares (``bcd_cli.engine.workspace``): the trainer's state (W, b and
the blocks V, U of every layer over the samples; or the weights, gradients and optimizer state of the SGD/Adam
baselines) and what stays live between sweeps, which ``memory_footprint`` of its class gives with the
workspace of every block of a sweep, of the evaluation and of the build, each declared beside the code that
allocates it; and the data. Each phase's peak is what it starts with plus its largest workspace.
``estimate_for`` reads those inputs from a run and its loaded data. ``available`` says how much memory the device has
left and where that number comes from; ``check`` refuses (``ResourceError``, exit status 2) a run whose
estimated peak does not fit, in one line, and warns when it takes more than 80% of it.

The estimate counts tensor memory: on the CPU what PyTorch's allocator hands out (not the interpreter and
libraries, about 0.3-0.5 GiB resident on their own), on CUDA what ``torch.cuda.max_memory_allocated``
reports, plus ``CUDA_WORKSPACE`` for cuBLAS and cuSOLVER (the CUDA context is not in it: it is already
taken when ``available`` asks the driver).

Environment: ``BCD_MEMORY_LIMIT`` replaces the detected limit with the memory the whole run may use, its
peak with the loaded data included: a number of bytes, or with a binary suffix K, M, G or T (``2G`` is
2 GiB; ``512M``, ``1.5G``, ``64GiB`` are read as well). For tests, and for users who share a machine.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bcd_cli.app import config_dir
from bcd_cli.catalogue._memory import ActivationMemory, LossMemory, RegularizerMemory
from bcd_cli.engine.baselines import OPTIMIZERS, BaselineSettings, GradientBaseline
from bcd_cli.engine.parallel import world_size
from bcd_cli.engine.resnet import ResNetBCD
from bcd_cli.engine.scheme import BCDSettings
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.engine.trainer import Trainer
from bcd_cli.engine.two_splitting import TwoSplittingBCD
from bcd_cli.engine.workspace import Footprint, Shapes
from bcd_cli.errors import ConfigError, ResourceError

if TYPE_CHECKING:
    from bcd_cli.data.loaders import Dataset
    from bcd_cli.run.spec import RunSpec

log = logging.getLogger(__name__)

ENV_LIMIT = "BCD_MEMORY_LIMIT"
WARN_FRACTION = 0.8  # check() warns above this share of the available memory
SCHEMES = ("three", "two", "resnet")  # BCD splittings (the ``name`` of their classes)
_BCD = {"three": ThreeSplittingBCD, "two": TwoSplittingBCD, "resnet": ResNetBCD}
BASELINES = OPTIMIZERS  # trainer.name of the gradient baselines
CUDA_WORKSPACE = 64 * 2**20  # cuBLAS and cuSOLVER workspaces, from PyTorch's caching allocator
MARGIN = 1.05  # the workspaces are scaled by this: allocator rounding, work the declarations leave out
SMALL = 16 * 2**10  # and this is added for the scalars and other small tensors they do not count

_UNLIMITED = 2**60  # a cgroup limit at or above this means none (v1 writes 2^63 - 4096)
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# ------------------------------------------------------------------------------------------------ the estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs on its device.

    ``state``: every block (W, b of each layer; V and U of every layer over the samples), or for the SGD/Adam
    baselines W, b, their gradients and the optimizer state. ``data``: the train and test X, one-hot Y and
    labels on the device. ``sweep_peak`` and ``eval_peak``: everything live at the highest point of one sweep
    (or SGD/Adam epoch) and of the evaluation after it, state, data and temporaries together; ``peak`` the
    larger, or ``build_peak`` (drawing the weights, in float64 on the CPU, and the first forward pass) in the
    rare run where that is higher. ``n_train`` and ``per_sample`` (how much the peak grows per training sample)
    let ``check`` suggest a sample count that fits; ``loaded``: bytes of the peak already allocated when the
    estimate was made (the data, for ``estimate_for``), which the memory ``available`` reports no longer holds;
    ``where``: what the run does at its peak (e.g. ``the W2 block, its 1025 x 1025 normal equations``).
    """

    state: int
    data: int
    sweep_peak: int
    eval_peak: int
    build_peak: int = 0
    n_train: int = 0
    per_sample: float = 0.0
    loaded: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    grad_norm: bool = True
    eval_peak_without_grad_norm: int | None = field(default=None, compare=False)
    where: str = ""

    @property
    def peak(self) -> int:
        return max(self.sweep_peak, self.eval_peak, self.build_peak)

    def parts(self) -> str:
        """The peak broken into its parts, e.g. ``state 40.0 GiB + data 180 MiB + sweep temporaries 17.3 GiB``."""
        phases = {"sweep": self.sweep_peak, "evaluation": self.eval_peak, "build": self.build_peak}
        phase = max(phases, key=lambda name: phases[name])
        temporaries = format_bytes(max(0, self.peak - self.state - self.data))
        at = f" at {self.where}" if self.where else ""
        return (
            f"state {format_bytes(self.state)} + data {format_bytes(self.data)} + {phase} temporaries {temporaries}{at}"
        )


# an entry without a ``memory`` of its kind (a _target_ of the user's own) is counted as the most any catalogue
# entry of its kind allocates: Softplus and Polynomial; Logistic with solver=exact; ElasticNet's prox
_ANY_ACT = ActivationMemory(prox=48, forward=3, saved=3)
_ANY_LOSS = LossMemory(output=18, value=6, saved=4)
_KINDS = {"act": "activation", "loss": "loss", "reg": "regularizer"}  # conf group -> what an entry of it is


@functools.cache
def _conf_entry(group: str, name: str) -> object:
    """The entry conf/``group``/``name``.yaml builds, as the CLI builds it; ValueError naming the files there
    when there is none."""
    folder = config_dir() / group
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    if name not in names:
        raise ValueError(f"unknown {_KINDS[group]} {name!r}: one of {', '.join(names)}")
    entry: object = instantiate(OmegaConf.load(folder / f"{name}.yaml"))
    return entry


def _profile(group: str, entry: object) -> object:
    """The ``memory`` of ``entry``, a catalogue object or its conf name (relu, square, l2...); None when the
    object declares none."""
    if isinstance(entry, str):
        entry = _conf_entry(group, entry)
    return getattr(entry, "memory", None)


def _act_memory(act: object) -> ActivationMemory:
    profile = _profile("act", act)
    return profile if isinstance(profile, ActivationMemory) else _ANY_ACT


def _loss_memory(loss: object) -> LossMemory:
    profile = _profile("loss", loss)
    return profile if isinstance(profile, LossMemory) else _ANY_LOSS


def _reg_memory(reg: object) -> RegularizerMemory:
    """A regularizer's ``memory``; without one, closed-form blocks if it says it is ``quadratic``, and the
    largest prox (ElasticNet's)."""
    profile = _profile("reg", reg)
    if isinstance(profile, RegularizerMemory):
        return profile
    return RegularizerMemory(quadratic=bool(getattr(reg, "quadratic", False)), prox=4, output=2, copies=True)


def _size(dtype: torch.dtype | str | None) -> int:
    if dtype is None:
        return 0
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    assert isinstance(dtype, torch.dtype)
    return torch.empty((), dtype=dtype).element_size()


def estimate(
    sizes: Sequence[int],
    n_train: int,
    n_test: int,
    *,
    dtype: torch.dtype | str = torch.float32,
    scheme: str | type[Trainer] = "three",
    residual: Sequence[bool] | None = None,
    solve_dtype: torch.dtype | str | None = torch.float64,
    state_solve_dtype: torch.dtype | str | None = None,
    grad_norm: bool = True,
    device: torch.device | str = "cpu",
    act: Any = "relu",
    loss: Any = "square",
    reg_w: Any = "none",
    reg_v: Any = "none",
    batch_size: int = 512,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    extrapolation: bool = False,
) -> MemoryEstimate:
    """The memory of a run on the network of layer ``sizes`` (input, hidden..., classes) with ``n_train``
    training and ``n_test`` test samples on this process's ``device``.

    ``scheme``: a trainer class, or by name a BCD splitting (three, two, resnet; ``residual`` flags its layers as
    ``config.architecture`` does, by default every layer but the first and the last for resnet) or a
    baseline (sgd, adam, with ``batch_size``, ``momentum``, ``nesterov``, ``weight_decay``).
    ``solve_dtype``: the factorisations' dtype (trainer.solve_dtype; None: ``dtype``);
    ``state_solve_dtype``: that of the V blocks' right-hand sides (None: ``dtype``). ``extrapolation``: a BCD
    scheme's safeguarded extrapolation (``trainer.extrapolation`` > 0), which keeps a copy of the state.
    ``act``, ``loss``, ``reg_w``, ``reg_v``: catalogue objects or the names of their files in conf/act,
    conf/loss, conf/reg (relu, square, none, ...; ValueError for another name). Each entry's ``memory`` says
    what it allocates (a smooth activation's prox holds some 45 tensors of its chunk's size); an object
    without one (a ``_target_`` of the user's own) is counted as the most any catalogue entry of its kind
    allocates.
    """
    if isinstance(scheme, str) and scheme not in SCHEMES + BASELINES:
        raise ValueError(f"scheme={scheme!r}: one of {', '.join(SCHEMES + BASELINES)}")
    trainer = scheme if not isinstance(scheme, str) else GradientBaseline if scheme in BASELINES else _BCD[scheme]
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1 or n_train < 1 or n_test < 0:
        raise ValueError(f"sizes {sizes}, n_train {n_train}, n_test {n_test}: need two sizes >= 1 and n_train >= 1")
    N = len(sizes) - 1
    if residual is None:
        residual = [0 < l < N - 1 for l in range(N)] if trainer.residual else [False] * N
    device = torch.device(device)
    e = _size(dtype)
    shapes = Shapes(
        sizes=tuple(sizes), residual=tuple(bool(r) for r in residual), n=int(n_train), n_test=int(n_test), e=e,
        es=_size(solve_dtype) or e, er=_size(state_solve_dtype) or e, cpu=device.type == "cpu",
        grad_norm=bool(grad_norm), act=_act_memory(act), loss=_loss_memory(loss), reg_w=_reg_memory(reg_w),
        reg_v=_reg_memory(reg_v),
    )  # fmt: skip
    settings = {"extrapolation": bool(extrapolation)} if trainer.splitting is not None else {
        "optimizer": scheme, "batch_size": int(batch_size), "momentum": bool(momentum), "nesterov": bool(nesterov),
        "weight_decay": bool(weight_decay)}  # fmt: skip
    footprint = functools.partial(cast(Any, trainer).memory_footprint, **settings)  # each class's own settings
    return _estimate_of(footprint, shapes, dtype=str(dtype).removeprefix("torch."), device=str(device))


def _estimate_of(footprint: Callable[[Shapes], Footprint], s: Shapes, *, dtype: str, device: str) -> MemoryEstimate:
    """The estimate of a trainer's ``footprint`` on ``s``: its peaks, where the highest is reached, how much
    they grow per sample (the peaks again at twice the samples) and the evaluation's peak without the gradient
    norm."""
    here = footprint(s)
    build, sweep, evaluation, where = _peaks(here, s)
    more = _peaks(footprint(dataclasses.replace(s, n=2 * s.n)), dataclasses.replace(s, n=2 * s.n))
    per_sample = max(0.0, (max(more[:3]) - max(build, sweep, evaluation)) / s.n)
    without = dataclasses.replace(s, grad_norm=False)
    no_grad = _peaks(footprint(without), without)[2] if s.grad_norm else evaluation
    phase = max(("sweep", sweep), ("evaluation", evaluation), ("build", build), key=lambda x: x[1])[0]
    return MemoryEstimate(
        state=here.state, data=_data(s), sweep_peak=sweep, eval_peak=evaluation, build_peak=build,
        n_train=s.n, per_sample=per_sample, dtype=dtype, device=device,
        grad_norm=s.grad_norm, eval_peak_without_grad_norm=no_grad, where=where[phase],
    )  # fmt: skip


def _data(s: Shapes) -> int:
    """Bytes of the train and test X, one-hot Y and int64 labels."""
    return (s.sizes[0] + s.sizes[-1]) * (s.n + s.n_test) * s.e + 8 * (s.n + s.n_test)


def _peaks(footprint: Footprint, s: Shapes) -> tuple[int, int, int, dict[str, str]]:
    """(build, sweep, evaluation) peaks: what each phase starts with (the data; the live state and the data)
    plus its largest workspace scaled by MARGIN, and where each is reached."""
    extra = SMALL + (0 if s.cpu else CUDA_WORKSPACE)
    data, live = _data(s), footprint.live + _data(s)
    widest = max(footprint.sweep, key=lambda w: w.bytes)  # the first of the largest
    phases = {"build": (data, footprint.build), "sweep": (live, widest), "evaluation": (live, footprint.evaluation)}
    peaks = {phase: int(start + MARGIN * w.bytes) + extra for phase, (start, w) in phases.items()}
    return peaks["build"], peaks["sweep"], peaks["evaluation"], {phase: w.where for phase, (_, w) in phases.items()}


def estimate_for(spec: RunSpec, data: Dataset) -> MemoryEstimate:
    """The estimate of the run of ``spec`` (a ``bcd_cli.run.spec.RunSpec``) on the loaded ``data`` (a
    ``bcd_cli.data.loaders.Dataset``, this process's shard in a data-parallel run).

    The data is already on its device: ``loaded`` is its size, which ``check`` does not ask for again."""
    sizes, residual = spec.model.architecture(data.n_features, data.n_classes)
    method, settings = spec.method, spec.method.settings
    options: dict[str, Any]
    if method.splitting is not None:  # a BCD scheme
        bcd = cast(BCDSettings, settings)
        solve, state_solve = bcd.dtypes()
        options = {"scheme": method.trainer, "solve_dtype": solve, "state_solve_dtype": state_solve,
                   "extrapolation": bcd.extrapolation > 0}  # fmt: skip
    else:
        sgd = cast(BaselineSettings, settings)
        options = {"scheme": method.name, "solve_dtype": None, "batch_size": sgd.batch_size, "momentum": sgd.momentum,
                   "nesterov": sgd.nesterov, "weight_decay": sgd.weight_decay}  # fmt: skip
    result = estimate(
        sizes, data.X_train.shape[1], data.X_test.shape[1], dtype=spec.dtype, residual=residual,
        grad_norm=spec.grad_norm, device=data.X_train.device, act=spec.catalogue.act, loss=spec.catalogue.loss,
        reg_w=spec.catalogue.reg_w, reg_v=spec.catalogue.reg_v, **options,
    )  # fmt: skip
    ranks = world_size()  # a data-parallel run: each rank holds its share of the samples
    loaded = sum(t.numel() * t.element_size() for t in (data.X_train, data.Y_train, data.y_train, data.X_test,
                                                         data.Y_test, data.y_test))  # fmt: skip
    return MemoryEstimate(
        **{**result.__dict__, "n_train": data.n_train, "per_sample": result.per_sample / ranks, "loaded": loaded}
    )


# ------------------------------------------------------------------------------------------------ the device


def format_bytes(n: float) -> str:
    """``57.5 GiB``, ``180 MiB``, ``512 B``: three significant digits, binary units."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str) -> int:
    """``BCD_MEMORY_LIMIT``'s value in bytes: ``17179869184``, ``16G``, ``512M``, ``1.5GiB`` (binary
    suffixes K, M, G, T, with an optional B or iB). Raises ConfigError naming the variable otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()] if match else math.nan
    if not (match and math.isfinite(value) and value >= 1):
        raise ConfigError(
            ENV_LIMIT, text, "a size in bytes, optionally with a binary suffix K, M, G or T (e.g. 2G or 512M)"
        )
    return int(value)


def available(device: torch.device | str) -> tuple[int, str]:
    """(bytes a run on ``device`` can still allocate, where that number comes from).

    ``BCD_MEMORY_LIMIT`` when set. On CUDA the free memory the driver reports (``torch.cuda.mem_get_info``),
    with the blocks PyTorch's caching allocator holds free for this process.
    On the CPU the smallest of MemAvailable of /proc/meminfo and, for this process's cgroup and each
    above it, its limit minus its usage (v2: memory.max minus memory.current; v1: memory.limit_in_bytes minus
    memory.usage_in_bytes; page cache the kernel can drop, inactive_file, not counted as used); elsewhere
    the free physical memory (os.sysconf). (0, reason) when nothing can be read.
    """
    override = os.environ.get(ENV_LIMIT)
    if override is not None and override.strip():
        return parse_bytes(override), f"{ENV_LIMIT}={override.strip()}"
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)  # ours to reuse
        if cached > 0:
            return int(free + cached), f"free memory of cuda:{index} (torch.cuda.mem_get_info) and its cached blocks"
        return int(free), f"free memory of cuda:{index} (torch.cuda.mem_get_info)"
    if device.type != "cpu":
        return 0, f"no way to read the free memory of {device}"
    found = [x for x in (_meminfo_available(), *_cgroup_headroom()) if x is not None]
    if found:
        return min(found, key=lambda x: x[0])
    return _sysconf_available()


def _meminfo_available() -> tuple[int, str] | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return (int(match.group(1)) * 1024, "MemAvailable of /proc/meminfo") if match else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key} (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _cgroup_dirs(root: Path, relative: str) -> list[Path]:
    """``root``/``relative`` and each cgroup above it, the deepest first; ``root`` alone when the process's
    cgroup is not visible there (a cgroup namespace mounts its own cgroup as the root)."""
    leaf = root / relative.lstrip("/")
    if not leaf.is_dir():
        return [root]
    dirs = [leaf]
    while dirs[-1] != root and root in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _cgroup_headroom(
    proc: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup")
) -> list[tuple[int, str]]:
    """(limit minus usage, description) of every cgroup above this process with a memory limit."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            root = next((r for r in (mount, mount / "unified") if (r / "cgroup.controllers").exists()), None)
            if root is None:
                continue
            for d in _cgroup_dirs(root, relative):
                limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
                if limit is not None and usage is not None and limit < _UNLIMITED:
                    used = usage - _inactive_file(d / "memory.stat", "inactive_file")
                    found.append((max(0, limit - used), f"cgroup memory.max minus usage ({d})"))
        elif "memory" in controllers.split(","):  # cgroup v1
            root = mount / "memory"
            for d in _cgroup_dirs(root, relative):
                limit, usage = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
                if limit is not None and usage is not None and limit < _UNLIMITED:
                    used = usage - _inactive_file(d / "memory.stat", "total_inactive_file")
                    found.append((max(0, limit - used), f"cgroup v1 memory.limit_in_bytes minus usage ({d})"))
    return found


def _sysconf_available() -> tuple[int, str]:
    for name, what in (("SC_AVPHYS_PAGES", "free physical memory"), ("SC_PHYS_PAGES", "physical memory")):
        try:
            pages, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            continue
        if pages > 0 and size > 0:
            return pages * size, f"{what} (os.sysconf {name})"
    return 0, "the free memory of this machine could not be read"


def check(estimate: MemoryEstimate, device: torch.device | str, *, what: str) -> None:
    """Refuses ``what`` (e.g. ``bcd-train``, ``job 3``) when ``estimate.peak`` does not fit ``device``.

    Raises ResourceError (exit status 2) with one line: the estimate in its parts, the limit and where it
    comes from, what to change. Logs a warning when the peak takes more than 80% of the limit. With
    ``BCD_MEMORY_LIMIT`` the whole peak is compared with it; otherwise the peak less ``estimate.loaded``
    (already allocated, so no longer in the free memory) with what ``available`` reports.
    """
    limit, source = available(device)
    if limit <= 0:
        log.debug("memory check skipped: %s", source)
        return
    overridden = source.startswith(ENV_LIMIT)
    need = estimate.peak if overridden else max(0, estimate.peak - estimate.loaded)
    beyond = ""
    if not overridden and estimate.loaded >= 0.05 * estimate.peak:
        beyond = f", {format_bytes(need)} beyond the data already loaded"
    needs = f"{what} needs about {format_bytes(estimate.peak)} at its peak ({estimate.parts()}{beyond})"
    if need > limit:
        raise ResourceError(
            f"{needs}, but {format_bytes(limit)} is available ({source}); {_hints(estimate, limit, overridden)}"
        )
    if need > WARN_FRACTION * limit:
        log.warning("%s: %.0f%% of the %s available (%s)", needs, 100 * need / limit, format_bytes(limit), source)


def _hints(estimate: MemoryEstimate, limit: int, overridden: bool) -> str:
    hints = []
    fixed = estimate.peak - estimate.per_sample * estimate.n_train  # what no sample count changes
    room = limit + (0 if overridden else estimate.loaded) - fixed
    if room > 0:  # fewer samples can help
        fits = int(0.95 * room / estimate.per_sample) if estimate.per_sample > 0 else 0
        hints.append(f"fewer samples (data.n_train={f'{fits} or less' if 1 <= fits < estimate.n_train else '...'})")
    hints.append("a smaller network (model.widths, or model.width and model.depth)")
    if estimate.dtype == "float64":
        hints.append("dtype=float32")
    no_grad = estimate.eval_peak_without_grad_norm
    without = max(estimate.sweep_peak, estimate.build_peak, no_grad or 0)
    if estimate.grad_norm and no_grad is not None and estimate.eval_peak > without:
        hints.append(f"grad_norm=false (peak {format_bytes(without)})")
    hints.append("a GPU with more memory" if estimate.device.startswith("cuda") else "a machine with more memory")
    return "try " + ", ".join(hints[:-1]) + " or " + hints[-1]
