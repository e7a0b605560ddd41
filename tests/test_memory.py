"""The memory estimate (``bcd_cli.run.memory``): exact for the state and the data, above the measured peak, and
the check that refuses a run the device cannot hold.

The peaks are measured in PyTorch's own CPU allocator (``bench.measured_peaks``: ``torch.profiler`` with
``profile_memory=True`` reports every allocation and free with its address), so the bytes live at each moment
are counted exactly, whatever the machine's malloc, page size, thread count or load (no resident-set or
timing measurement).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
import torch

from bcd_cli.catalogue._memory import ActivationMemory, LossMemory, RegularizerMemory
from bcd_cli.catalogue.losses import Logistic
from bcd_cli.data.loaders import load_data
from bcd_cli.engine import chunking
from bcd_cli.errors import ConfigError, ResourceError
from bcd_cli.run import memory
from bcd_cli.run.spec import DTYPES, resolve
from bcd_cli.run.train import build_trainer
from tests.conftest import catalogue_entries, compose_config

from bench import measured_peaks

pytestmark = pytest.mark.usefixtures("one_thread")

CPU = torch.device("cpu")
# small runs on digits (64 features, 10 classes), each scheme's blocks of every kind: for three-splitting
# the V blocks by the m x m system (V1) and the Woodbury form (V2), two-splitting's nonlinear V and W blocks
RUNS = {
    "three": ["model.widths=[48,32]"],
    "two": ["splitting=two", "model.widths=[40,32,24]"],
    "two-linear": ["splitting=two", "model.widths=[40,32]", "act=linear"],  # closed-form W blocks, the data's moments
    "resnet": ["model=resnet", "model.width=32", "model.depth=2"],
    "sgd": ["trainer=sgd", "model.widths=[48,32]", "trainer.batch_size=100"],
    "adam": ["trainer=adam", "model.widths=[48,32]", "trainer.batch_size=100"],
    "sgd-momentum": ["trainer=sgd", "model.widths=[48,32]", "trainer.momentum=0.9"],
    "three-float64": ["model.widths=[48,32]", "dtype=float64"],
    "three-wide-rhs": ["model.widths=[48,32]", "trainer.state_solve_dtype=float64"],
    "three-accelerated": ["trainer=bcd_accelerated", "model.widths=[48,32]"],  # the previous point, the safeguard
    "two-accelerated": ["trainer=bcd_accelerated", "splitting=two", "model.widths=[40,32]"],
}
SAMPLES = ["data.n_train=300", "data.n_test=100", "device=cpu"]


def _run(*overrides: str):
    """(cfg, data) of a small run on digits, loaded as ``train.run`` loads it."""
    cfg = compose_config(*SAMPLES, *overrides)
    return cfg, load_data(cfg.data, dtype=DTYPES[cfg.dtype], device=CPU)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _data_tensors(data) -> list[torch.Tensor]:
    return [data.X_train, data.Y_train, data.y_train, data.X_test, data.Y_test, data.y_test]


def _state_tensors(algorithm) -> list[torch.Tensor]:
    """What the run holds besides the data: the BCD blocks, or the baseline's weights, gradients and moments."""
    if not hasattr(algorithm, "optimizer"):
        return algorithm.blocks()
    params = [*algorithm.W, *algorithm.b]
    moments = [v for state in algorithm.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
    return [*params, *(p.grad for p in params if p.grad is not None), *moments]


@pytest.mark.parametrize("name", list(RUNS))
def test_state_and_data_are_the_bytes_a_run_allocates(name):
    cfg, data = _run(*RUNS[name])
    estimate = memory.estimate_for(resolve(cfg), data)
    algorithm = build_trainer(resolve(cfg), data)
    if hasattr(algorithm, "optimizer"):
        algorithm.sweep()  # the gradients and the optimizer state exist from the first step on
    assert estimate.state == _nbytes(_state_tensors(algorithm))
    assert estimate.data == _nbytes(_data_tensors(data)) == estimate.loaded
    assert estimate.state + estimate.data < estimate.sweep_peak and estimate.state + estimate.data < estimate.eval_peak


def test_measured_peaks_follow_each_allocation_until_it_is_freed():
    kept: list[torch.Tensor] = []
    before = torch.empty(10_000)  # allocated before the measurement: not counted, nor when it is freed

    def second() -> None:
        nonlocal before
        temporary = torch.empty(2000, dtype=torch.float64)
        del temporary, before

    peaks = measured_peaks({"first": lambda: kept.append(torch.empty(1000)), "second": second})
    assert peaks == {"first": 4000, "second": 4000 + 16000}


@pytest.mark.parametrize("name", list(RUNS))
def test_peak_estimate_bounds_the_measured_peak(name):
    """Each phase's estimate is above the peak the allocator sees (building the state, two sweeps, the
    evaluation), and within 1.5x of it."""
    cfg = compose_config(*SAMPLES, *RUNS[name])
    dtype = DTYPES[cfg.dtype]
    run: dict = {}

    def build() -> None:
        run["algorithm"] = build_trainer(resolve(cfg), run["data"])

    phases = {
        "load": lambda: run.setdefault("data", load_data(cfg.data, dtype=dtype, device=CPU)),
        "build": build,
        "sweep": lambda: run["algorithm"].sweep(),
        "sweep again": lambda: run["algorithm"].sweep(),  # b is then a view of its solution (see memory)
        "evaluation": lambda: run["algorithm"].evaluate(run["data"], grad_norm=cfg.grad_norm),
        "third sweep": lambda: run["algorithm"].sweep(),  # the first one an accelerated scheme extrapolates
    }
    measured = measured_peaks(phases)
    estimate = memory.estimate_for(resolve(cfg), run["data"])
    sweep = max(measured["sweep"], measured["sweep again"], measured["third sweep"])
    assert measured["build"] <= estimate.build_peak <= 1.5 * measured["build"]
    assert sweep <= estimate.sweep_peak <= 1.5 * sweep
    assert measured["evaluation"] <= estimate.eval_peak <= 1.5 * measured["evaluation"]


@pytest.mark.parametrize("name", ["three", "two", "resnet", "adam", "three-accelerated"])
def test_a_runs_estimate_is_its_trainers_own(name, monkeypatch):
    """``estimate_for`` of a run's spec is ``estimate`` of the trainer class the spec names, its own declarations
    asked (ResNetBCD's residual blocks, not three-splitting's with residual flags)."""
    cfg, data = _run(*RUNS[name])
    spec = resolve(cfg)
    trainer, asked = spec.method.trainer, []
    declared = trainer.memory_footprint.__func__

    def spy(cls, *args, **kwargs):
        asked.append(cls)
        return declared(cls, *args, **kwargs)

    monkeypatch.setattr(trainer, "memory_footprint", classmethod(spy))
    sizes, residual = spec.model.architecture(data.n_features, data.n_classes)
    settings = spec.method.settings
    extra = {"batch_size": settings.batch_size} if name == "adam" else {"extrapolation": "accelerated" in name}
    expected = memory.estimate(
        sizes, data.X_train.shape[1], data.X_test.shape[1], scheme=name.split("-")[0], residual=residual,
        solve_dtype=torch.float64, act=spec.catalogue.act, loss=spec.catalogue.loss, **extra,
    )  # fmt: skip
    asked.clear()
    got = memory.estimate_for(spec, data)
    assert asked and set(asked) == {trainer}
    assert (got.state, got.sweep_peak, got.eval_peak, got.build_peak, got.where) == (
        expected.state, expected.sweep_peak, expected.eval_peak, expected.build_peak, expected.where,
    )  # fmt: skip


def test_evaluation_without_gradient_norm_is_estimated_too():
    cfg = compose_config(*SAMPLES, *RUNS["three"], "grad_norm=false")
    data = load_data(cfg.data, dtype=torch.float32, device=CPU)
    estimate = memory.estimate_for(resolve(cfg), data)
    with_norm = memory.estimate_for(resolve(compose_config(*SAMPLES, *RUNS["three"])), data)
    assert estimate.eval_peak == estimate.eval_peak_without_grad_norm == with_norm.eval_peak_without_grad_norm
    assert estimate.eval_peak < with_norm.eval_peak and estimate.sweep_peak == with_norm.sweep_peak


RIDGES = ("reg@reg_w=l2", "reg_w.lam=0.3", "reg@reg_v=l2", "reg_v.lam=0.2")


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("three", ("act=sigmoid", "loss=cross_entropy")),
        ("three", ("act=softplus", "loss=exponential", *RIDGES)),
        ("three", ("act=linear", "dtype=float64")),
        ("resnet", ("act=leaky_relu", "loss=hinge")),
        ("resnet", ("act=tanh", "loss=logistic", "grad_norm=false")),
    ],
    ids=lambda x: " ".join(x) if isinstance(x, tuple) else x,
)
def test_closed_form_evaluation_over_several_chunks_is_estimated(name, extra):
    """Three-splitting's evaluation in one pass over column chunks, its gradient in closed form: the estimate
    is above the measured peak and within 1.5x of it, for activations whose sigma and sigma' allocate
    differently, each loss's gradient, ridge terms, with and without the gradient norm."""
    cfg = compose_config(*SAMPLES, *RUNS[name], *extra, "data.n_train=1100")  # in chunks of 512, 512 and 76
    dtype = DTYPES[cfg.dtype]
    run: dict = {}

    def build() -> None:
        run["algorithm"] = build_trainer(resolve(cfg), run["data"])

    phases = {  # everything the run holds is counted: the data, the state, the data's moments, then the peak
        "load": lambda: run.setdefault("data", load_data(cfg.data, dtype=dtype, device=CPU)),
        "build": build,
        "sweep": lambda: run["algorithm"].sweep(),
        "evaluation": lambda: run["algorithm"].evaluate(run["data"], grad_norm=cfg.grad_norm),
    }
    measured = measured_peaks(phases)["evaluation"]
    assert len(chunking.column_chunks(run["data"].X_train.shape[1])) == 3
    estimate = memory.estimate_for(resolve(cfg), run["data"])
    assert measured <= estimate.eval_peak <= 1.5 * measured


