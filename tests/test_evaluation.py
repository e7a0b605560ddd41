"""The three-splitting evaluation in closed form (``ThreeSplittingBCD.evaluate``): every metric equals what autograd
and the network's own forward pass give (``Trainer.evaluate`` over ``BCDScheme.objective``), for every catalogue
loss and activation, both kinds of network, with and without ridge terms, over one column chunk and several."""

from __future__ import annotations

import math

import pytest
import torch

from bcd_cli.data.loaders import Dataset
from bcd_cli.engine import chunking
from bcd_cli.engine.trainer import Trainer

from bench import Case, build_case

pytestmark = pytest.mark.usefixtures("one_thread")

PLAIN, RESIDUAL = [13, 11, 9, 4], [13, 9, 9, 9, 4]
RIDGES = ("reg@reg_w=l2", "reg_w.lam=0.3", "reg@reg_v=l2", "reg_v.lam=0.2")


def trained(scheme: str, sizes: list[int], *extra: str, n: int = 300, sweeps: int = 2):
    """A float64 trainer on random data, moved away from its forward-pass start by a few sweeps."""
    trainer, data, _ = build_case(Case(scheme, sizes, n, n_test=70, dtype="float64", extra=extra))
    for _ in range(sweeps):
        trainer.sweep()
    return trainer, data


def assert_same_metrics(closed: dict[str, float], reference: dict[str, float]) -> None:
    assert closed.keys() == reference.keys()
    for key, value in reference.items():
        if math.isnan(value):
            assert math.isnan(closed[key]), key
        else:
            assert closed[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key


@pytest.mark.parametrize("scheme, sizes", [("three", PLAIN), ("resnet", RESIDUAL)])
@pytest.mark.parametrize(
    "extra",
    [
        (),
        RIDGES,
        ("loss=cross_entropy",),
        ("loss=logistic", "alpha=2"),
        ("loss=exponential",),
        ("loss=hinge",),
        ("loss=square", "loss.reduction=mean"),
        ("act=tanh", "loss=cross_entropy", "loss.reduction=mean"),
        ("act=sigmoid",),
        ("act=leaky_relu",),
        ("act=softplus", *RIDGES),
        ("act=linear",),
    ],
    ids=lambda e: " ".join(e) or "defaults",
)
def test_closed_form_matches_autograd(scheme, sizes, extra, monkeypatch):
    monkeypatch.setattr(chunking, "EVALUATION_CHUNK_MIN_COLUMNS", 64)  # 300 samples in 5 chunks
    trainer, data = trained(scheme, sizes, *extra)
    assert len(chunking.column_chunks(trainer.X.shape[1])) > 1
    closed, reference = trainer.evaluate(data, grad_norm=True), Trainer.evaluate(trainer, data, grad_norm=True)
    assert_same_metrics(closed, reference)
    assert math.isfinite(closed["grad_norm"]) and closed["grad_norm"] > 0


@pytest.mark.parametrize("scheme, sizes", [("three", PLAIN), ("resnet", RESIDUAL)])
def test_one_chunk_and_many_agree(scheme, sizes, monkeypatch):
    trainer, data = trained(scheme, sizes, n=200)
    assert len(chunking.column_chunks(200)) == 1
    whole = trainer.evaluate(data)
    monkeypatch.setattr(chunking, "EVALUATION_CHUNK_MIN_COLUMNS", 16)
    monkeypatch.setattr(chunking, "EVALUATION_CHUNKS", 7)
    assert len(chunking.column_chunks(200)) == 7
    assert_same_metrics(trainer.evaluate(data), whole)


def test_gradient_changes_with_each_block():
    """Every block enters the norm: moving any one block away from the current point changes it."""
    trainer, data = trained("three", PLAIN)
    base = trainer.evaluate(data)["grad_norm"]
    blocks = trainer.blocks()
    for k, block in enumerate(blocks):
        saved = block.clone()
        block.add_(torch.randn_like(block, generator=torch.Generator().manual_seed(k)), alpha=0.3)
        moved, reference = trainer.evaluate(data), Trainer.evaluate(trainer, data)
        assert moved["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-10), k
        assert moved["grad_norm"] != pytest.approx(base, rel=1e-6), k
        block.copy_(saved)


@pytest.mark.parametrize("reg", [("reg@reg_w=l1", "reg_w.lam=0.01"), ("reg@reg_v=nonneg",)])
def test_a_nondifferentiable_regularizer_gives_no_gradient_norm(reg):
    trainer, data = trained("three", PLAIN, *reg)
    closed, reference = trainer.evaluate(data), Trainer.evaluate(trainer, data)
    assert math.isnan(closed["grad_norm"])
    assert_same_metrics(closed, reference)


def test_without_gradient_norm_the_rest_is_the_same():
    trainer, data = trained("three", PLAIN)
    closed = trainer.evaluate(data, grad_norm=False)
    assert math.isnan(closed["grad_norm"])
    assert_same_metrics(closed, Trainer.evaluate(trainer, data, grad_norm=False))


def test_samples_other_than_the_trainers_are_run_through_the_network():
    """The network's train metrics come from ``data``; when those are not the trainer's own samples (a copy
    here), the shared first pre-activation cannot be used, and the result is the same."""
    trainer, data = trained("three", PLAIN)
    copied = Dataset(
        data.name, data.X_train.clone(), data.Y_train, data.y_train, data.X_test, data.Y_test, data.y_test,
        n_classes=data.n_classes,
    )  # fmt: skip
    assert copied.X_train is not trainer.X
    assert_same_metrics(trainer.evaluate(copied), trainer.evaluate(data))
