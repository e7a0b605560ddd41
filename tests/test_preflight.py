"""Command lines Hydra cannot compose, or whose jobs do not validate, are refused in one line before any job runs."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import yaml
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError

from bcd_cli.cli import command as cli
from bcd_cli.cli.preflight import JobError, preflight
from bcd_cli.errors import ConfigError
from tests.conftest import TINY, run_cli

GROUPS = "one of cross_entropy, exponential, hinge, logistic, square"

BAD_RUNS = [
    # (overrides of a single run, texts its one error line must contain: key, value, what is allowed)
    (["loss=foo"], [f"loss='foo' is invalid: {GROUPS}"]),
    (["reg@reg_w=foo"], ["reg@reg_w='foo' is invalid: one of box, elastic_net, l1, l2, none, nonneg"]),
    (["experiment=nope"], ["experiment='nope' is invalid: one of figure1"]),
    (["loss=[square,foo]"], ["loss=['square', 'foo'] is invalid: " + GROUPS]),
    (["data=null"], ["data=None is invalid: one of cifar10, csv, digits, fashion_mnist, mnist, npz", "~data removes"]),
    (["reg=l2"], ["reg='l2' is invalid: reg is not in the defaults list; did you mean reg@reg_v or reg@reg_w?"]),
    (["+experiment=figure1"], ["+experiment='figure1' is invalid: experiment is already in the defaults list"]),
    (["++loss=hinge"], ["++loss='hinge' is invalid: a config group: choose an option with loss=hinge"]),
    (
        ["gamm=1"],
        [
            "gamm=1 is invalid: no such key; did you mean gamma? (top-level keys: ",
            "alpha, ",
        ],
    ),
    (["+gamm=5"], ["+gamm=5 is invalid: a key bcd-train reads; it reads no such key", "did you mean gamma=5?"]),
    (["+trainer.lr=0.1"], ["+trainer.lr=0.1 is invalid: a key bcd-train reads", "keys of trainer: alpha_check"]),
    (["++foo=1"], ["++foo=1 is invalid: a key bcd-train reads", "+device.index"]),
    (["+reg_w.lam=0.1"], ["+reg_w.lam=0.1 is invalid: a key bcd-train reads"]),
    (
        ["data.n_trian=5"],
        ["data.n_trian=5 is invalid: no such key; did you mean data.n_train?", "keys of data: n_test, n_train, name, "],
    ),
    (["model=resnet", "model.widths=[4]"], ["model.widths=[4] is invalid: no such key; did you mean model.width?"]),
    (["gamma=[1,"], ["override 'gamma=[1,' is not valid override syntax: no viable alternative at input '[1,'"]),
    (["gamma"], ["override 'gamma' is not valid override syntax: missing EQUAL at '<EOF>'"]),
    (["=1"], ["override '=1' is not valid override syntax: no key before '='"]),
    (["gamma=1,2"], ["gamma='1,2' is invalid: one value per run; for a list write gamma=[1,2]", "add -m (--multirun)"]),
    (["+gamma=2"], ["+gamma=2 is invalid: gamma already exists; set it without the +: gamma=2"]),
    (["~foo"], ["~foo is invalid: no such key to delete (top-level keys: ", "gamma, "]),
    (["~gamma=2"], ["~gamma=2 is invalid: gamma is 1.0; delete it with ~gamma"]),
    (["gamma=${nope}"], ["gamma='${nope}' is invalid: an interpolation that resolves", "key 'nope' not found"]),
    (["hydra.foo=1"], ["hydra.foo=1 is invalid: no such key (keys of hydra: callbacks, ", "run, runtime, "]),
    (["hydra.job.chdir=maybe"], ["hydra.job.chdir='maybe' is invalid: a bool"]),
    (["hydra.mode=FOO"], ["hydra.mode='FOO' is invalid: one of RUN, MULTIRUN"]),
    (["hydra/launcher=foo"], ["hydra/launcher='foo' is invalid: one of basic"]),
    (
        ["hydra.run.dir=${oops:x}"],
        ["hydra.run.dir='${oops:x}' is invalid: an interpolation that resolves", "Unsupported interpolation type oops"],
    ),
    (["-cn", "nope"], ["--config-name='nope' is invalid: one of train"]),
    (["gamma=0"], ["gamma=0 is invalid: a number > 0"]),  # bcd_cli.run.spec.validate, as before
    (["gamma=inf"], ["gamma=inf is invalid: a finite value: a number > 0"]),
    (["epochs=1e9"], ["epochs=1000000000.0 is invalid: an integer >= 1 (BCD sweeps), written as an integer: epochs="]),
    (["gamma=range(1,3)"], ["gamma='range(1,3)' is invalid: a sweep: add -m (--multirun)"]),
    (["~loss=hinge"], ["~loss=hinge is invalid: loss is square; delete it with ~loss"]),
    (["~reg@reg_x"], ["~reg@reg_x is invalid: no such entry in the defaults list"]),
    (["hydra.searchpath=5"], ["hydra.searchpath=5 is invalid: hydra.searchpath must be a list of strings"]),
    (["hydra.sweeper.max_batch_size=x"], ["hydra.sweeper.max_batch_size='x' is invalid: an integer"]),
    (
        ["hydra.job.env_copy=[BCD_NO_SUCH_VARIABLE]"],
        ["hydra.job.env_copy=['BCD_NO_SUCH_VARIABLE'] is invalid: names of set environment variables"],
    ),
]

BAD_MULTIRUNS = [
    (["loss=square,foo"], [f"job 1 (loss=foo): loss='foo' is invalid: {GROUPS}"]),
    (["gamm=1,2"], ["job 0 (gamm=1): gamm=1 is invalid: no such key; did you mean gamma?"]),
    (["gamma=[1,2"], ["override 'gamma=[1,2' is not valid override syntax"]),
    (["gamma=range(1,x)"], ["override 'gamma=range(1,x)' is not valid override syntax: TypeError while evaluating"]),
    (["gamma=interval(0,1)"], ["gamma='interval(0,1)' is invalid: a list (a,b,c), choice(...), range(...)"]),
    (["hydra.run.dir=a,b"], ["hydra.run.dir='a,b' is invalid: one value: Hydra's own settings (hydra.*) cannot be"]),
    (["hydra.sweep.subdir=${nope}"], ["job 0: hydra.sweep.subdir='${nope}' is invalid: an interpolation that"]),
    (["model=mlp,resnet", "splitting=two"], ["job 1 (model=resnet): splitting='two' is invalid: ", "Algorithm 3"]),
    (["gamma=0.1,1", "alpha=1,x"], ["job 1 (gamma=0.1 alpha=x): alpha='x' is invalid: a number > 0"]),
]


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test, instead of training, if the preflight lets a command line through."""

    def train() -> None:
        raise AssertionError("the preflight let a bad command line through to Hydra")

    monkeypatch.setattr(cli, "_train", train)