def test_estimate_grows_with_samples_width_and_dtype():
    base = memory.estimate([784, 1024, 1024, 10], 8000, 1000)
    assert memory.estimate([784, 1024, 1024, 10], 16000, 1000).peak > base.peak
    assert memory.estimate([784, 2048, 2048, 10], 8000, 1000).peak > base.peak
    wide = memory.estimate([784, 1024, 1024, 10], 8000, 1000, dtype=torch.float64)
    assert wide.state == 2 * base.state and wide.peak > 1.9 * base.peak
    # a smooth activation's prox holds some 45 tensors of its size: per row chunk on the CPU, whole on CUDA
    cpu = memory.estimate([784, 1024, 1024, 10], 8000, 1000, act="sigmoid")
    cuda = memory.estimate([784, 1024, 1024, 10], 8000, 1000, act="sigmoid", device="cuda")
    assert cuda.sweep_peak > cpu.sweep_peak + 40 * 1024 * 8000 * 4
    with pytest.raises(ValueError, match="scheme"):
        memory.estimate([4, 3, 2], 10, 5, scheme="four")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        memory.estimate([4, 3, 2], 10, 5, act="swish")


def test_entries_from_outside_the_catalogue_get_the_largest_profile():
    """A _target_ of the user's own is estimated as the most any catalogue entry of its kind allocates."""

    class Swish:
        pass

    sizes = [784, 1024, 1024, 10]
    own = memory.estimate(sizes, 8000, 1000, act=Swish(), loss=Swish())
    losses = [*catalogue_entries("loss").values(), Logistic(solver="exact")]
    for act in catalogue_entries("act").values():
        for loss in losses:
            assert own.peak >= memory.estimate(sizes, 8000, 1000, act=act, loss=loss).peak, (act, loss)


