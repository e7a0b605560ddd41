"""The run spec: the config is read once, at the door, and everything below it works on typed settings."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest
import torch

import bcd_cli.run.spec as spec_module
from bcd_cli.catalogue.activations import ReLU, Tanh
from bcd_cli.catalogue.losses import Square
from bcd_cli.engine.baselines import BaselineSettings, GradientBaseline
from bcd_cli.engine.scheme import BCDSettings
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.errors import ConfigError
from bcd_cli.run.spec import RunSpec, resolve
from bcd_cli.run.train import run
from tests.conftest import TINY, compose_config

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bcd_cli"
CONFIG_LIBRARIES = ("omegaconf", "hydra")


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("folder", ["engine", "catalogue", "data"])
def test_the_engine_the_catalogue_and_the_data_read_no_config(folder: str):
    offenders = [
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((PACKAGE / folder).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module.split(".")[0] in CONFIG_LIBRARIES
    ]
    assert not offenders, "modules below the run spec importing a config library:\n" + "\n".join(offenders)


def test_nothing_below_the_door_takes_a_dictconfig():
    """In the run package only the door (spec.py) and the saved-config reader (resume.py) name DictConfig, and
    train.py only in ``run``, the function the command calls."""
    found = []
    for path in sorted((PACKAGE / "run").glob("*.py")):
        if path.name in ("spec.py", "resume.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if path.name == "train.py" and node.name == "run":
                continue
            annotations = [a.annotation for a in [*node.args.args, *node.args.kwonlyargs] if a.annotation is not None]
            if any("DictConfig" in ast.unparse(a) for a in annotations):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not found, "functions below the door taking a DictConfig:\n" + "\n".join(found)


def test_no_trainer_is_probed_for_its_type_outside_the_trainer_classes():
    """``hasattr`` on a trainer, or ``isinstance`` against a trainer class, is a question the trainer's class
    should answer itself."""
    names = {"trainer", "algorithm", "method"}
    classes = ("Trainer", "BCDScheme", "SplittingBCD", "ResNetBCD", "GradientBaseline")
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "scripts").glob("*.py")]):
        if "engine" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and len(node.args) == 2
                and (
                    (node.func.id == "hasattr" and ast.unparse(node.args[0]).split(".")[-1] in names)
                    or (node.func.id == "isinstance" and any(c in ast.unparse(node.args[1]) for c in classes))
                )
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, "\n".join(found)


def test_the_spec_holds_typed_settings_and_built_entries():
    spec = resolve(compose_config(*TINY, "act=tanh", "gamma=2", "alpha=3", "dtype=float64"))
    assert isinstance(spec, RunSpec)
    assert spec.method.trainer is ThreeSplittingBCD and isinstance(spec.method.settings, BCDSettings)
    assert (spec.method.settings.gamma, spec.method.settings.alpha) == (2.0, 3.0)
    assert spec.method.settings.dtypes() == (torch.float64, torch.float64)
    assert isinstance(spec.catalogue.act, Tanh) and isinstance(spec.catalogue.loss, Square)
    assert spec.dtype is torch.float64 and spec.epochs == 2 and spec.model.widths == (16,)
    assert spec.model.architecture(64, 10) == ([64, 16, 10], [False, False])
    assert spec.record["gamma"] == 2.0 and "epochs" not in spec.record and "resume" not in spec.record
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.epochs = 3  # type: ignore[misc]


def test_a_baseline_spec_and_a_resnet_spec():
    adam = resolve(compose_config(*TINY, "trainer=adam", "trainer.lr=0.01", "trainer.betas=[0.8,0.9]"))
    assert adam.method.trainer is GradientBaseline and adam.method.splitting is None
    assert adam.method.settings == BaselineSettings(optimizer="adam", lr=0.01, batch_size=512, betas=(0.8, 0.9))
    resnet = resolve(compose_config(*TINY, "model=resnet", "model.width=8", "model.depth=2"))
    assert resnet.method.splitting == "three"
    assert resnet.model.architecture(64, 10) == ([64, 8, 8, 8, 10], [False, True, True, False])


def test_a_run_builds_each_catalogue_entry_once(tmp_path: Path, monkeypatch):
    """The door builds the loss, the activation and both regularizers; the memory estimate, the network and the
    trainer receive those objects."""
    built = []
    instantiate = spec_module.instantiate

    def counted(node, *args, **kwargs):
        entry = instantiate(node, *args, **kwargs)
        built.append(entry)
        return entry

    monkeypatch.setattr(spec_module, "instantiate", counted)
    result = run(compose_config(*TINY, "device=cpu"), tmp_path / "run")
    assert sorted(type(entry).__name__ for entry in built) == ["NoReg", "NoReg", "ReLU", "Square"]
    loss, act, reg_w, reg_v = built
    assert isinstance(act, ReLU) and result.net.acts[0] is act
    assert result.algorithm.loss is loss and result.algorithm.reg_w is reg_w and result.algorithm.reg_v is reg_v


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.inner_iters=0", "trainer.inner_iters=0 is invalid: an integer >= 1"),
        ("rho=-1", "rho=-1 is invalid: a number > 0"),
        ("logger.trackers=[wandb]", "logger.trackers=['wandb'] is invalid"),
        ("device.matmul_precision=low", "device.matmul_precision='low' is invalid"),
    ],
)
def test_the_door_refuses_in_one_line_naming_the_key(override: str, message: str):
    with pytest.raises(ConfigError) as refused:
        resolve(compose_config(*TINY, override))
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