def main_in_process(monkeypatch, capsys, *args: str) -> tuple[object, str, str]:
    """``bcd_cli.cli.command.main()`` with ``sys.argv[1:] = args``: its exit status (0 when it returns), stdout,
    stderr."""
    monkeypatch.setattr(sys, "argv", ["bcd-train", *args])
    status: object = 0
    try:
        cli.main()
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def with_folders(args: list[str], tmp_path: Path, *, multirun: bool) -> list[str]:
    """``args`` with the run (or sweep) folder in ``tmp_path``, unless ``args`` sets it."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    folder = [] if any(a.startswith(key) for a in args) else [f"{key}={tmp_path / key.split('.')[1]}"]
    return [*(["-m"] if multirun else []), *folder, *args]


def assert_one_error_line(status: object, err: str, expected: list[str]) -> str:
    assert status == 2, err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    assert line.startswith("bcd-train: error: ")
    for text in expected:
        assert text in line, line
    return line


@pytest.mark.parametrize(("args", "expected"), BAD_RUNS, ids=[" ".join(a) for a, _ in BAD_RUNS])
def test_bad_run_is_refused_in_one_line(args, expected, tmp_path, monkeypatch, capsys, no_training):
    monkeypatch.chdir(tmp_path)
    status, _, err = main_in_process(monkeypatch, capsys, *with_folders(args, tmp_path, multirun=False))
    assert_one_error_line(status, err, expected)
    assert not list(tmp_path.iterdir()), "no run folder (nor outputs/) may be created"


@pytest.mark.parametrize(("args", "expected"), BAD_MULTIRUNS, ids=[" ".join(a) for a, _ in BAD_MULTIRUNS])
def test_bad_multirun_is_refused_before_any_job(args, expected, tmp_path, monkeypatch, capsys, no_training):
    monkeypatch.chdir(tmp_path)
    status, _, err = main_in_process(monkeypatch, capsys, *with_folders(args, tmp_path, multirun=True))
    assert_one_error_line(status, err, expected)
    assert not list(tmp_path.iterdir()), "no sweep folder (nor outputs/) may be created"


def test_bad_sweep_folder_interpolation(tmp_path, monkeypatch, capsys, no_training):
    monkeypatch.chdir(tmp_path)
    status, _, err = main_in_process(monkeypatch, capsys, "-m", "gamma=1,2", "hydra.sweep.dir=${oops:x}")
    assert_one_error_line(status, err, ["hydra.sweep.dir='${oops:x}' is invalid: an interpolation that resolves"])
    assert not list(tmp_path.iterdir())


@pytest.mark.process
def test_the_installed_command_gives_the_same_line(tmp_path: Path, monkeypatch, capsys, no_training):
    """The entry point in a subprocess, and main() in this process (run twice), print the same one line."""
    args = with_folders(["loss=foo"], tmp_path, multirun=False)
    proc = run_cli(*args, cwd=tmp_path)
    line = assert_one_error_line(proc.returncode, proc.stderr, [f"loss='foo' is invalid: {GROUPS}"])
    assert proc.stdout == ""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        status, _, err = main_in_process(monkeypatch, capsys, *args)
        assert status == 2 and err.strip() == line
    assert not list(tmp_path.iterdir())


@pytest.mark.process
@pytest.mark.parametrize(
    ("multirun", "args", "expected"),
    [
        (True, ["model=mlp,resnet", "splitting=two"], ["job 1 (model=resnet): splitting='two' is invalid"]),
        (False, ["data.n_trian=5"], ["data.n_trian=5 is invalid: no such key; did you mean data.n_train?"]),
    ],
    ids=["multirun", "run"],
)
def test_installed_command_refuses_before_any_job(multirun: bool, args: list[str], expected: list[str], tmp_path):
    proc = run_cli(*with_folders(args, tmp_path, multirun=multirun), cwd=tmp_path)
    assert_one_error_line(proc.returncode, proc.stderr, expected)
    assert not list(tmp_path.iterdir())


def test_job_error_keeps_key_value_and_job():
    with pytest.raises(JobError) as info:
        preflight(["-m", "model=mlp,resnet", "splitting=two"])
    error = info.value
    assert isinstance(error, ConfigError) and error.exit_code == 2
    assert (error.job, error.overrides, error.key, error.value) == (1, ["model=resnet"], "splitting", "two")


def test_valid_multirun_passes_and_leaves_hydra_clean():
    HydraConfig.instance().cfg = None  # as at start-up (a run in this process before leaves its config set)
    preflight(["-m", "gamma=0.1,1,10", "alpha=1,2,5", *TINY])
    preflight(["-m", "loss=square,hinge,logistic", "act=relu,tanh,sigmoid", *TINY])
    preflight(TINY)
    assert not GlobalHydra.instance().is_initialized()
    assert not HydraConfig.initialized()
    with pytest.raises(ConfigError):
        preflight(["gamm=1"])
    assert not GlobalHydra.instance().is_initialized()
    assert not HydraConfig.initialized()


def test_config_dir_adds_options(tmp_path: Path):
    extra = tmp_path / "extra"
    (extra / "loss").mkdir(parents=True)
    (extra / "loss" / "mine.yaml").write_text("_target_: bcd_cli.catalogue.losses.Square\nreduction: mean\n")
    preflight(["-cd", str(extra), "loss=mine", *TINY])
    with pytest.raises(ConfigError, match=r"loss='nope' is invalid: one of .*logistic, mine, square"):
        preflight(["--config-dir", str(extra), "loss=nope"])
    with pytest.raises(ConfigError, match=r"--config-dir='.*no-such' is invalid: an existing folder"):
        preflight(["-cd", str(tmp_path / "no-such"), "gamma=1"])


@pytest.mark.parametrize(
    "args",
    [["--help"], ["--hydra-help"], ["--cfg", "job", "gamm=1"], ["--info"], ["--version"], ["--no-such-flag"]],
    ids=lambda a: " ".join(a),
)
def test_preflight_leaves_other_commands_to_hydra(args: list[str], capsys):
    preflight(args)
    assert capsys.readouterr() == ("", "")


def test_hydra_full_error_gives_the_original_exception(monkeypatch, capsys, no_training):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    monkeypatch.setattr(sys, "argv", ["bcd-train", "gamm=1"])
    with pytest.raises(ConfigCompositionException) as info:
        cli.main()
    assert isinstance(info.value.__cause__, ConfigAttributeError)
    assert capsys.readouterr().err == ""


def test_help_and_cfg_still_work(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    status, out, _ = main_in_process(monkeypatch, capsys, "--help")
    assert status == 0 and "bcd-train: train a deep network by block coordinate descent" in out
    status, out, err = main_in_process(monkeypatch, capsys, "--cfg", "job", "gamma=2", "loss=hinge")
    assert status == 0, err
    assert "gamma: 2" in out and "catalogue.losses.Hinge" in out
    assert not list(tmp_path.iterdir())


def test_keys_that_are_read_may_be_set_or_added(tmp_path: Path):
    """++ sets a key that exists; + adds the one optional key bcd-train reads; the launch names its folder."""
    launch = preflight([*TINY, "++gamma=5", "+device.index=0", f"hydra.run.dir={tmp_path / 'run'}"])
    assert launch is not None and not launch.multirun and launch.folder == tmp_path / "run"
    sweep = preflight(["-m", *TINY, "gamma=1,2", "data=mnist", "data.root=rel", f"hydra.sweep.dir={tmp_path / 's'}"])
    assert sweep is not None and sweep.multirun and sweep.folder == tmp_path / "s"
    assert sweep.relative_paths == {"data.root": "rel"}
    assert preflight(["--cfg", "job"]) is None  # prints the config: no folder


def extra_configs(root: Path, files: dict[str, str]) -> Path:
    """A folder for ``--config-dir`` holding ``files`` (path -> YAML text)."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