PROFILES = {"act": ActivationMemory, "loss": LossMemory, "reg": RegularizerMemory}


def test_every_catalogue_entry_declares_its_memory():
    """Each YAML of conf/act, conf/loss and conf/reg builds an entry that says what it allocates: a new entry
    without ``memory`` would otherwise be estimated as the largest of its kind."""
    missing = []
    for group, profile in PROFILES.items():
        for name, entry in catalogue_entries(group).items():
            declared = getattr(entry, "memory", None)
            if not isinstance(declared, profile):
                missing.append(
                    f"conf/{group}/{name}.yaml ({type(entry).__name__}): add "
                    f"memory: ClassVar[{profile.__name__}] = {profile.__name__}(...) to its class "
                    f"(bcd_cli/catalogue/_memory.py says what each number counts), got {declared!r}"
                )
            elif isinstance(declared, RegularizerMemory):
                assert declared.quadratic == entry.quadratic, f"conf/reg/{name}.yaml: memory.quadratic"
    assert not missing, "catalogue entries without their memory profile:\n" + "\n".join(missing)


@pytest.mark.parametrize("group", list(PROFILES))
def test_estimate_takes_every_conf_name(group):
    """``estimate(act=NAME)`` builds conf/act/NAME.yaml (likewise for losses and regularizers): the same
    estimate as the entry itself, for every file there."""
    sizes = [64, 48, 32, 10]
    for name, entry in catalogue_entries(group).items():
        keys = ["reg_w", "reg_v"] if group == "reg" else [group]
        by_name = memory.estimate(sizes, 300, 100, **dict.fromkeys(keys, name))
        assert by_name == memory.estimate(sizes, 300, 100, **dict.fromkeys(keys, entry)), name
        assert by_name.peak > by_name.state + by_name.data
    with pytest.raises(ValueError, match=r"unknown loss 'squared': one of .*\bsquare\b"):
        memory.estimate(sizes, 300, 100, loss="squared")


