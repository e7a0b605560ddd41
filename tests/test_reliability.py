"""Nothing lost: checkpoints and resume after SIGKILL or Ctrl-C, the divergence guard, failing multirun jobs."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from bcd_cli.cli import command as cli
from bcd_cli.errors import NumericalError
from bcd_cli.run.checkpoint import CHECKPOINT_FILE
from bcd_cli.run.folders import run_lock
from bcd_cli.run.records import METRICS_FILE, SUMMARY_FILE
from bcd_cli.run.resume import read_checkpoint
from bcd_cli.run.train import run
from tests.conftest import TINY, cli_in_process, compose_config, run_cli, start_cli

# a tiny run of 6 sweeps with a checkpoint after every sweep; the kill tests stop it at a named point of the
# run (BCD_CLI_FAULT=POINT:N:SIGNAL, bcd_cli.run.signals.fault_point): the process signals itself the N-th time
# it starts a sweep ("sweep") or has written a checkpoint's temporary file ("checkpoint")
KILLABLE = [*TINY, "model.widths=[16,16]", "epochs=6", "checkpoint.every=1"]
TIMING = {"seconds", "train_seconds", "wall_seconds"}


def metrics_without_timing(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / METRICS_FILE).drop(columns="seconds")


def summary_without_timing(folder: Path) -> dict:
    summary = json.loads((folder / SUMMARY_FILE).read_text())
    return {k: v for k, v in summary.items() if k not in TIMING}


def assert_same_run(folder: Path, reference: Path) -> None:
    """Bit-identical metrics (all but the timings), summary and final state."""
    resumed, expected = metrics_without_timing(folder), metrics_without_timing(reference)
    pd.testing.assert_frame_equal(resumed, expected, check_exact=True)
    assert resumed["sweep"].tolist() == list(range(len(expected)))  # no duplicate or missing rows
    assert summary_without_timing(folder) == summary_without_timing(reference)
    final, want = read_checkpoint(folder), read_checkpoint(reference)
    assert final is not None and want is not None and final.sweep == want.sweep
    for a, b in zip(blocks(final), blocks(want), strict=True):
        assert torch.equal(a, b)


def blocks(checkpoint) -> list[torch.Tensor]:
    """Every block tensor of a checkpoint's trainer state (W, b, V, U; the baselines' W, b)."""
    return [t for kind in ("W", "b", "V", "U") for t in checkpoint.trainer.get(kind, [])]


def metrics_rows(folder: Path) -> int:
    try:
        return max(0, (folder / METRICS_FILE).read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run that every killed and resumed run must reproduce."""
    cwd = tmp_path_factory.mktemp("reference")
    assert cli_in_process(*KILLABLE, "hydra.run.dir=run", cwd=cwd) == 0
    return cwd / "run"


def kill_at(run_dir: Path, args: list[str], point: str, n: int, *, sig: int = signal.SIGKILL) -> str:
    """Runs ``bcd-train ARGS``, which sends itself ``sig`` the ``n``-th time it reaches ``point``; returns its
    stderr, once the process has ended as that signal ends it."""
    proc = start_cli(*args, cwd=run_dir.parent, fault=f"{point}:{n}:{signal.Signals(sig).name}")
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), stderr
    return stderr


@pytest.mark.process
def test_killed_at_several_points_and_resumed_each_time_the_run_ends_as_the_uninterrupted_one(
    tmp_path: Path, reference: Path
):
    """SIGKILL before the first checkpoint, inside a sweep and while a checkpoint is written, then Ctrl-C;
    each time resumed in place. The metrics, summary and final state are those of the run never stopped."""
    run_dir = tmp_path / "run"
    kill_at(run_dir, [*KILLABLE, f"hydra.run.dir={run_dir}"], "sweep", 1)  # in sweep 1: a metrics row, no checkpoint
    assert metrics_rows(run_dir) == 1 and not (run_dir / CHECKPOINT_FILE).exists()
    resume = [f"resume={run_dir}"]

    kill_at(run_dir, resume, "sweep", 3)  # restarts from sweep 0 (no checkpoint), killed in sweep 3
    assert "starts again from sweep 0" in (run_dir / "train.log").read_text()
    assert metrics_rows(run_dir) == 3 and read_checkpoint(run_dir).sweep == 2
    kill_at(run_dir, resume, "checkpoint", 1)  # while the checkpoint of sweep 3 is written
    assert (run_dir / f"{CHECKPOINT_FILE}.tmp").exists() and read_checkpoint(run_dir).sweep == 2

    stderr = kill_at(run_dir, resume, "sweep", 1, sig=signal.SIGINT)  # Ctrl-C in sweep 3
    checkpoint = read_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.sweep == 3
    assert pd.read_csv(run_dir / METRICS_FILE)["sweep"].iloc[-1] == checkpoint.sweep < 6  # saved the sweep it was in
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "interrupted"
    assert (run_dir / "curves.png").exists()
    last = stderr.strip().splitlines()[-1]
    assert f"resume with: bcd-train resume={run_dir}" in last and "Traceback" not in stderr

    finished = run_cli(*resume, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run_dir, reference)
    assert not (run_dir / f"{CHECKPOINT_FILE}.tmp").exists()
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "completed"
    assert (run_dir / "train.log").read_text().count("resuming") >= 3


