"""The starting point (docs/math.md §1): model.init=normal (the paper's Remark 1) and scaled (variance-preserving)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bcd_cli.catalogue.activations import Linear, ReLU
from bcd_cli.engine.network import MLP
from bcd_cli.run.records import METRICS_FILE
from bcd_cli.run.train import run
from tests.conftest import TINY, catalogue_entries, compose_config

CPU = torch.device("cpu")


def make(sizes, init: str, *, act=None, std: float = 0.01, bias: float = 0.1, seed: int = 0, residual=None) -> MLP:
    return MLP.init(
        sizes, act or ReLU(), init=init, init_std=std, init_bias=bias, seed=seed, dtype=torch.float64, device=CPU,
        residual=residual,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_normal_is_the_papers_draw_bit_for_bit(dtype: torch.dtype):
    """init=normal: one generator seeded with the seed, randn(d_out, d_in) in float64 layer after layer, times
    init_std, then cast; every bias init_bias. Runs of every version with this draw start from the same weights."""
    sizes, std, seed = [7, 5, 4, 3], 0.03, 11
    net = MLP.init(sizes, ReLU(), init="normal", init_std=std, init_bias=-0.2, seed=seed, dtype=dtype, device=CPU)
    gen = torch.Generator().manual_seed(seed)
    for l, (d_in, d_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        want = (torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) * std).to(dtype)
        assert torch.equal(net.W[l], want)
        assert torch.equal(net.b[l], torch.full((d_out,), -0.2, dtype=dtype))
    default = MLP.init(sizes, ReLU(), init_std=std, init_bias=-0.2, seed=seed, dtype=dtype, device=CPU)
    assert all(torch.equal(a, b) for a, b in zip(default.W, net.W, strict=True)), "normal is MLP.init's default"


def test_scaled_draws_from_the_same_generator_with_each_layers_std():
    """init=scaled: the same sequence of draws, each layer times g / sqrt(fan_in) instead of init_std."""
    sizes = [9, 6, 4]
    net = make(sizes, "scaled", std=123.0)  # init_std is not used
    gen = torch.Generator().manual_seed(0)
    for l, g in enumerate([math.sqrt(2), 1.0]):  # ReLU's gain, then the output layer's identity
        want = torch.randn(sizes[l + 1], sizes[l], generator=gen, dtype=torch.float64) * (g / math.sqrt(sizes[l]))
        assert torch.equal(net.W[l], want)
    assert all(torch.equal(b, torch.full_like(b, 0.1)) for b in net.b), "init_bias applies to scaled as well"


def test_init_scale_multiplies_every_scaled_draw_and_leaves_normal_alone():
    sizes, scale = [9, 6, 4], 0.37
    base, scaled = make(sizes, "scaled"), MLP.init(sizes, ReLU(), init="scaled", init_std=0.01, init_bias=0.1, seed=0,
                                                   dtype=torch.float64, device=CPU, init_scale=scale)  # fmt: skip
    for w, v in zip(base.W, scaled.W, strict=True):
        torch.testing.assert_close(v, scale * w, rtol=1e-15, atol=0)
    normal = MLP.init(sizes, ReLU(), init="normal", init_std=0.01, init_bias=0.1, seed=0, dtype=torch.float64,
                      device=CPU, init_scale=scale)  # fmt: skip
    assert all(torch.equal(a, b) for a, b in zip(normal.W, make(sizes, "normal").W, strict=True))


def test_scaled_std_per_layer_is_gain_over_root_fan_in():
    """On layers of 360,000 weights the sample std is within 1% of g / sqrt(fan_in) (its relative error is about
    1 / sqrt(2 * 360000) = 0.1%); the output layer (the identity, gain 1) has its own fan-in."""
    sizes = [900, 400, 600, 10]
    net = make(sizes, "scaled")
    for l, g in enumerate([math.sqrt(2), math.sqrt(2), 1.0]):
        want = g / math.sqrt(sizes[l])
        tol = 0.01 if l < 2 else 0.05  # the output layer has 6,000 weights: relative error about 1%
        assert net.W[l].std().item() == pytest.approx(want, rel=tol), l
        assert abs(net.W[l].mean().item()) < 3 * want / math.sqrt(net.W[l].numel())


def test_every_catalogue_activation_has_a_gain_and_torchs_where_torch_has_one():
    """Each conf/act entry has init_gain(); where torch.nn.init.calculate_gain knows the function, the same value."""
    torch_names = {"linear": "linear", "relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
    for name, act in catalogue_entries("act").items():
        gain = act.init_gain()
        assert isinstance(gain, float) and 0 < gain < 3, name
        if name in torch_names:
            assert gain == torch.nn.init.calculate_gain(torch_names[name]), name
        if name == "leaky_relu":
            assert gain == torch.nn.init.calculate_gain("leaky_relu", act.slope)
    assert Linear().init_gain() == 1.0


def forward_variances(net: MLP, X: torch.Tensor) -> list[float]:
    """The variance of the entries of each V[l], l = 0..N-1 (the input and every hidden layer's output)."""
    return [v.var().item() for v in net.forward_states(X)[1][:-1]]


def test_scaled_keeps_the_signal_of_a_deep_relu_net_and_the_papers_draw_loses_it():
    """A real forward pass through ten ReLU layers of 600: with scaled, every hidden layer's variance is within a
    factor 3 of the input's (measured 0.74-1.6 with bias 0.1 against 1.0); with normal 0.01 each layer divides the
    signal by about 0.01^2 * 600 / 2 = 0.03, so the last layer's variance is below 1e-3 of the input's (measured
    7e-4, what is left being the bias's spread over the units, the same for every sample) and each unit's variance
    over the samples, what tells the samples apart, below 1e-9 (measured 3e-13)."""
    X = torch.randn(600, 400, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sizes = [600] * 11 + [10]
    scaled = forward_variances(make(sizes, "scaled"), X)
    assert len(scaled) == 11 and scaled[0] == pytest.approx(1.0, rel=0.05)
    assert all(scaled[0] / 3 < v < 3 * scaled[0] for v in scaled[1:]), scaled
    normal = forward_variances(make(sizes, "normal", std=0.01), X)
    assert normal[-1] < 1e-3 * normal[0], normal
    last = make(sizes, "normal", std=0.01).forward_states(X)[1][10]
    assert last.var(dim=1).mean().item() < 1e-9


@pytest.mark.parametrize("depth", [2, 10, 50])
def test_residual_branches_are_divided_by_the_number_of_residual_layers(depth: int):
    """model=resnet with scaled: a residual layer's weights have std g / (sqrt(fan_in) L), L residual layers, so
    V's variance grows by a bounded factor whatever L (docs/math.md §1; measured on 300 units with bias 0.1: 1.7,
    1.4, 1.5 for L = 2, 10, 50); residual branches drawn with 1/sqrt(L) instead grow it by 2.6, 10 and 740, and
    without either by 4.8, 2e4 and 5e22."""
    width = 300
    sizes, residual = [width] * (depth + 2) + [10], [False] + [True] * depth + [False]
    net = make(sizes, "scaled", residual=residual)
    plain = make(sizes, "scaled")  # the same draws without residual layers
    for l in range(depth + 2):
        factor = 1 / depth if residual[l] else 1.0
        assert torch.allclose(net.W[l], plain.W[l] * factor, rtol=1e-15, atol=0), l
    X = torch.randn(width, 300, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    variances = forward_variances(net, X)
    growth = max(variances[2:]) / variances[1]  # over the residual layers, from layer 1's output on
    assert growth < 3, variances
    if depth == 50:
        for l in range(1, depth + 1):
            net.W[l] *= math.sqrt(depth)  # 1 / sqrt(L) instead of 1 / L
        assert forward_variances(net, X)[-1] / variances[1] > 30


def test_scaled_refuses_an_activation_without_a_gain_and_an_unknown_init():
    with pytest.raises(AttributeError):
        make([3, 4, 2], "scaled", act=torch.relu)  # a plain function has no init_gain
    make([3, 4, 2], "normal", act=torch.relu)  # normal needs none
    with pytest.raises(ValueError, match="normal, scaled"):
        make([3, 4, 2], "orthogonal")


# ---------------------------------------------------------------------------- through the CLI and its configs


def test_model_init_reaches_the_network(tmp_path: Path, monkeypatch):
    """The run's network starts from the draw model.init names: bit for bit Remark 1's with normal, and weights of
    std 0.5 sqrt(2) / sqrt(64) in layer 1 with scaled (digits: 64 features, ReLU, init_scale 0.5)."""
    drawn: list[list[torch.Tensor]] = []
    draw = MLP.init.__func__  # type: ignore[attr-defined]

    def spy(cls, *args, **kwargs):
        net = draw(cls, *args, **kwargs)
        drawn.append([w.clone() for w in net.W])
        return net

    monkeypatch.setattr(MLP, "init", classmethod(spy))
    for init in ("normal", "scaled"):
        run(compose_config(*TINY, f"model.init={init}", "epochs=1", "dtype=float64"), tmp_path / init)
    normal, scaled = drawn
    sizes = [64, 16, 10]
    assert all(torch.equal(a, b) for a, b in zip(normal, make(sizes, "normal", std=0.1).W, strict=True))
    # model=mlp's init_scale 0.5: half the variance-preserving draw
    assert all(torch.equal(a, 0.5 * b) for a, b in zip(scaled, make(sizes, "scaled").W, strict=True))
    assert scaled[0].std().item() == pytest.approx(0.5 * math.sqrt(2) / 8, rel=0.05)


def test_a_run_folder_saved_without_model_init_resumes_with_normal(tmp_path: Path, bcd_train):
    """A run folder from before model.init existed drew its weights by Remark 1: without a checkpoint it starts
    again from sweep 0 with init=normal and ends as a fresh normal run; with one, it continues as that run."""
    assert bcd_train(*TINY, "model.init=normal", "epochs=3", "hydra.run.dir=ref", cwd=tmp_path)[0] == 0
    assert bcd_train(*TINY, "model.init=normal", "epochs=2", "hydra.run.dir=old", cwd=tmp_path)[0] == 0
    shutil.copytree(tmp_path / "old", tmp_path / "old_checkpointed")  # the same run, twice
    for name, keep_checkpoint in (("old", False), ("old_checkpointed", True)):
        folder = tmp_path / name
        saved = folder / ".hydra" / "config.yaml"
        config = OmegaConf.load(saved)
        del config.model["init"]
        OmegaConf.save(config, saved)
        checkpoint = folder / "checkpoint.pt"
        if keep_checkpoint:
            raw = torch.load(checkpoint, weights_only=True)
            del raw["config"]["model"]["init"]
            torch.save(raw, checkpoint)
        else:
            checkpoint.unlink()
        code, stderr = bcd_train(f"resume={folder}", "epochs=3", cwd=tmp_path)
        assert code == 0, stderr
        got, want = (pd.read_csv(f / METRICS_FILE).drop(columns="seconds") for f in (folder, tmp_path / "ref"))
        pd.testing.assert_frame_equal(got, want, check_exact=True)
        assert "init" not in OmegaConf.load(saved).model


def test_the_shipped_test_run_folder_resumes_as_it_ran(tmp_path: Path, bcd_train):
    """tests/data/run (saved without model.init, metrics but no checkpoint) restarts with normal: its first row,
    the initial point, is the one it recorded."""
    folder = tmp_path / "run"
    shutil.copytree(Path(__file__).parent / "data" / "run", folder)
    recorded = pd.read_csv(folder / METRICS_FILE)
    assert "init" not in OmegaConf.load(folder / ".hydra" / "config.yaml").model
    code, stderr = bcd_train(f"resume={folder}", "epochs=2", cwd=tmp_path)
    assert code == 0, stderr
    got = pd.read_csv(folder / METRICS_FILE)
    for column in ("objective", "train_acc", "test_acc"):
        assert got[column].iloc[0] == pytest.approx(recorded[column].iloc[0], rel=1e-5), column


def test_defaults_are_the_measured_best_and_figure1_keeps_the_papers():
    """model=mlp: scaled with init_scale 0.5, within 0.01 of the best candidate on every data set and network of
    docs/defaults.md; model=resnet: scaled (0.971-0.980 on digits against normal 0.1's 0.967); experiment=figure1:
    Remark 1."""
    mlp, resnet = compose_config().model, compose_config("model=resnet").model
    assert (mlp.init, mlp.init_scale, mlp.init_bias) == ("scaled", 0.5, 0.1)
    assert (resnet.init, resnet.init_scale, resnet.init_bias) == ("scaled", 1.0, 0.1)
    paper = compose_config("experiment=figure1")
    assert (paper.model.init, paper.model.init_std, paper.model.init_bias) == ("normal", 0.01, 0.1)


@pytest.mark.parametrize("init", ["normal", "scaled"])
@pytest.mark.parametrize("model", ["mlp", "resnet"])
def test_each_init_composes_and_trains_with_each_model(model: str, init: str, tmp_path: Path):
    from tests.test_config import tiny_overrides

    result = run(compose_config(*tiny_overrides(f"model={model}", f"model.init={init}")), tmp_path)
    objective = result.metrics["objective"]
    assert result.metrics["sweep"].tolist() == [0, 1, 2] and objective.iloc[-1] < objective.iloc[0]
    assert result.net.residual == ([False, True, True, False] if model == "resnet" else [False, False])