SWEEP_PARAMS = "# @package _global_\nhydra:\n  sweeper:\n    params:\n      alpha: 1,5\n"


def test_the_jobs_are_hydras_jobs_in_hydras_order(tmp_path: Path, bcd_train):
    """A real 2x2 multirun: each job folder's overrides are those preflight expanded, job by job, the sweep of
    ``hydra.sweeper.params`` (alpha) first, then the command line's (gamma)."""
    extra = extra_configs(tmp_path / "extra", {"experiment/grid.yaml": SWEEP_PARAMS})
    tiny = [o for o in TINY if not o.startswith("epochs=")]
    args = ["-m", "-cd", str(extra), "experiment=grid", "gamma=0.1,1", *tiny, "epochs=1"]
    launch = preflight([*args, f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert launch is not None and launch.multirun and launch.folder == tmp_path / "sweep"
    assert [job[:3] for job in launch.jobs] == [
        ["alpha=1", "experiment=grid", "gamma=0.1"],
        ["alpha=1", "experiment=grid", "gamma=1"],
        ["alpha=5", "experiment=grid", "gamma=0.1"],
        ["alpha=5", "experiment=grid", "gamma=1"],
    ]
    code, stderr = bcd_train(*args, f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    assert code == 0, stderr
    ran = [yaml.safe_load((tmp_path / "sweep" / str(n) / ".hydra" / "overrides.yaml").read_text()) for n in range(4)]
    assert ran == launch.jobs
    assert not (tmp_path / "sweep" / "4").exists()


def test_a_command_line_sweep_of_a_key_in_the_params_keeps_its_place(tmp_path: Path):
    extra = extra_configs(tmp_path, {"experiment/grid.yaml": SWEEP_PARAMS})
    launch = preflight(["-m", "-cd", str(extra), "experiment=grid", "gamma=0.1,1", "alpha=2", *TINY])
    assert launch is not None
    assert [job[:3] for job in launch.jobs] == [["alpha=2", "experiment=grid", f"gamma={g}"] for g in ("0.1", "1")]


def test_the_folders_resolve_their_interpolations(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    year = time.strftime("%Y")
    run = preflight([*TINY, "gamma=2", "hydra.run.dir=runs/${now:%Y}/${hydra.job.name}/${gamma}"])
    assert run is not None and run.folder == tmp_path / "runs" / year / "train" / "2"
    named = preflight(["gamma=2", "hydra.run.dir=${hydra.job.override_dirname}"])
    assert named is not None and named.folder == tmp_path / "gamma=2"
    sweep = preflight(["-m", *TINY, "gamma=1,2", "hydra.sweep.dir=sweeps/${now:%Y}", "hydra.sweep.subdir=${gamma}"])
    assert sweep is not None and sweep.folder == tmp_path / "sweeps" / year
    assert not list(tmp_path.iterdir())


def test_the_config_dir_adds_configs_that_are_checked(tmp_path: Path):
    extra = extra_configs(
        tmp_path,
        {
            "experiment/asks.yaml": "# @package _global_\ndefaults:\n  - override /loss: nope\n",
            "choose.yaml": "defaults:\n  - train\n  - pick: ???\n  - _self_\n",
            "pick/one.yaml": "seed: 1\n",
            "pick/two.yaml": "seed: 2\n",
        },
    )
    with pytest.raises(ConfigError, match=r"loss='nope' is invalid: one of .*square \(asked for by experiment=asks\)"):
        preflight(["-cd", str(extra), "experiment=asks"])
    with pytest.raises(ConfigError, match=r"pick='\?\?\?' is invalid: one of one, two \(it has no default\)"):
        preflight(["-cd", str(extra), "-cn", "choose"])
    launch = preflight(["-cd", str(extra), "-cn", "choose", "pick=two", *TINY])
    assert launch is not None and launch.jobs == [["pick=two", *TINY]]
    sweep = preflight(["-m", "-cd", str(extra), "-cn", "choose", "pick=one,two", *TINY])
    assert sweep is not None and [job[0] for job in sweep.jobs] == ["pick=one", "pick=two"]


@pytest.mark.parametrize(
    "args",
    [
        ["--run", "-m", "gamma=1"],
        ["--resolve", "gamma=1"],
        ["-cp", "elsewhere", "gamma=1"],
        ["-cn"],
        ["a=1", "-m", "b=2"],
    ],
    ids=lambda a: " ".join(a),
)
def test_command_lines_hydra_refuses_are_left_to_hydra(args: list[str], capsys):
    assert preflight(args) is None
    assert capsys.readouterr() == ("", "")


def test_hydra_full_error_gives_hydras_exception_for_a_sweep_in_a_run(monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ConfigCompositionException, match="Ambiguous value for argument 'gamma=1,2'"):
        preflight(["gamma=1,2"])
    assert os.environ["HYDRA_FULL_ERROR"] == "1"