def run_as_printed(stderr: str, cwd: Path) -> subprocess.CompletedProcess:
    """Runs the command after 'resume with:' in ``stderr`` through a shell, as a user pastes it."""
    command = stderr.strip().splitlines()[-1].partition("resume with: ")[2]
    assert command.startswith("bcd-train "), stderr
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.process
@pytest.mark.parametrize(
    "sig", [signal.SIGTERM, pytest.param(signal.SIGHUP, marks=pytest.mark.slow)], ids=["SIGTERM", "SIGHUP"]
)
def test_a_stop_signal_mid_run_stops_cleanly_and_the_printed_command_finishes_it(
    tmp_path: Path, reference: Path, sig: int
):
    """kill, timeout, docker stop and SLURM send SIGTERM; a closed terminal SIGHUP. The run stops after the
    sweep it is in, with a checkpoint and summary.json 'interrupted', exits 128 + signal, and the command it
    prints (its folder's name has a space and a &) continues it to the uninterrupted run's metrics and state."""
    run_dir = tmp_path / "run of b&c"
    stderr = kill_at(run_dir, [*KILLABLE, f"hydra.run.dir='{run_dir}'"], "sweep", 3, sig=sig)
    assert f"interrupted by {signal.Signals(sig).name}" in stderr and "Traceback" not in stderr
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "interrupted"
    checkpoint = read_checkpoint(run_dir)
    assert checkpoint is not None and checkpoint.sweep == pd.read_csv(run_dir / METRICS_FILE)["sweep"].iloc[-1] == 3
    finished = run_as_printed(stderr, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run_dir, reference)


@pytest.mark.process
def test_a_killed_extension_never_claims_completed_and_its_printed_command_extends_it(tmp_path: Path, reference: Path):
    run_dir = tmp_path / "run"
    assert run_cli(*KILLABLE, "epochs=3", f"hydra.run.dir={run_dir}", cwd=tmp_path).returncode == 0
    kill_at(run_dir, [f"resume={run_dir}", "epochs=6"], "sweep", 2)  # SIGKILL inside sweep 5
    summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    assert summary["status"] == "running" and summary["epochs"] == 6, summary
    report = subprocess.run(
        [sys.executable, "-m", "bcd_cli.reports.command", str(run_dir)], capture_output=True, text=True, timeout=120
    )
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "killed", report.stderr
    stderr = kill_at(run_dir, [f"resume={run_dir}", "epochs=6"], "sweep", 1, sig=signal.SIGINT)  # in sweep 5
    assert "epochs=6" in stderr.strip().splitlines()[-1]  # without it the folder's epochs=3 would be refused
    finished = run_as_printed(stderr, cwd=tmp_path)
    assert finished.returncode == 0, finished.stderr
    assert_same_run(run_dir, reference)


@pytest.mark.process
def test_a_stop_signal_before_the_first_sweep_leaves_no_folder(tmp_path: Path):
    """SIGTERM between the folder's claim and its first metrics row: exit 143, the empty run folder removed."""
    outputs = tmp_path / "outputs"
    proc = start_cli(*KILLABLE, cwd=tmp_path, fault="claim:1:SIGTERM")  # the folder just claimed
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 143, stderr
    assert "interrupted by SIGTERM" in stderr and "Traceback" not in stderr
    assert not any(outputs.rglob("*")) if outputs.exists() else True