def test_check_refuses_a_run_over_the_limit_in_one_line(monkeypatch):
    """model.widths=[10000000], the run that died with an allocator traceback, is refused before anything
    is allocated, in one line naming the estimate's parts, the limit and where it comes from."""
    monkeypatch.setenv(memory.ENV_LIMIT, "64G")
    cfg, data = _run("model.widths=[10000000]")
    estimate = memory.estimate_for(resolve(cfg), data)
    assert estimate.peak > 2**40  # the 10^7 x 10^7 normal equations of W2 alone
    with pytest.raises(ResourceError) as caught:
        memory.check(estimate, CPU, what="bcd-train")
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message
    assert message.startswith(f"bcd-train needs about {memory.format_bytes(estimate.peak)} at its peak (")
    for part in (f"state {memory.format_bytes(estimate.state)}", f"data {memory.format_bytes(estimate.data)}",
                 "sweep temporaries", "but 64 GiB is available (BCD_MEMORY_LIMIT=64G)", "smaller network",
                 "model.widths"):  # fmt: skip
        assert part in message


def test_check_suggests_a_sample_count_that_fits(monkeypatch):
    estimate = memory.estimate([784, 1024, 1024, 1024, 10], 60000, 10000, dtype="float64")
    limit = estimate.peak // 2
    monkeypatch.setenv(memory.ENV_LIMIT, str(limit))
    with pytest.raises(ResourceError, match=r"data\.n_train=(\d+) or less") as caught:
        memory.check(estimate, CPU, what="job 3")
    fits = int(caught.value.args[0].split("data.n_train=")[1].split()[0])
    assert 10000 < fits < 30000
    assert memory.estimate([784, 1024, 1024, 1024, 10], fits, 10000, dtype="float64").peak <= limit
    assert "dtype=float32" in str(caught.value) and "a machine with more memory" in str(caught.value)


def test_check_warns_near_the_limit_and_is_silent_below(monkeypatch, caplog):
    estimate = memory.estimate([64, 256, 256, 10], 1000, 300)
    monkeypatch.setenv(memory.ENV_LIMIT, str(int(estimate.peak / 0.9)))
    with caplog.at_level(logging.WARNING, logger="bcd_cli.run.memory"):
        assert memory.check(estimate, CPU, what="bcd-train") is None
    [record] = [r for r in caplog.records if r.name == "bcd_cli.run.memory"]
    assert record.levelno == logging.WARNING and "90%" in record.getMessage() and "state" in record.getMessage()
    caplog.clear()
    monkeypatch.setenv(memory.ENV_LIMIT, str(2 * estimate.peak))
    with caplog.at_level(logging.WARNING, logger="bcd_cli.run.memory"):
        memory.check(estimate, CPU, what="bcd-train")
    assert not [r for r in caplog.records if r.name == "bcd_cli.run.memory"]


