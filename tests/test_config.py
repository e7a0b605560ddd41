"""Every option of every config group composes and trains; every catalogue entry is reachable from conf/."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcd_cli.run.records import METRIC_COLUMNS
from bcd_cli.run.train import run
from tests.conftest import CONF, TINY, compose_config, requires_cuda
from tests.test_data_files import blobs, write_cifar, write_csv, write_npz

# a config group whose options are placed at other keys of the config (defaults list `group@key`)
PACKAGED = {"reg": ("reg_w", "reg_v")}
# options that only make sense together with others
COMPANIONS = {"splitting=resnet": ["model=resnet"]}
RESNET_TINY = ["model.width=12", "model.depth=2"]


def tiny_overrides(*overrides: str) -> list[str]:
    """TINY and ``overrides``, with the ResNet's size keys in place of the MLP's widths when model=resnet."""
    overrides = [o for override in overrides for o in (override, *COMPANIONS.get(override, []))]
    tiny = [o for o in TINY if not any(o.split("=")[0] == ov.split("=")[0] for ov in overrides)]
    if "model=resnet" in overrides:
        tiny = [o for o in tiny if not o.startswith("model.widths")] + RESNET_TINY
    return [*tiny, *overrides]


# the groups whose options choose code that only a run executes (a data loader, a tracker, a trainer's loop): each
# of their options trains; the other groups' options (loss, act, reg: catalogue entries that tests/test_schemes.py
# runs through every scheme; model, splitting: test_model_selects_its_scheme trains each; device, debug) are
# composed and validated, which builds every catalogue entry as a run does
TRAINED = ("data", "logger", "trainer")


def all_options(trained: bool | None = None) -> list:
    """One override per option of every group under conf/ (hydra/ excluded); only those of the TRAINED groups
    (``trained``), or only the others (``not trained``)."""
    params = []
    for group in sorted(p for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment")):
        if trained is not None and (group.name in TRAINED) != trained:
            continue
        for option in sorted(group.glob("*.yaml")):
            for key in PACKAGED.get(group.name, (None,)):
                override = f"{group.name}@{key}={option.stem}" if key else f"{group.name}={option.stem}"
                marks = [pytest.mark.gpu, requires_cuda] if override == "device=cuda" else []
                params.append(pytest.param(override, id=override, marks=marks))
    return params


def test_every_group_is_walked():
    groups = {p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment")}
    assert {"data", "model", "splitting", "loss", "act", "reg", "device", "trainer"} <= groups
    assert len(all_options()) >= 15


@pytest.fixture(scope="module")
def data_files(tmp_path_factory, idx_folder: Path) -> dict[str, list[str]]:
    """The overrides that point each data option but digits at a small generated file or folder of its kind."""
    folder = tmp_path_factory.mktemp("data_files")
    X, y = blobs(240)  # 180 training and 60 test samples: what debug=fast takes
    return {
        "data=mnist": [f"data.root={idx_folder}"],
        "data=fashion_mnist": [f"data.root={idx_folder}"],
        "data=cifar10": [f"data.root={write_cifar(folder, per_batch=60)}"],
        "data=npz": [f"data.path={write_npz(folder / 'd.npz', X=X, y=y)}"],
        "data=csv": [f"data.path={write_csv(folder / 'd.csv', n=240)}", "data.target=kind"],
    }


@pytest.mark.parametrize("override", all_options(trained=True))
def test_option_composes_and_trains(override: str, data_files: dict[str, list[str]], tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # what a run writes beside its folder (logger=mlflow: outputs/mlflow.db) stays here
    extra = data_files.get(override, [])
    cfg = compose_config(*tiny_overrides(override, *extra))
    result = run(cfg, tmp_path)
    metrics = result.metrics
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["sweep"].tolist() == [0, 1, 2]
    assert metrics["objective"].iloc[-1] < metrics["objective"].iloc[0]
    for name in ("metrics.csv", "summary.json", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0


@pytest.mark.parametrize("override", all_options(trained=False))
def test_option_composes_and_validates(override: str):
    from omegaconf import OmegaConf

    from bcd_cli.run.spec import validate

    cfg = compose_config(*tiny_overrides(override))
    validate(cfg)  # every key checked, the catalogue entries built as a run builds them
    group, _, option = override.partition("=")
    group, _, key = group.partition("@")
    entry = OmegaConf.load(CONF / group / f"{option}.yaml")
    if "_target_" in entry:  # a catalogue entry: the option's own, at its key
        assert cfg[key or group]._target_ == entry._target_


def test_options_are_split_between_training_and_validating():
    assert len(all_options(trained=True)) + len(all_options(trained=False)) == len(all_options())
    assert {p.values[0].split("=")[0] for p in all_options(trained=True)} == set(TRAINED)


def test_rho_defaults_to_gamma(tmp_path: Path):
    result = run(compose_config(*TINY, "gamma=3"), tmp_path / "a")
    assert result.algorithm.rho == result.algorithm.gamma == 3.0
    result = run(compose_config(*TINY, "gamma=3", "rho=0.5"), tmp_path / "b")
    assert (result.algorithm.gamma, result.algorithm.rho) == (3.0, 0.5)


def test_catalogue_parameters_reach_the_entries(tmp_path: Path):
    cfg = compose_config(*TINY, "reg@reg_w=l2", "reg_w.lam=0.25", "loss.reduction=mean", "act=linear")
    algorithm = run(cfg, tmp_path).algorithm
    assert algorithm.reg_w.ridge == 0.25
    assert algorithm.loss.reduction == "mean"
    assert type(algorithm.net.acts[0]).__name__ == "Linear"


@pytest.mark.parametrize(
    "overrides, scheme, residual",
    [
        (["model=resnet"], "ResNetBCD", [False, True, True, False]),
        (["model=resnet", "splitting=resnet"], "ResNetBCD", [False, True, True, False]),
        (["splitting=two"], "TwoSplittingBCD", [False, False]),
        (["splitting=three"], "ThreeSplittingBCD", [False, False]),
    ],
)
def test_model_selects_its_scheme(overrides, scheme, residual, tmp_path: Path):
    result = run(compose_config(*tiny_overrides(*overrides)), tmp_path)
    assert type(result.algorithm).__name__ == scheme
    assert result.summary["method"] == result.algorithm.name
    assert result.net.residual == residual
    if scheme == "ResNetBCD":
        assert result.net.sizes == [64, 12, 12, 12, 10]


def test_trainer_inner_solver_settings_reach_the_scheme(tmp_path: Path):
    cfg = compose_config(*TINY, "trainer.inner_iters=7", "trainer.inner_tol=0.01", "trainer.alpha_check=raise")
    algorithm = run(cfg, tmp_path).algorithm
    assert (algorithm.inner.iters, algorithm.inner.tol) == (7, 0.01)


def readme_examples() -> list:
    """The overrides of every ``bcd-train ...`` line of the README's usage block (multirun, --help, cuda excluded)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("## Use", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    params = []
    for line in block.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] != ["bcd-train"] or {"-m", "--help"} & set(words) or "device=cuda" in words:
            continue
        params.append(pytest.param(words[1:], id=" ".join(words[1:]) or "default"))
    return params


