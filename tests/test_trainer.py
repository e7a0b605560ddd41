"""The Trainer interface: every trainer (three, two, resnet, sgd, adam) sweeps, evaluates, and continues bit-identically
from its state_dict; every trainer's settings refuse a bad value naming its config key."""

from __future__ import annotations

import io
import math

import pytest
import torch

from bcd_cli.data.loaders import load_data
from bcd_cli.engine.trainer import Trainer
from bcd_cli.errors import ConfigError, ParameterError
from bcd_cli.run.spec import DTYPES, resolve, validate
from bcd_cli.run.train import build_trainer
from tests.conftest import TINY, compose_config

CPU = torch.device("cpu")
RESNET = [o for o in TINY if not o.startswith("model.widths")] + ["model=resnet", "model.width=8", "model.depth=1"]
TRAINERS = {
    "three": [*TINY, "splitting=three"],
    "two": [*TINY, "splitting=two"],
    "resnet": RESNET,
    "sgd": [*TINY, "trainer=sgd", "trainer.batch_size=32", "trainer.momentum=0.5"],
    "adam": [*TINY, "trainer=adam", "trainer.batch_size=32", "trainer.lr=0.01"],
}


def built(name: str):
    cfg = compose_config(*TRAINERS[name])
    spec = resolve(cfg)
    data = load_data(spec.data, dtype=DTYPES[cfg.dtype], device=CPU)
    trainer = build_trainer(spec, data)
    return trainer, data


def tensors(state) -> list[torch.Tensor]:
    """Every tensor of a state_dict, in a fixed order (the optimizer's and the generator's included)."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state, key=str) for t in tensors(state[key])]
    if isinstance(state, list | tuple):
        return [t for item in state for t in tensors(item)]
    return []


@pytest.mark.parametrize("name", list(TRAINERS))
def test_every_trainer_sweeps_evaluates_and_continues_bit_identically_from_its_state(name: str, one_thread):
    trainer, data = built(name)
    assert isinstance(trainer, Trainer) and trainer.name == name
    row = trainer.evaluate(data, grad_norm=True)
    parts = ("loss", "penalty_v", "penalty_u", "reg_w", "reg_v")
    assert set(row) == {"objective", *parts, "grad_norm", "train_loss", "train_acc", "test_acc"}
    assert row["objective"] == pytest.approx(sum(row[p] for p in parts), rel=1e-12)
    assert math.isnan(trainer.evaluate(data, grad_norm=False)["grad_norm"])
    assert trainer.nonfinite_block() is None and trainer.summary_fields()["method"] == name
    for _ in range(2):
        assert trainer.sweep() > 0
    saved = io.BytesIO()
    torch.save(trainer.state_dict(), saved)  # as a checkpoint holds it
    D = trainer.sweep()
    after = trainer.evaluate(data)
    fresh, _ = built(name)
    saved.seek(0)
    fresh.load_state_dict(torch.load(saved, weights_only=True))
    assert fresh.sweep() == D
    assert fresh.evaluate(data) == after
    for a, b in zip(tensors(fresh.state_dict()), tensors(trainer.state_dict()), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", ["three", "sgd"])
def test_a_state_of_another_network_is_refused(name: str):
    trainer, _ = built(name)
    state = trainer.state_dict()
    state["W"] = [w[:, :-1] for w in state["W"]]
    with pytest.raises(ValueError, match="do not fit"):
        built(name)[0].load_state_dict(state)


@pytest.mark.parametrize(
    "name, override, key, allowed",
    [
        ("three", "gamma=0", "gamma", "a number > 0"),
        ("two", "alpha=-1", "alpha", "a number > 0"),
        ("resnet", "rho=0", "rho", "a number > 0, or null"),
        ("three", "trainer.inner_iters=0", "trainer.inner_iters", "an integer >= 1"),
        ("three", "trainer.inner_tol=-1", "trainer.inner_tol", "a number >= 0"),
        ("three", "trainer.alpha_check=maybe", "trainer.alpha_check", "one of warn, raise"),
        ("three", "trainer.solve_dtype=half", "trainer.solve_dtype", "one of float32, float64"),
        ("three", "trainer.solve_dtype=null", "trainer.solve_dtype", "one of float32, float64"),
        ("three", "trainer.state_solve_dtype=half", "trainer.state_solve_dtype", "float32, float64, or null"),
        ("sgd", "trainer.lr=-1", "trainer.lr", "a number > 0 (step size)"),
        ("sgd", "trainer.momentum=1", "trainer.momentum", "a number in [0, 1)"),
        ("sgd", "trainer.momentum=0 trainer.nesterov=true", "trainer.nesterov", "Nesterov needs momentum > 0"),
        ("adam", "trainer.batch_size=0", "trainer.batch_size", "an integer >= 1"),
        ("adam", "trainer.betas=[0.9]", "trainer.betas", "a list of two numbers in [0, 1)"),
        ("adam", "trainer.weight_decay=-1", "trainer.weight_decay", "a number >= 0"),
    ],
)
def test_bad_settings_raise_parameter_error_naming_the_key(name, override, key, allowed):
    """The trainer checks its own settings (no data, no network) and names the key as the config spells it."""
    cfg = compose_config(*TRAINERS[name], *override.split())
    with pytest.raises(ParameterError) as refused:
        validate(cfg)
    assert refused.value.key == key and allowed in refused.value.allowed
    assert isinstance(refused.value, ConfigError) and str(refused.value).startswith(f"{key}=")
    with pytest.raises(ConfigError, match="^" + key.replace(".", r"\.") + "="):
        validate(cfg)


@pytest.mark.parametrize(
    ("name", "override", "fix"),
    [
        ("three", "trainer.inner_iters=2e1", "trainer.inner_iters=20"),
        ("sgd", "trainer.batch_size=1e3", "trainer.batch_size=1000"),
    ],
)
def test_a_whole_float_for_an_integer_is_refused_with_how_to_write_it(name, override, fix):
    """Under its config key, for a BCD scheme and a baseline alike, the refusal ends with the value to write."""
    cfg = compose_config(*TRAINERS[name], override)
    with pytest.raises(ParameterError) as refused:
        validate(cfg)
    assert str(refused.value).endswith(f"written as an integer: {fix}")


def test_a_trainer_built_directly_refuses_a_bad_setting_by_its_field():
    from bcd_cli.catalogue.losses import Square
    from bcd_cli.catalogue.regularizers import NoReg
    from bcd_cli.engine.baselines import GradientBaseline
    from bcd_cli.engine.network import MLP
    from bcd_cli.engine.three_splitting import ThreeSplittingBCD

    net = MLP.init([3, 4, 2], torch.relu, init_std=0.1, init_bias=0.1, seed=0, dtype=torch.float64, device=CPU)
    X, Y = torch.rand(3, 5, dtype=torch.float64), torch.eye(2, 5, dtype=torch.float64)
    with pytest.raises(ParameterError, match=r"^lr=0 is invalid"):
        GradientBaseline(net, X, Y, loss=Square(), reg_w=NoReg(), optimizer="sgd", lr=0)
    with pytest.raises(ParameterError, match=r"^inner_iters=2\.0 is invalid: .*written as an integer: inner_iters=2"):
        ThreeSplittingBCD(net, X, Y, loss=Square(), reg_w=NoReg(), reg_v=NoReg(), gamma=1, alpha=1, inner_iters=2.0)
