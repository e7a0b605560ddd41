"""The bcd-train command end to end: runs, multiruns, shipped configs, and bad input."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bcd_cli.run.records import METRIC_COLUMNS
from tests.conftest import TINY, compose_config, run_cli, write_idx


def run_folders(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("metrics.csv"))


@pytest.mark.process
def test_documented_command_runs_and_writes_the_run_folder(tmp_path: Path):
    proc = run_cli("loss=square", "act=relu", "splitting=three", *TINY, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [folder] = run_folders(tmp_path / "outputs")
    metrics = pd.read_csv(folder / "metrics.csv")
    assert list(metrics.columns) == METRIC_COLUMNS
    assert metrics["sweep"].tolist() == [0, 1, 2]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["sweeps"] == 2 and summary["device"] == "cpu"
    assert summary["final_test_acc"] == pytest.approx(metrics["test_acc"].iloc[-1])
    assert (folder / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (folder / ".hydra" / "config.yaml").is_file()
    assert "sweep 2:" in (folder / "train.log").read_text()
    # not a terminal: one plain line per sweep instead of a live bar
    assert "BCD sweep 0/2" in proc.stdout and "BCD sweep 2/2" in proc.stdout
    assert "\x1b[" not in proc.stdout.split("bcd-train")[0]  # no cursor control before the summary table
    assert "final test accuracy" in proc.stdout


def test_multirun_gives_one_folder_per_job(tmp_path: Path, bcd_train_output):
    sweep = f"hydra.sweep.dir={tmp_path / 'sweep'}"
    code, stdout, stderr = bcd_train_output("-m", "gamma=0.1,10", "alpha=1,5", *TINY, sweep, cwd=tmp_path)
    assert code == 0, stderr
    folders = run_folders(tmp_path / "sweep")
    assert len(folders) == 4
    assert all(f"BCD #{job} sweep 2/2" in stdout for job in range(4))  # plain lines, one job after another
    seen = set()
    for folder in folders:
        overrides = (folder / ".hydra" / "overrides.yaml").read_text()
        gamma = re.search(r"gamma=([\d.]+)", overrides).group(1)
        alpha = re.search(r"alpha=([\d.]+)", overrides).group(1)
        seen.add((gamma, alpha))
        assert len(pd.read_csv(folder / "metrics.csv")) == 3
    assert seen == {(g, a) for g in ("0.1", "10") for a in ("1", "5")}


def test_debug_fast_shrinks_any_run_and_the_command_line_wins_over_it():
    """debug=fast (conf/debug/fast.yaml): the values the tests' TINY runs count on, for each model and over a
    preset; any key given on the command line keeps the user's value."""
    cfg = compose_config("debug=fast")
    assert (cfg.data.n_train, cfg.data.n_test, list(cfg.model.widths), cfg.epochs) == (120, 60, [16], 2)
    assert (cfg.device.name, cfg.checkpoint.every) == ("cpu", 0)
    resnet = compose_config("debug=fast", "model=resnet")
    assert (resnet.model.width, resnet.model.depth) == (16, 1) and "widths" not in resnet.model
    figure1 = compose_config("debug=fast", "experiment=figure1", "trainer=sgd")
    assert (figure1.data.name, list(figure1.model.widths), figure1.epochs) == ("mnist", [16], 2)
    mine = compose_config("debug=fast", "epochs=5", "model.widths=[8,8]", "device=auto", "data.n_train=200")
    assert (mine.epochs, list(mine.model.widths), mine.device.name, mine.data.n_train) == (5, [8, 8], "auto", 200)
    plain = compose_config()
    assert plain.epochs == 40 and list(plain.model.widths) == [256, 256] and plain.data.n_train is None