@pytest.mark.process
def test_a_full_disk_mid_run_is_one_line_and_keeps_what_was_written(tmp_path: Path):
    """Writes beyond a file-size limit fail as on a full disk: the checkpoint (some 600 kB: 1,000 samples and
    layers of 32) cannot be written under a 64 kB limit, the run stops with one line naming the file, its
    metrics rows and summary stay, and no partial checkpoint is left."""
    import resource

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))

    run_dir = tmp_path / "run"
    big = [*KILLABLE, "data.n_train=1000", "model.widths=[32,32]"]
    proc = subprocess.run(
        [sys.executable, "-m", "bcd_cli", *big, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=limit,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("bcd-train: error: cannot write") and CHECKPOINT_FILE in line, proc.stderr
    assert "Traceback" not in proc.stderr
    assert metrics_rows(run_dir) >= 2 and not (run_dir / f"{CHECKPOINT_FILE}.tmp").exists()
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "failed"


KILL_POINTS = {
    # before the first checkpoint: the resume starts again from sweep 0
    "early": ("sweep", 1),
    # inside a sweep, with checkpoints of earlier sweeps on disk
    "mid-sweep": ("sweep", 3),
    # while a checkpoint is being written (its temporary file exists), with an older one on disk
    "checkpoint-write": ("checkpoint", 2),
}


@pytest.mark.slow
@pytest.mark.process
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_sigkill_at_one_point_then_resume_gives_the_uninterrupted_run(tmp_path: Path, reference: Path, point: str):
    run_dir = tmp_path / "run"
    kill_at(run_dir, [*KILLABLE, f"hydra.run.dir={run_dir}"], *KILL_POINTS[point])
    resumed = run_cli(f"resume={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(run_dir, reference)


def test_resume_of_a_baseline_restores_the_optimizer_and_the_shuffling(tmp_path: Path, bcd_train, fault):
    """Adam's moments and the permutation generator come back: the resumed run matches the uninterrupted one."""
    args = ["trainer=adam", "trainer.batch_size=64", *TINY, "epochs=6", "checkpoint.every=2"]
    assert bcd_train(*args, "hydra.run.dir=ref", cwd=tmp_path)[0] == 0
    # the same run stopped by SIGTERM in epoch 3 (after its checkpoint of epoch 2; it stops after epoch 3 with a
    # checkpoint of it), then resumed: in this process, whose handler of the stop signal takes it
    fault("sweep:3:SIGTERM")
    code, stderr = bcd_train(*args, "hydra.run.dir=run", cwd=tmp_path)
    assert code == 143 and "interrupted by SIGTERM" in stderr, stderr
    assert read_checkpoint(tmp_path / "run").sweep == 3
    fault("")
    code, stderr = bcd_train("resume=run", cwd=tmp_path)
    assert code == 0, stderr
    assert_same_run(tmp_path / "run", tmp_path / "ref")


def test_resume_can_extend_a_finished_run(tmp_path: Path, bcd_train):
    assert bcd_train(*TINY, "epochs=3", "hydra.run.dir=short", cwd=tmp_path)[0] == 0
    assert bcd_train(*TINY, "epochs=5", "hydra.run.dir=long", cwd=tmp_path)[0] == 0
    code, stderr = bcd_train("resume=short", "epochs=5", cwd=tmp_path)
    assert code == 0, stderr
    assert_same_run(tmp_path / "short", tmp_path / "long")


def test_a_run_folder_from_before_the_newer_keys_resumes_as_it_ran(tmp_path: Path, bcd_train):
    """A format-1 folder whose saved config and checkpoint lack grad_norm, device.matmul_precision and
    trainer.state_solve_dtype (written before those keys existed) resumes with the values it ran with:
    its V blocks solved in trainer.solve_dtype (float64), so it ends as a run with state_solve_dtype=float64."""
    as_before = "trainer.state_solve_dtype=float64"  # how the V blocks were solved before the key existed
    assert bcd_train(*TINY, "epochs=3", as_before, "hydra.run.dir=old", cwd=tmp_path)[0] == 0
    assert bcd_train(*TINY, "epochs=5", as_before, "hydra.run.dir=ref", cwd=tmp_path)[0] == 0
    saved = tmp_path / "old" / ".hydra" / "config.yaml"
    config = OmegaConf.load(saved)
    del config["grad_norm"], config.device["matmul_precision"], config.trainer["state_solve_dtype"]
    OmegaConf.save(config, saved)
    path = tmp_path / "old" / CHECKPOINT_FILE
    raw = as_format_1(torch.load(path, weights_only=True))
    del raw["config"]["grad_norm"], raw["config"]["device"]["matmul_precision"]
    del raw["config"]["trainer"]["state_solve_dtype"]
    torch.save(raw, path)
    code, stderr = bcd_train("resume=old", "epochs=5", cwd=tmp_path)
    assert code == 0, stderr
    assert_same_run(tmp_path / "old", tmp_path / "ref")


def as_format_1(raw: dict) -> dict:
    """A format-2 checkpoint of a BCD run laid out as format 1 wrote it: one flat list of blocks W, b, V, U and
    the RNG states in the state."""
    trainer, rng = raw.pop("trainer"), raw.pop("rng")
    state = {"rng": rng["cpu"], "blocks": [t for kind in ("W", "b", "V", "U") for t in trainer.get(kind, [])]}
    if "cuda" in rng:
        state["cuda_rng"] = rng["cuda"]
    return {**raw, "format": 1, "state": state}


FORMAT_1 = Path(__file__).parent / "data" / "format1"


@pytest.mark.parametrize("folder", ["bcd", "adam"])
def test_a_format_1_run_folder_resumes_and_extends_as_a_fresh_run(tmp_path: Path, bcd_train, folder: str):
    """Run folders written by format 1 (three-splitting and Adam on 120 digits, 2 sweeps, a checkpoint every
    sweep), extended to 4 sweeps: they continue from sweep 2, and sweeps 3 and 4 are those of a fresh run of 4
    sweeps, to the rounding of float32 sums (the fresh run's kernels may add in another order)."""
    import shutil

    from tests.tolerances import tol

    run_dir = tmp_path / "old"
    shutil.copytree(FORMAT_1 / folder, run_dir)
    old = read_checkpoint(run_dir)
    assert old is not None and old.sweep == 2 and set(old.trainer) >= {"W", "b"}
    code, stderr = bcd_train(f"resume={run_dir}", "epochs=4", cwd=tmp_path)
    assert code == 0, stderr
    overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
    fresh = [o for o in overrides if not o.startswith("epochs=")]
    saved = OmegaConf.load(run_dir / ".hydra" / "config.yaml")  # its initial weights, whatever today's defaults
    fresh += ["model.init=normal", f"model.init_std={saved.model.init_std}", f"model.init_bias={saved.model.init_bias}"]
    assert bcd_train(*fresh, "epochs=4", "hydra.run.dir=fresh", cwd=tmp_path)[0] == 0
    resumed, reference = pd.read_csv(run_dir / METRICS_FILE), pd.read_csv(tmp_path / "fresh" / METRICS_FILE)
    assert resumed["sweep"].tolist() == [0, 1, 2, 3, 4]
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "completed"
    columns = [c for c in resumed.columns if c not in ("sweep", "seconds")]
    got, want = resumed[columns].iloc[3:].to_numpy(), reference[columns].iloc[3:].to_numpy()
    # float32 values from sums over 120 samples and a few hundred weights, chained through 4 sweeps
    bound = tol(torch.float32, n=120 * 4) * (1 + abs(want))
    assert ((abs(got - want) <= bound) | (pd.isna(got) & pd.isna(want))).all(), (got, want)
    assert read_checkpoint(run_dir).sweep == 4


# ---------------------------------------------------------------------------- bad resumes: one line, exit 2


def test_bad_resumes_are_refused_with_one_line(tmp_path: Path, bcd_train, tiny_run):
    done = tiny_run("done")
    (tmp_path / "corrupt" / ".hydra").mkdir(parents=True)
    (tmp_path / "corrupt" / ".hydra" / "config.yaml").write_text((done / ".hydra" / "config.yaml").read_text())
    (tmp_path / "corrupt" / CHECKPOINT_FILE).write_bytes(b"not a checkpoint")
    (tmp_path / "empty").mkdir()
    cases = [
        (["resume=nowhere"], ["resume='nowhere' is invalid: a bcd-train run folder", "does not exist"]),
        (["resume=empty"], ["resume='empty' is invalid", "has no .hydra/config.yaml"]),
        (["resume=done", "loss=hinge"], ["resume='done' is invalid: alone or with epochs=N", "got loss=hinge"]),
        (["resume=done", "-m"], ["resume='done' is invalid", "without --multirun"]),
        (["resume=done", "epochs=1"], ["epochs=1 is invalid: at least 2"]),
        (["resume=done", "checkpoint.every=-1"], ["checkpoint.every=-1 is invalid: an integer >= 0"]),
        (["resume=corrupt"], [f"corrupt/{CHECKPOINT_FILE}: not a readable bcd-cli checkpoint"]),
    ]
    for args, needles in cases:
        code, stderr = bcd_train(*args, cwd=tmp_path)
        assert code == 2, (args, stderr)
        line = stderr.strip().splitlines()[-1]
        assert line.startswith("bcd-train: error:"), (args, stderr)
        assert all(n in line for n in needles), (args, line)
        assert "Traceback" not in stderr
    # the refused resumes left the finished run as it was
    assert json.loads((done / SUMMARY_FILE).read_text())["status"] == "completed"
    assert pd.read_csv(done / METRICS_FILE)["sweep"].tolist() == [0, 1, 2]


def test_resume_of_a_folder_in_use_is_refused(tmp_path: Path, bcd_train, tiny_run):
    tiny_run("done")
    with run_lock(tmp_path / "done"):
        code, stderr = bcd_train("resume=done", "epochs=4", cwd=tmp_path)
    assert code == 2 and "another bcd-train process is running in this folder" in stderr, stderr
    assert pd.read_csv(tmp_path / "done" / METRICS_FILE)["sweep"].tolist() == [0, 1, 2]


# ---------------------------------------------------------------------------- divergence guard


def test_a_poisoned_update_stops_the_run_naming_sweep_and_block(tmp_path: Path, monkeypatch):
    """U_1 becomes NaN in sweep 3: the run stops there; metrics 0..2 and the checkpoint of sweep 2 stay."""
    import bcd_cli.engine.three_splitting as three

    real, calls = three.update_preactivation, {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        U = real(*args, **kwargs)
        return U.fill_(math.nan) if calls["n"] == 2 * 2 + 2 else U  # 2 layers: the 2nd U update of sweep 3

    monkeypatch.setattr(three, "update_preactivation", poisoned)
    cfg = compose_config(*TINY, "epochs=5", "checkpoint.every=1")
    with pytest.raises(NumericalError) as err:
        run(cfg, tmp_path)
    message = str(err.value)
    assert "sweep 3" in message and "block U1" in message and "checkpoint of sweep 2" in message
    assert pd.read_csv(tmp_path / METRICS_FILE)["sweep"].tolist() == [0, 1, 2]
    checkpoint = read_checkpoint(tmp_path)
    assert checkpoint is not None and checkpoint.sweep == 2
    assert all(torch.isfinite(t).all() for t in blocks(checkpoint))
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["status"] == "failed" and "sweep 3" in summary["error"] and summary["sweeps"] == 2


def test_out_of_memory_mid_run_is_one_line_naming_the_block_and_keeps_the_checkpoint(
    tmp_path: Path, bcd_train, monkeypatch
):
    """The allocator fails in the W_2 update of sweep 3 (a run that passed the memory check, on a machine whose
    memory another program took): one line naming the block, exit 1, metrics 0..2 and the checkpoint of 2 kept."""
    import bcd_cli.engine.three_splitting as three

    real, calls = three.update_weights, {"n": 0}

    def update_weights(*args, **kwargs):  # named as the engine's, as it appears in the traceback
        calls["n"] += 1
        if calls["n"] == 2 * 2 + 1:  # 2 layers, updated from the last: the first W update of sweep 3 is W_2
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(three, "update_weights", update_weights)
    code, stderr = bcd_train(*TINY, "epochs=5", "checkpoint.every=1", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 1, stderr
    line = stderr.strip().splitlines()[-1]
    assert "out of memory in the update of block W2 in sweep 3" in line and "checkpoint of sweep 2" in line, stderr
    assert "Traceback" not in stderr
    assert pd.read_csv(tmp_path / "run" / METRICS_FILE)["sweep"].tolist() == [0, 1, 2]
    checkpoint = read_checkpoint(tmp_path / "run")
    assert checkpoint is not None and checkpoint.sweep == 2
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["status"] == "failed"


def test_a_huge_step_stops_the_cli_with_exit_3_and_keeps_the_good_sweeps(tmp_path: Path, bcd_train):
    code, stderr = bcd_train("trainer=sgd", "trainer.lr=1e30", *TINY, "epochs=4", "hydra.run.dir=run", cwd=tmp_path)
    assert code == 3, stderr
    line = stderr.strip().splitlines()[-1]
    assert "sweep 1 diverged" in line and "trainer.lr" in line and "Traceback" not in stderr
    assert pd.read_csv(tmp_path / "run" / METRICS_FILE)["sweep"].tolist() == [0]
    assert json.loads((tmp_path / "run" / SUMMARY_FILE).read_text())["status"] == "failed"


def test_cholesky_trouble_is_retried_in_float64_and_logged(tmp_path: Path, caplog, monkeypatch):
    """A factorisation that fails is retried in float64 with a diagonal jitter, logged, and the run goes on."""
    import bcd_cli.engine.linalg as linalg

    real, failed = torch.linalg.cholesky_ex, {"n": 0}

    def fails_once(H, **kwargs):
        if failed["n"] == 0:
            failed["n"] += 1
            L, info = real(H, **kwargs)
            return L, torch.ones_like(info)
        return real(H, **kwargs)

    monkeypatch.setattr(linalg.torch.linalg, "cholesky_ex", fails_once)
    cfg = compose_config(*TINY, "epochs=2")
    with caplog.at_level("WARNING"):
        result = run(cfg, tmp_path)
    assert failed["n"] == 1 and result.summary["status"] == "completed"
    [warning] = [r.getMessage() for r in caplog.records if "Cholesky" in r.getMessage()]
    assert "block W2" in warning and "float64" in warning and "jitter" in warning


# ---------------------------------------------------------------------------- multirun isolation


def test_a_failing_multirun_job_does_not_stop_the_others(tmp_path: Path, bcd_train):
    sweep = tmp_path / "sweep"
    # job 1 asks for more training samples than digits has: it fails when its data is loaded
    code, stderr = bcd_train("-m", "data.n_train=100,5000,120", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 1, stderr
    assert "1 of 3 jobs failed" in stderr and "job 1: failed: data.n_train=5000 is invalid" in stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["status"].tolist() == ["completed", "failed", "completed"]
    assert table["error"].iloc[1].startswith("data.n_train=5000 is invalid")
    assert table["final_test_acc"].iloc[[0, 2]].notna().all()
    assert json.loads((sweep / "1" / SUMMARY_FILE).read_text())["status"] == "failed"
    assert (sweep / "2" / METRICS_FILE).exists()


def test_an_unexpected_error_in_one_job_is_recorded_with_its_traceback(tmp_path: Path, bcd_train, monkeypatch):
    real = cli.run

    def flaky(cfg, out_dir, progress=None, observers=()):
        if cfg.seed == 1:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(cfg, out_dir, progress, observers)

    monkeypatch.setattr(cli, "run", flaky)
    sweep = tmp_path / "sweep"
    code, stderr = bcd_train("-m", "seed=0,1,2", *TINY, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert code == 1 and "1 of 3 jobs failed" in stderr, stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["status"].tolist() == ["completed", "failed", "completed"]
    assert table["error"].iloc[1] == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in (sweep / "1" / "train.log").read_text()


@pytest.mark.process
@pytest.mark.parametrize(
    "sig", [signal.SIGINT, pytest.param(signal.SIGTERM, marks=pytest.mark.slow)], ids=["SIGINT", "SIGTERM"]
)
def test_a_stop_signal_in_a_multirun_stops_it_and_reports_the_jobs_done(tmp_path: Path, sig: int):
    sweep = tmp_path / "sweep"
    # the jobs of 3 sweeps run one after another in one process: its 5th sweep is job 1's sweep 2
    args = ["-m", "seed=0,1,2", *KILLABLE, "epochs=3", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(*args, cwd=tmp_path, fault=f"sweep:5:{signal.Signals(sig).name}")
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + sig, stderr
    assert "resume with: bcd-train resume=" in stderr
    table = pd.read_csv(sweep / "sweep_summary.csv")
    assert table["status"].tolist()[:2] == ["completed", "interrupted"]
    assert (
        not (sweep / "2").exists() and table["status"].tolist()[2] == "not run" and table["seed"].tolist() == [0, 1, 2]
    )


@pytest.mark.process
def test_nohup_keeps_a_run_alive_when_its_terminal_closes(tmp_path: Path):
    """A run started with SIGHUP ignored (nohup) goes on after SIGHUP, as nohup promises."""
    run_dir = tmp_path / "run"
    args = [*TINY, "epochs=4", f"hydra.run.dir={run_dir}"]
    proc = start_cli(*args, cwd=tmp_path, fault="sweep:2:SIGHUP", command=("nohup",))  # SIGHUP in sweep 2
    stderr = proc.communicate(timeout=300)[1]
    assert proc.returncode == 0, stderr
    assert json.loads((run_dir / SUMMARY_FILE).read_text())["status"] == "completed"
