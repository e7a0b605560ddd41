"""Data-parallel BCD under torchrun: two gloo processes give the single-process run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from bcd_cli.errors import ConfigError
from bcd_cli.run import spec as config
from bcd_cli.run.records import METRICS_FILE
from bcd_cli.run.resume import read_checkpoint
from tests.conftest import compose_config

pytestmark = pytest.mark.process  # torchrun starts the processes of a data-parallel run

# float64, so that the comparison tests the reductions and not the rounding of their order; an odd number of
# samples, so that the two shards differ in size
RUN = ["debug=fast", "data.n_train=301", "data.n_test=101", "dtype=float64"]
MLP = ["model.widths=[24,24]"]


def torchrun(*args: str, cwd: Path, processes: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    return subprocess.run([*command, "-m", "bcd_cli", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def assert_close_runs(folder: Path, reference: Path, rtol: float = 1e-5) -> None:
    """Every metric (but the timing) and every block of the final checkpoint agree to ``rtol``."""
    got = pd.read_csv(folder / METRICS_FILE).drop(columns="seconds")
    want = pd.read_csv(reference / METRICS_FILE).drop(columns="seconds")
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=rtol, atol=1e-12)
    a, b = read_checkpoint(folder), read_checkpoint(reference)
    assert a is not None and b is not None and a.sweep == b.sweep
    assert a.trainer.keys() == b.trainer.keys()
    for kind in ("W", "b", "V", "U"):
        for x, y in zip(a.trainer.get(kind, []), b.trainer.get(kind, []), strict=True):
            torch.testing.assert_close(x, y, rtol=rtol, atol=1e-9)


@pytest.mark.parametrize(
    "model",
    [MLP, pytest.param(["model=resnet", "model.width=24", "model.depth=2"], marks=pytest.mark.slow)],
    ids=["three", "resnet"],
)
def test_two_gloo_processes_match_one_process(tmp_path: Path, model: list[str], bcd_train):
    args = [*RUN, *model, "epochs=3"]
    code, stderr = bcd_train(*args, "hydra.run.dir=one", cwd=tmp_path)  # the reference: one process, this one
    assert code == 0, stderr
    two = torchrun(*args, "hydra.run.dir=two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    assert_close_runs(tmp_path / "two", tmp_path / "one")
    # the checkpoint holds every sample's V and U, gathered from both ranks' shards (150 + 151 columns)
    checkpoint = read_checkpoint(tmp_path / "two")
    assert checkpoint is not None
    layers = len(checkpoint.trainer["W"])  # every V and U block holds all 301 samples' columns
    assert [t.shape[1] for kind in ("V", "U") for t in checkpoint.trainer[kind]] == [301] * (2 * layers)
    assert two.stdout.count("final test accuracy") == 1  # rank 0 alone reports
    assert not (tmp_path / "outputs").exists()


def test_a_data_parallel_checkpoint_resumes_in_one_process(tmp_path: Path, bcd_train):
    two = torchrun(*RUN, *MLP, "epochs=2", "hydra.run.dir=two", cwd=tmp_path)
    assert two.returncode == 0, two.stderr
    code, stderr = bcd_train("resume=two", "epochs=4", cwd=tmp_path)
    assert code == 0, stderr
    assert bcd_train(*RUN, *MLP, "epochs=4", "hydra.run.dir=one", cwd=tmp_path)[0] == 0
    assert_close_runs(tmp_path / "two", tmp_path / "one")


@pytest.mark.parametrize(
    ("overrides", "key"),
    [(["splitting=two"], "splitting"), (["trainer=sgd"], "trainer"), (["loss.reduction=mean"], "loss.reduction")],
)
def test_what_data_parallel_runs_refuse(overrides: list[str], key: str, monkeypatch):
    monkeypatch.setattr(config, "world_size", lambda: 2)
    with pytest.raises(ConfigError) as err:
        config.validate(compose_config(*overrides))
    assert err.value.key == key and "torchrun" in str(err.value)