BAD_INPUTS = [
    # (overrides, text the one error line must contain)
    (["act=foo"], ["act", "linear", "relu"]),
    (["gamma=0"], ["gamma=0", "> 0"]),
    (["alpha=-1"], ["alpha=-1", "> 0"]),
    (["rho=0"], ["rho=0", "> 0"]),
    (["gamma=abc"], ["gamma='abc'", "number"]),
    (["model.widths=[]"], ["model.widths=[]", "non-empty list of positive integers"]),
    (["model.widths=[16,0]"], ["model.widths=[16, 0]", "positive integers"]),
    (["epochs=0"], ["epochs=0", "integer >= 1"]),
    (["grad_norm=sometimes"], ["grad_norm='sometimes'", "true or false"]),
    (["device.matmul_precision=low"], ["device.matmul_precision='low'", "highest", "TF32"]),
    (["dtype=float16"], ["dtype='float16'", "float32, float64"]),
    (["loss.reduction=median"], ["loss.reduction='median'", "sum or mean"]),
    (["reg@reg_w=l2", "reg_w.lam=-1"], ["reg_w.lam=-1", ">= 0"]),
    (["data=mnist", "data.root=MISSING"], ["MISSING", "idx"]),
    (["data.n_train=0"], ["data.n_train=0"]),
    (["trainer.solve_dtype=half"], ["trainer.solve_dtype='half'", "float32, float64"]),
    (["trainer.state_solve_dtype=half"], ["trainer.state_solve_dtype='half'", "float32, float64", "null"]),
    (["model.init_std=-0.1"], ["model.init_std=-0.1", ">= 0"]),
    (["model.init=foo"], ["model.init='foo'", "normal, scaled"]),
    (["model.init_scale=0"], ["model.init_scale=0", "> 0"]),
    (["model=resnet", "splitting=two"], ["splitting='two'", "splitting=resnet", "Algorithm 3"]),
    (["splitting=resnet"], ["splitting='resnet'", "model=resnet"]),
    (["model=resnet", "model.depth=0"], ["model.depth=0", "integer >= 1"]),
    (["act=leaky_relu", "act.slope=1.5"], ["act.slope=1.5"]),
    (["act=softplus", "act.sharpness=0"], ["act.sharpness=0"]),
    (["loss=exponential", "loss.solver=prox_linear"], ["loss.solver='prox_linear'", "Lipschitz"]),
    (["loss=logistic", "loss.solver=newton"], ["loss.solver='newton'"]),
    (["reg@reg_v=box", "reg_v.lo=1", "reg_v.hi=0"], ["reg_v."]),
    (["trainer.alpha_check=maybe"], ["trainer.alpha_check='maybe'", "warn, raise"]),
    (["trainer.inner_iters=0"], ["trainer.inner_iters=0", "integer >= 1"]),
]


@pytest.fixture(scope="module")
def bad_data(idx_folder: Path, tmp_path_factory) -> Path:
    """Copies of the synthetic idx folder, each with one broken file."""
    root = tmp_path_factory.mktemp("bad-data")
    broken = {
        # the train images gzip cut in half
        "truncated": lambda f: f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2]),
        # the train images file starting with a labels file's magic number
        "magic": lambda f: f.write_bytes(gzip.compress(b"\0\0\x08\x01" + gzip.decompress(f.read_bytes())[4:])),
        # 10 labels fewer than images
        "count": None,
    }
    for name, breaks in broken.items():
        shutil.copytree(idx_folder, root / name)
        if breaks is not None:
            breaks(root / name / "train-images-idx3-ubyte.gz")
    labels = root / "count" / "train-labels-idx1-ubyte.gz"
    write_idx(labels.with_suffix(""), gzip_labels(labels)[:-10], gz=True)
    return root


def gzip_labels(path: Path) -> np.ndarray:
    return np.frombuffer(gzip.decompress(path.read_bytes())[8:], dtype=np.uint8)


BAD_DATA = [
    (["data=mnist", "data.root=BAD/truncated"], ["train-images-idx3-ubyte.gz", "corrupt/truncated gzip"]),
    (["data=mnist", "data.root=BAD/magic"], ["train-images-idx3-ubyte.gz", "wrong magic number 0x00000801"]),
    (["data=mnist", "data.root=BAD/count"], ["holds 200 images but", "train-labels-idx1-ubyte.gz holds 190 labels"]),
]