def test_check_counts_the_loaded_data_once(monkeypatch):
    """Without BCD_MEMORY_LIMIT the free memory the machine reports no longer holds the loaded data."""
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
    estimate = dataclasses.replace(memory.estimate([64, 256, 10], 1000, 300), loaded=1_000_000)
    need = estimate.peak - estimate.loaded
    monkeypatch.setattr(memory, "available", lambda device: (need, "a test's free memory"))
    memory.check(estimate, CPU, what="bcd-train")
    monkeypatch.setattr(memory, "available", lambda device: (need - 1, "a test's free memory"))
    with pytest.raises(
        ResourceError,
        match=r"MiB beyond the data already loaded\), but [\d.]+ MiB is available \(a test's free memory\)",
    ):
        memory.check(estimate, CPU, what="bcd-train")


def test_available_says_how_much_and_where_from(monkeypatch):
    monkeypatch.delenv(memory.ENV_LIMIT, raising=False)
    free, source = memory.available(CPU)
    assert isinstance(free, int) and free > 0 and source
    monkeypatch.setenv(memory.ENV_LIMIT, "512M")
    assert memory.available("cpu") == (512 * 2**20, "BCD_MEMORY_LIMIT=512M")
    monkeypatch.setenv(memory.ENV_LIMIT, "lots")
    with pytest.raises(ConfigError, match="BCD_MEMORY_LIMIT='lots' is invalid"):
        memory.available(CPU)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("2G", 2 * 2**30), ("512M", 512 * 2**20), ("1.5G", 3 * 2**29), ("64GiB", 64 * 2**30),
     (" 3k ", 3072), ("2gb", 2 * 2**30), ("1T", 2**40)],
)  # fmt: skip
def test_memory_limit_values(text, expected):
    assert memory.parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "abc", "-1G", "2X", "0", "1e9", "G", "1.2.3M"])
def test_bad_memory_limit_is_a_clear_error(text):
    with pytest.raises(ConfigError) as caught:
        memory.parse_bytes(text)
    assert str(caught.value).startswith(f"BCD_MEMORY_LIMIT={text!r} is invalid: a size in bytes")
    assert caught.value.exit_code == 2


def test_format_bytes():
    assert memory.format_bytes(57.5 * 2**30) == "57.5 GiB"
    assert memory.format_bytes(180 * 2**20) == "180 MiB"
    assert memory.format_bytes(512) == "512 B"
    assert memory.format_bytes(3 * 2**40) == "3 TiB"


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_minus_usage(tmp_path):
    """The tightest of this process's cgroup and those above it; page cache (inactive_file) is not usage."""
    _write(tmp_path / "proc", "0::/jobs/run1\n")
    mount = tmp_path / "cgroup"
    _write(mount / "cgroup.controllers", "cpu memory\n")
    _write(mount / "jobs" / "memory.max", f"{8 * 2**30}\n")
    _write(mount / "jobs" / "memory.current", f"{3 * 2**30}\n")
    _write(mount / "jobs" / "memory.stat", "anon 1\ninactive_file 1073741824\n")
    _write(mount / "jobs" / "run1" / "memory.max", "max\n")
    _write(mount / "jobs" / "run1" / "memory.current", "100\n")
    found = memory._cgroup_headroom(tmp_path / "proc", mount)
    assert found == [(6 * 2**30, f"cgroup memory.max minus usage ({mount / 'jobs'})")]


def test_cgroup_v1_limit_minus_usage(tmp_path):
    _write(tmp_path / "proc", "5:cpu,cpuacct:/\n4:memory:/docker/abc\n0::/\n")
    leaf = tmp_path / "cgroup" / "memory" / "docker" / "abc"
    _write(leaf / "memory.limit_in_bytes", f"{4 * 2**30}\n")
    _write(leaf / "memory.usage_in_bytes", f"{2**30}\n")
    _write(leaf / "memory.stat", "cache 5\ntotal_inactive_file 0\n")
    _write(tmp_path / "cgroup" / "memory" / "memory.limit_in_bytes", "9223372036854771712\n")  # none
    _write(tmp_path / "cgroup" / "memory" / "memory.usage_in_bytes", "1\n")
    found = memory._cgroup_headroom(tmp_path / "proc", tmp_path / "cgroup")
    assert found == [(3 * 2**30, f"cgroup v1 memory.limit_in_bytes minus usage ({leaf})")]