@pytest.mark.parametrize("overrides", readme_examples())
def test_readme_examples_compose_and_validate(overrides: list[str], idx_folder: Path):
    from bcd_cli.run.spec import validate

    overrides = [f"data.root={idx_folder}" if o.startswith("data.root=") else o for o in overrides]
    validate(compose_config(*overrides))


def test_readme_has_examples_of_every_scheme():
    used = " ".join(" ".join(p.values[0]) for p in readme_examples())
    assert "splitting=two" in used and "model=resnet" in used and "splitting=three" in used


def test_figure1_preset_is_the_papers_setting():
    cfg = compose_config("experiment=figure1")
    assert cfg.data.name == "mnist" and list(cfg.model.widths) == [600] * 10
    assert (cfg.model.init_std, cfg.model.init_bias, cfg.gamma, cfg.alpha) == (0.01, 0.1, 1.0, 1.0)
    assert cfg.loss._target_.endswith("Square") and cfg.loss.reduction == "sum" and cfg.act._target_.endswith("ReLU")
    assert cfg.splitting._target_.endswith("ThreeSplittingBCD")
    sgd = compose_config("experiment=figure1", "trainer=sgd")
    assert (sgd.trainer.lr, sgd.trainer.batch_size) == (0.001, 512)
    # command-line overrides win over the preset
    assert compose_config("experiment=figure1", "epochs=3", "data=fashion_mnist").data.name == "fashion_mnist"


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF / "experiment").glob("*.yaml")))
def test_every_experiment_preset_runs_a_sweep(preset: str, idx_folder: Path, tmp_path: Path):
    cfg = compose_config(
        f"experiment={preset}", f"data.root={idx_folder}", "data.n_train=100", "data.n_test=50", "epochs=1",
        "device=cpu",
    )  # fmt: skip
    assert run(cfg, tmp_path).metrics["sweep"].tolist() == [0, 1]


@pytest.mark.parametrize(
    "overrides, solve, state",
    [
        ([], "float64", "float32"),  # the V blocks' right-hand sides in the run's dtype
        (["trainer.state_solve_dtype=float64"], "float64", "float64"),
        (["trainer.solve_dtype=float32"], "float32", "float32"),
        (["dtype=float64"], "float64", "float64"),
    ],
)
def test_solve_dtypes_reach_the_scheme(overrides, solve, state, tmp_path: Path):
    import torch

    algorithm = run(compose_config(*TINY, "epochs=1", *overrides), tmp_path).algorithm
    assert (algorithm.solve_dtype, algorithm.state_solve_dtype) == (getattr(torch, solve), getattr(torch, state))