@pytest.mark.parametrize(
    ("overrides", "expected"), BAD_INPUTS + BAD_DATA, ids=[" ".join(o) for o, _ in BAD_INPUTS + BAD_DATA]
)
def test_bad_input_gives_one_clear_error(overrides, expected, tmp_path: Path, bad_data: Path, bcd_train):
    """Each bad input: exit status 2, one line naming the key or file and what is allowed, no run folder."""

    def place(text: str) -> str:
        return text.replace("MISSING", str(tmp_path / "no-such-folder")).replace("BAD", str(bad_data))

    code, stderr = bcd_train(*TINY, *map(place, overrides), cwd=tmp_path)
    assert code == 2, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if line.startswith("bcd-train:")]
    for text in expected:
        assert place(text) in line, stderr
    assert not [p for p in tmp_path.glob("outputs/**/*") if p.is_file()], "a refused run leaves no run folder"


def test_data_root_without_the_files_names_the_missing_file(tmp_path: Path, bcd_train):
    (tmp_path / "idx").mkdir()
    code, stderr = bcd_train(*TINY, "data=fashion_mnist", f"data.root={tmp_path / 'idx'}", cwd=tmp_path)
    assert code == 2
    assert "Traceback" not in stderr
    assert "train-images-idx3-ubyte" in stderr and str(tmp_path / "idx") in stderr


@pytest.mark.process
def test_installed_wheel_runs_from_any_directory(tmp_path: Path):
    """A regular (non-editable) install ships the YAML configs inside the package."""
    root = Path(__file__).resolve().parents[1]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(root)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    [wheel] = wheels.glob("bcd_cli-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    assert (site / "bcd_cli" / "conf" / "train.yaml").is_file()
    assert (site / "bcd_cli" / "conf" / "act" / "relu.yaml").is_file()
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}
    code = "import bcd_cli.cli.command as c, bcd_cli.app as a; print(a.config_dir()); c.main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, *TINY], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == str(site / "bcd_cli" / "conf")
    assert len(run_folders(workdir / "outputs")) == 1


def test_bad_input_keeps_a_chosen_folder_and_its_files(tmp_path: Path, bcd_train):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    code, _ = bcd_train(*TINY, "gamma=0", f"hydra.run.dir={folder}", cwd=tmp_path)
    assert code == 2
    assert (folder / "notes.txt").read_text() == "keep me"
    assert not (folder / ".hydra").exists()


def test_help_lists_groups_and_examples(tmp_path: Path, bcd_train_output):
    code, stdout, _ = bcd_train_output("--help", cwd=tmp_path)
    assert code == 0
    for text in (
        "act: leaky_relu, linear, polynomial, relu",
        "reg: box, elastic_net, l1, l2, none",
        "splitting: resnet, three, two",
        "debug: fast",
        "debug=fast shrinks any run to about a second",
        "gamma: 1.0",
        "bcd-train -m gamma=",
    ):
        assert text in stdout


@pytest.mark.parametrize("draw", [["model.init=normal", "model.init_std=1e30"], ["model.init_scale=1e30"]])
def test_non_finite_start_is_a_clear_error(draw: list[str], tmp_path: Path, bcd_train):
    code, stderr = bcd_train(*TINY, *draw, cwd=tmp_path)
    assert code == 3
    assert "Traceback" not in stderr
    assert "non-finite objective at the initial point" in stderr and draw[-1].split("=")[0] in stderr


def test_figure1_shrunken_writes_the_comparison(idx_folder: Path, tmp_path: Path, bcd_train_output):
    """The Figure 1 preset at toy scale: BCD and SGD from the same start, the comparison figure and table."""
    sweep = tmp_path / "figure1"
    code, stdout, stderr = bcd_train_output(
        "-m", "experiment=figure1", "trainer=bcd,sgd", *TINY, f"data.root={idx_folder}", "model.widths=[16,16]",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    assert "BCD #0 sweep 2/2" in stdout and "SGD #1 sweep 2/2" in stdout
    table = pd.read_csv(sweep / "comparison.csv")
    assert sorted(table["trainer"]) == ["bcd", "sgd"]
    assert "| bcd" in (sweep / "comparison.md").read_text() and "| sgd" in (sweep / "comparison.md").read_text()
    assert (sweep / "comparison.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = [pd.read_csv(folder / "metrics.csv").iloc[0] for folder in run_folders(sweep)]
    assert first[0]["test_acc"] == first[1]["test_acc"] and first[0]["loss"] == first[1]["loss"]  # same start