def test_two_splitting_sweep_holds_one_new_state_block_and_the_estimate_follows(monkeypatch):
    """Two-splitting with ReLU: every hidden V and W block but the last V is solved by proximal gradient over
    chunks of the samples. The sweep holds one new V block (the iterate of the block being solved, or the
    last V block's target) and a chunk's temporaries (here 32 samples' worth) besides the state and the data,
    and the estimate follows it within [1, 1.5]."""
    widths, n = [128, 128, 128], 1200
    monkeypatch.setattr(chunking, "CPU_CHUNK_ELEMENTS", 128 * 32)
    cfg = compose_config("data.n_train=1200", "data.n_test=100", "device=cpu", "splitting=two",
                         f"model.widths=[{','.join(map(str, widths))}]", "trainer.inner_iters=4")  # fmt: skip
    run: dict = {}

    def build() -> None:
        run["algorithm"] = build_trainer(resolve(cfg), run["data"])

    phases = {
        "load": lambda: run.setdefault("data", load_data(cfg.data, dtype=torch.float32, device=CPU)),
        "build": build,
        "sweep": lambda: run["algorithm"].sweep(),
        "sweep again": lambda: run["algorithm"].sweep(),
    }
    measured = measured_peaks(phases)
    data, algorithm = run["data"], run["algorithm"]
    assert data.X_train.shape[1] == n
    held = _nbytes(_state_tensors(algorithm)) + _nbytes(_data_tensors(data))
    sweep = max(measured["sweep"], measured["sweep again"])
    block = 128 * n * 4  # one hidden V block
    assert block < sweep - held <= 1.25 * block
    estimate = memory.estimate_for(resolve(cfg), data)
    assert sweep <= estimate.sweep_peak <= 1.5 * sweep


@pytest.mark.parametrize("scheme", ["three", "two", "resnet", "sgd", "adam"])
def test_every_block_of_a_sweep_leaves_the_live_bytes_as_it_found_them(scheme):
    """A sweep's peak is the live state plus the largest workspace of its blocks (``engine.workspace``): that
    holds because each block's declaration frees all it allocates but its new value, which replaces the old."""
    from bcd_cli.engine.baselines import GradientBaseline
    from bcd_cli.engine.resnet import ResNetBCD
    from bcd_cli.engine.three_splitting import ThreeSplittingBCD
    from bcd_cli.engine.two_splitting import TwoSplittingBCD
    from bcd_cli.engine.workspace import Shapes

    trainer = {"three": ThreeSplittingBCD, "two": TwoSplittingBCD, "resnet": ResNetBCD}.get(scheme, GradientBaseline)
    settings = {"optimizer": scheme, "momentum": True, "weight_decay": True} if trainer is GradientBaseline else {}
    profiles = {group: {name: entry.memory for name, entry in catalogue_entries(group).items()} for group in PROFILES}
    for act, reg, er in [("relu", "none", 4), ("sigmoid", "l1", 8), ("linear", "l2", 8), ("tanh", "box", 4)]:
        shapes = Shapes(
            sizes=(64, 48, 48, 10), residual=(False, scheme == "resnet", False), n=3000, n_test=500, e=4, es=8,
            er=er, cpu=True, grad_norm=True, act=profiles["act"][act], loss=profiles["loss"]["square"],
            reg_w=profiles["reg"][reg], reg_v=profiles["reg"][reg],
        )  # fmt: skip
        for extrapolation in [False, True] if trainer is not GradientBaseline else [False]:
            options = settings or {"extrapolation": extrapolation}
            sweep = trainer.memory_footprint(shapes, **options).sweep
            assert sweep and all(w.left == 0 and w.bytes > 0 for w in sweep), (act, reg, sweep)
