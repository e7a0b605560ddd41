"""Hyperparameter search with Optuna: the ``hydra/sweeper=optuna`` sweeper, its trials' pruner, its report.

``bcd-train -m hydra/sweeper=optuna 'gamma=tag(log, interval(0.01, 100))' alpha=1,5`` runs a study: each trial
is an ordinary job folder ``SWEEP_DIR/N`` (N the trial's number) whose overrides are the trial's values, and
its value is a field of the job's summary.json (``hydra.sweeper.objective``). The study lives in
``SWEEP_DIR/optuna.db`` (SQLite), so the same command with ``hydra.sweep.dir=SWEEP_DIR`` continues it: the
finished trials are kept, a trial a stop or a kill left unfinished is marked failed and its values tried
again, until ``n_trials`` trials are complete or pruned. The search space is written in Hydra's override
syntax (``interval``, ``tag(log, ...)``, ``int(...)``, ``choice``, ``a,b,c``, ``range``) and read with
Hydra's public override parser. Optuna is imported only where a study is opened, so that a run outside a
search pays nothing for it.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.core.utils import JobReturn, JobStatus
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, RunMode, TaskFunction
from omegaconf import DictConfig, OmegaConf

from bcd_cli.errors import ConfigError
from bcd_cli.run.folders import MULTIRUN_FILE, STUDY_FILE
from bcd_cli.run.observers import Pruned, RunObserver
from bcd_cli.run.records import read_summary

if TYPE_CHECKING:
    import optuna

log = logging.getLogger(__name__)

SWEEPER_TARGET = "hydra_plugins.bcd_cli_optuna.OptunaSweeper"  # the _target_ of conf/hydra/sweeper/optuna.yaml
TRIALS_FILE = "study_trials.csv"
BEST_FILE = "study_best.json"
HISTORY_FILE = "study_history.png"
IMPORTANCES_FILE = "study_importances.png"
SLICE_FILE = "study_slice.png"
# summary.json field -> the direction in which it improves
OBJECTIVES = {"best_test_acc": "maximize", "final_test_acc": "maximize", "final_objective": "minimize"}
SAMPLERS = ("tpe", "random")
PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
}


# ------------------------------------------------------------------------------------------------ the settings


@dataclass(frozen=True)
class Settings:
    """The sweeper's settings (``hydra.sweeper`` of conf/hydra/sweeper/optuna.yaml), checked."""

    n_trials: int = 20
    n_jobs: int = 1
    objective: str = "best_test_acc"
    direction: str = "maximize"
    sampler: str = "tpe"
    seed: int | None = None
    storage: str | None = None
    study_name: str | None = None
    pruner: str = "none"
    pruner_args: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 20
    params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, node: Mapping[str, Any]) -> Settings:
        """The settings of ``node``; ConfigError (naming ``hydra.sweeper.KEY``) for a value out of range."""
        plain = node if isinstance(node, DictConfig) else OmegaConf.create(dict(node))  # Hydra passes DictConfigs
        raw: dict[str, Any] = OmegaConf.to_container(plain, resolve=True)  # type: ignore[assignment]
        n_trials = _whole(raw, "n_trials", 20)
        objective = str(raw.get("objective") or "best_test_acc")
        if objective not in OBJECTIVES:
            raise ConfigError("hydra.sweeper.objective", objective, f"one of {', '.join(OBJECTIVES)}")
        direction = str(raw.get("direction") or OBJECTIVES[objective])
        _one_of("direction", direction, ("maximize", "minimize"))
        sampler, pruner = str(raw.get("sampler") or "tpe"), str(raw.get("pruner") or "none")
        _one_of("sampler", sampler, SAMPLERS)
        _one_of("pruner", pruner, tuple(PRUNERS))
        seed = raw.get("seed")
        if seed is not None and not isinstance(seed, int):
            raise ConfigError("hydra.sweeper.seed", seed, "an integer, or null for a random start")
        args = raw.get("pruner_args") or {}
        if not isinstance(args, dict):
            raise ConfigError("hydra.sweeper.pruner_args", args, "a mapping of the pruner's arguments")
        params = raw.get("params") or {}
        if not isinstance(params, dict):
            raise ConfigError("hydra.sweeper.params", params, "a mapping of keys to search spaces")
        return cls(
            n_trials=n_trials, n_jobs=_whole(raw, "n_jobs", 1), objective=objective, direction=direction,
            sampler=sampler, seed=seed, storage=raw.get("storage") or None, study_name=raw.get("study_name") or None,
            pruner=pruner, pruner_args={str(k): v for k, v in args.items()},
            max_failures=_whole(raw, "max_failures", n_trials), params={str(k): str(v) for k, v in params.items()},
        )  # fmt: skip

    def storage_url(self, sweep_dir: Path) -> str:
        """Where the study lives: ``storage``, else the SQLite file ``optuna.db`` of the sweep folder."""
        return self.storage or f"sqlite:///{Path(sweep_dir).resolve() / STUDY_FILE}"


def _whole(raw: Mapping[str, Any], key: str, default: int) -> int:
    value = raw.get(key)
    value = default if value is None else value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"hydra.sweeper.{key}", value, "a whole number of at least 1")
    return value


def _one_of(key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ConfigError(f"hydra.sweeper.{key}", value, f"one of {', '.join(allowed)}")


def is_search(hydra_node: Any) -> bool:
    """Whether a config's ``hydra`` node runs this module's sweeper."""
    return str(OmegaConf.select(hydra_node, "sweeper._target_", default="") or "") == SWEEPER_TARGET


# -------------------------------------------------------------------------------------------- the search space


@dataclass(frozen=True)
class Param:
    """One searched key: a float or integer range (on a log scale when ``log``), or categorical ``choices``
    (their text as written, passed on to the job as typed)."""

    key: str  # the override's key as written (``+key`` adds it)
    kind: str  # float, int or categorical
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    step: int = 1
    choices: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The parameter's name in the study: the config key."""
        return self.key.lstrip("+~")

    def first(self) -> str:
        """The override of the value the up-front check composes: the lower bound, or the first choice."""
        value = (
            self.choices[0] if self.kind == "categorical" else _text(int(self.low) if self.kind == "int" else self.low)
        )
        return f"{self.key}={value}"

    def describe(self) -> str:
        """The space in words (what a continued study compares with the one it started with)."""
        if self.kind == "categorical":
            return f"choice({', '.join(self.choices)})"
        scale = "log " if self.log else ""
        step = f" step {self.step}" if self.kind == "int" and self.step != 1 else ""
        return f"{scale}{self.kind} [{_text(self.low)}, {_text(self.high)}]{step}"

    def suggest(self, trial: optuna.trial.Trial) -> str:
        """The trial's value of this key, as an override."""
        if self.kind == "categorical":
            value: Any = trial.suggest_categorical(self.name, list(self.choices))
        elif self.kind == "int":
            value = trial.suggest_int(self.name, int(self.low), int(self.high), step=self.step, log=self.log)
        else:
            value = trial.suggest_float(self.name, self.low, self.high, log=self.log)
        return f"{self.key}={_text(value)}"


def _text(value: Any) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def parse_space(params: Mapping[str, str], arguments: Sequence[str]) -> tuple[dict[str, Param], list[str]]:
    """The searched keys and the fixed overrides of ``hydra.sweeper.params`` followed by the command line's
    ``arguments`` (a key given twice takes its later value). ConfigError for a space that cannot be searched."""
    lines = [*(f"{k}={v}" for k, v in params.items()), *arguments]
    space: dict[str, Param] = {}
    fixed: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(lines):
        key = o.get_key_element()
        space.pop(key, None)
        fixed.pop(key, None)
        if not o.is_sweep_override():
            fixed[key] = f"{key}={o.get_value_element_as_str()}"
        elif o.is_hydra_override():
            raise ConfigError(key, _typed(o), "one value: Hydra's own settings (hydra.*) cannot be searched")
        else:
            space[key] = _param(o)
    return space, list(fixed.values())


def _typed(o: Override) -> str:
    return (o.input_line or "").partition("=")[2]


def _param(o: Override) -> Param:
    """The Param of one sweep override; ConfigError naming its key for a space Optuna cannot search."""
    key, value = o.get_key_element(), o.value()
    log_scale = "log" in getattr(value, "tags", set())
    if isinstance(value, IntervalSweep):
        low: Any = value.start
        high: Any = value.end
        kind = "int" if isinstance(low, int) and isinstance(high, int) else "float"
        if not low < high:
            raise ConfigError(key, _typed(o), "an interval(low, high) with low < high")
        if log_scale and low <= 0:
            raise ConfigError(key, _typed(o), "a log-scale interval with both bounds > 0")
        return Param(key, kind, low=low, high=high, log=log_scale)
    if log_scale:
        raise ConfigError(key, _typed(o), "tag(log, ...) around an interval(low, high) only")
    if isinstance(value, RangeSweep):
        start: Any = value.start
        stop: Any = value.stop
        step: Any = value.step
        if all(isinstance(v, int) for v in (start, stop, step)) and step > 0:
            if stop <= start:
                raise ConfigError(key, _typed(o), "a range(start, stop[, step]) of at least one value")
            return Param(key, "int", low=start, high=start + step * ((stop - 1 - start) // step), step=step)
    if isinstance(value, ChoiceSweep | RangeSweep):
        choices = tuple(dict.fromkeys(str(v) for v in o.sweep_string_iterator()))
        if not choices:
            raise ConfigError(key, _typed(o), "a choice of at least one value")
        return Param(key, "categorical", choices=choices)
    raise ConfigError(key, _typed(o), "interval(...), tag(log, interval(...)), int(interval(...)), choice(...), "
                      "a,b,c or range(...)")  # fmt: skip


def space_text(space: Mapping[str, Param]) -> dict[str, str]:
    return {p.name: p.describe() for p in space.values()}


# ------------------------------------------------------------------------------------------------- the study


def study_name(settings: Settings, sweep_dir: Path) -> str:
    """``study_name``, else the one study the sweep folder's own storage holds, else the sweep folder's name."""
    if settings.study_name:
        return settings.study_name
    if settings.storage is None and (Path(sweep_dir) / STUDY_FILE).exists():
        import optuna

        names = optuna.study.get_all_study_names(settings.storage_url(sweep_dir))
        if len(names) == 1:
            return names[0]
    return Path(sweep_dir).resolve().name


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("sqlalchemy").setLevel(logging.WARNING)  # its SQL, which a root logger at INFO would show
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def make_pruner(settings: Settings) -> optuna.pruners.BasePruner:
    """The pruner ``settings.pruner`` names, built with ``pruner_args``; ConfigError for arguments it refuses."""
    import optuna

    try:
        return getattr(optuna.pruners, PRUNERS[settings.pruner])(**settings.pruner_args)
    except (TypeError, ValueError) as err:
        allowed = f"arguments of the {settings.pruner} pruner: {err}"
        raise ConfigError("hydra.sweeper.pruner_args", settings.pruner_args, allowed) from None


def _sampler(settings: Settings, done: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler ``settings.sampler`` names. A seeded search continued over ``done`` trials already in its study
    is seeded with ``seed + done``: the first seed again would draw the first launch's points again."""
    import optuna

    seed = None if settings.seed is None else settings.seed + done
    if settings.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def check_continuation(settings: Settings, sweep_dir: Path, space: Mapping[str, Param]) -> None:
    """ConfigError when the sweep folder's study was started with another search space or objective: its trials
    would not be comparable with the new ones. A folder without a study passes."""
    study = _load(sweep_dir, settings)
    if study is not None:
        _compare(study, settings, space)


def _compare(study: optuna.Study, settings: Settings, space: Mapping[str, Param]) -> None:
    started = study.user_attrs.get("search_space")
    if started is not None and started != space_text(space):
        was = ", ".join(f"{k}: {v}" for k, v in started.items())
        raise ConfigError(
            "search space", ", ".join(f"{k}: {v}" for k, v in space_text(space).items()),
            f"the space study {study.study_name} was started with ({was}); give a new hydra.sweep.dir for a new one",
        )  # fmt: skip
    objective = study.user_attrs.get("objective")
    if objective is not None and (objective, study.direction.name.lower()) != (settings.objective, settings.direction):
        raise ConfigError(
            "hydra.sweeper.objective", settings.objective,
            f"{objective} ({study.direction.name.lower()}), as study {study.study_name} was started with",
        )  # fmt: skip


def open_study(settings: Settings, sweep_dir: Path, space: Mapping[str, Param]) -> optuna.Study:
    """The study of the sweep folder, made or continued; trials a stopped or killed launch left running are
    settled from their job folders (see :func:`settle`)."""
    import optuna

    _quiet_optuna()
    direction: Literal["maximize", "minimize"] = "maximize" if settings.direction == "maximize" else "minimize"
    study = optuna.create_study(
        storage=settings.storage_url(sweep_dir), study_name=study_name(settings, sweep_dir), direction=direction,
        sampler=_sampler(settings), pruner=make_pruner(settings), load_if_exists=True,
    )  # fmt: skip
    _compare(study, settings, space)
    if study.trials:
        study.sampler = _sampler(settings, len(study.trials))
    if "search_space" not in study.user_attrs:
        study.set_user_attr("search_space", space_text(space))
        study.set_user_attr("objective", settings.objective)
    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in running:
        settle(study, trial.number, sweep_dir, settings.objective)
    if running:
        log.info("continued study %s: %d unfinished trial(s) settled", study.study_name, len(running))
    return study


def settle(study: optuna.Study, number: int, sweep_dir: Path, objective: str, job_ok: bool = True) -> str:
    """Tells the study how trial ``number`` ended, from its job folder's summary.json, and returns the state.

    completed: COMPLETE with the objective's value (FAIL when it is not a finite number); pruned: PRUNED;
    failed, or a job that raised (``job_ok`` False): FAIL. A job that did not finish (interrupted, killed,
    never started) is FAIL and its values are queued to be tried again by the next trial.
    """
    import optuna

    State = optuna.trial.TrialState
    summary = read_summary(Path(sweep_dir) / str(number)) or {}
    status = summary.get("status") if job_ok else "failed"
    value = summary.get(objective)
    if status == "completed" and isinstance(value, int | float) and math.isfinite(value):
        study.tell(number, float(value))
        return State.COMPLETE.name
    if status == "pruned":
        study.tell(number, state=State.PRUNED)
        return State.PRUNED.name
    frozen = study.tell(number, state=State.FAIL)
    if status not in ("completed", "failed"):  # the run did not end: its values have not been judged
        study.enqueue_trial(frozen.params, user_attrs={"retry_of": number})
        log.info("trial %d did not finish (%s): its values are tried again", number, status or "not started")
    return State.FAIL.name


def finished(study: optuna.Study) -> int:
    """The trials that count towards ``n_trials``: complete or pruned."""
    import optuna

    State = optuna.trial.TrialState
    return len(study.get_trials(deepcopy=False, states=(State.COMPLETE, State.PRUNED)))


# ----------------------------------------------------------------------------------------------- the sweeper


class OptunaSweeper(Sweeper):
    """Hydra's sweeper interface over an Optuna study (ask, launch the trials' jobs, tell).

    Hydra instantiates it from ``hydra.sweeper`` (its keys are :class:`Settings`); the class Hydra registers is
    the subclass in ``hydra_plugins.bcd_cli_optuna``.
    """

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = Settings.of(settings)
        self.hydra_context: HydraContext | None = None
        self.config: DictConfig | None = None
        self.launcher: Any = None
        self.failures = 0  # trials of this launch that failed

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> list[Sequence[JobReturn]]:
        """Asks batches of ``n_jobs`` trials and launches their jobs until ``n_trials`` are complete or pruned,
        or ``max_failures`` trials of this launch failed."""
        assert self.config is not None and self.launcher is not None
        settings, sweep_dir = self.settings, Path(str(self.config.hydra.sweep.dir))
        space, fixed = parse_space(settings.params, arguments)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / MULTIRUN_FILE)
        study = open_study(settings, sweep_dir, space)
        returns: list[Sequence[JobReturn]] = []
        while (done := finished(study)) < settings.n_trials and self.failures < settings.max_failures:
            trials = [study.ask() for _ in range(min(settings.n_jobs, settings.n_trials - done))]
            batch = []
            for trial in trials:
                trial.set_user_attr("job", str(trial.number))
                batch.append([*fixed, *(param.suggest(trial) for param in space.values())])
            try:
                results = self._launch([t.number for t in trials], batch)
            except BaseException:  # a stop signal: what finished is told, the rest is tried again next time
                for trial in trials:
                    settle(study, trial.number, sweep_dir, settings.objective)
                raise
            for trial, result in zip(trials, results, strict=True):
                state = settle(study, trial.number, sweep_dir, settings.objective, result.status == JobStatus.COMPLETED)
                self.failures += state == "FAIL"
            returns.append(results)
        if self.failures >= settings.max_failures:
            log.error("the search stopped: %d trials failed in this launch (hydra.sweeper.max_failures)", self.failures)
        return returns

    def _launch(self, numbers: list[int], batch: list[list[str]]) -> list[JobReturn]:
        """The jobs of ``batch``, numbered by their trials: in one launch when the numbers follow each other."""
        self.validate_batch_is_legal(batch)
        if numbers == list(range(numbers[0], numbers[0] + len(numbers))):
            return list(self.launcher.launch(batch, initial_job_idx=numbers[0]))
        return [
            r for n, job in zip(numbers, batch, strict=True) for r in self.launcher.launch([job], initial_job_idx=n)
        ]


def shortfall(folder: Path) -> str | None:
    """Why the search in ``folder`` ended before ``n_trials`` trials were complete or pruned; None when they are."""
    config = _saved_sweeper(folder)
    if config is None:
        return None
    settings = Settings.of(config)
    study = _load(folder, settings)
    if study is None:
        return None
    done = finished(study)
    if done >= settings.n_trials:
        return None
    failed = sum(t.state.name == "FAIL" for t in study.get_trials(deepcopy=False))
    return f"the search ended with {done} of {settings.n_trials} trials complete; {failed} failed (see {TRIALS_FILE})"


# ------------------------------------------------------------------------------------------------ the pruner


def pruners() -> list[RunObserver]:
    """The pruner of a search's trial; none outside a search (Optuna is not imported then) or with pruner none."""
    if not HydraConfig.initialized():
        return []
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN or not is_search(hydra):
        return []
    settings = Settings.of(hydra.sweeper)
    if settings.pruner == "none":
        return []
    return [TrialPruner(settings, Path(str(hydra.sweep.dir)), int(hydra.job.num))]


class TrialPruner:
    """Reports each sweep's test accuracy (the training objective for ``objective: final_objective``) to the
    trial as its intermediate value at step = the sweep, and ends the run (``Pruned``) when the study's pruner
    judges the trial not worth finishing. A study it cannot reach leaves the run alone, with a warning."""

    def __init__(self, settings: Settings, sweep_dir: Path, number: int) -> None:
        self.settings, self.sweep_dir, self.number = settings, sweep_dir, number
        self.trial: optuna.trial.Trial | None = None

    def start(self, spec: Any, out_dir: Path, start_sweep: int) -> None:
        import optuna

        _quiet_optuna()
        storage = optuna.storages.RDBStorage(self.settings.storage_url(self.sweep_dir))
        try:
            study = optuna.load_study(
                study_name=study_name(self.settings, self.sweep_dir), storage=storage,
                pruner=make_pruner(self.settings),
            )  # fmt: skip
            study_id = storage.get_study_id_from_name(study.study_name)
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except (KeyError, ConfigError) as err:
            log.warning("trial %d is not pruned: its study is not found (%s)", self.number, err)
            return
        self.trial = optuna.trial.Trial(study, trial_id)

    def sweep(self, row: dict[str, Any]) -> None:
        if self.trial is None or int(row["sweep"]) < 1:  # the initial point says nothing of the hyperparameters
            return
        value = row["objective"] if self.settings.objective == "final_objective" else row["test_acc"]
        if not math.isfinite(float(value)):
            return
        self.trial.report(float(value), step=int(row["sweep"]))
        if self.trial.should_prune():
            log.info("trial %d pruned after sweep %d", self.number, int(row["sweep"]))
            raise Pruned(f"trial {self.number} pruned after sweep {int(row['sweep'])}")

    def finish(self, status: str, summary: dict[str, Any], files: list[Path]) -> None:
        """The sweeper tells the study how the trial ended, from summary.json."""


# ------------------------------------------------------------------------------------------------ the report


def _saved_sweeper(folder: Path) -> dict[str, Any] | None:
    """The ``hydra.sweeper`` node of the sweep folder's multirun.yaml when it ran this module's sweeper."""
    try:
        saved = yaml.safe_load((Path(folder) / MULTIRUN_FILE).read_text())
        sweeper = saved["hydra"]["sweeper"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return sweeper if isinstance(sweeper, dict) and sweeper.get("_target_") == SWEEPER_TARGET else None


def is_study_folder(folder: Path) -> bool:
    """Whether ``folder`` is the sweep folder of a search (its study file, or a multirun.yaml that says so)."""
    return (Path(folder) / STUDY_FILE).exists() or _saved_sweeper(folder) is not None


def _load(folder: Path, settings: Settings | None = None) -> optuna.Study | None:
    import optuna

    _quiet_optuna()
    if settings is None:
        saved = _saved_sweeper(folder)
        try:
            settings = Settings.of(saved) if saved is not None else Settings()
        except ConfigError:
            settings = Settings()
    if settings.storage is None and not (Path(folder) / STUDY_FILE).exists():
        return None
    try:
        return optuna.load_study(study_name=study_name(settings, folder), storage=settings.storage_url(folder))
    except KeyError:
        return None


def write_study_report(folder: Path) -> list[Path]:
    """study_trials.csv, study_best.json and the study's figures for the search in ``folder``; nothing for
    another multirun. The figures a study cannot have yet (no complete trial; parameter importances with fewer
    than two complete trials or one parameter) are left out, with a note in study_best.json."""
    if not is_study_folder(folder):
        return []
    study = _load(folder)
    if study is None:
        return []
    folder = Path(folder)
    written = [folder / TRIALS_FILE, folder / BEST_FILE]
    trials_table(study).to_csv(written[0], index=False)
    notes: list[str] = []
    written += _figures(study, folder, notes)
    written[1].write_text(json.dumps(best_of(study, notes), indent=2, default=str) + "\n")
    return written


def trials_table(study: optuna.Study) -> Any:
    """One row per trial (Optuna's ``trials_dataframe``): number, state, value, each parameter, job folder, the
    trial it retries, seconds."""
    import pandas as pd

    columns = ["number", "state", "value", "job", "retry_of", "duration_seconds"]
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    if frame.empty:
        return pd.DataFrame(columns=columns)
    frame = frame.rename(columns={"user_attrs_job": "job", "user_attrs_retry_of": "retry_of"})
    frame["job"] = frame.get("job", "")
    frame["retry_of"] = frame["retry_of"].astype("Int64") if "retry_of" in frame else pd.NA  # whole trial numbers
    frame["duration_seconds"] = frame.pop("duration").dt.total_seconds()
    params = [c for c in frame.columns if c.startswith("params_")]
    return frame[[*columns[:3], *params, *columns[3:]]]


def best_of(study: optuna.Study, notes: list[str]) -> dict[str, Any]:
    """The best trial's value, parameters, number and job folder (null before any trial is complete)."""
    out: dict[str, Any] = {
        "study": study.study_name, "objective": study.user_attrs.get("objective"),
        "direction": study.direction.name.lower(), "trials": len(study.trials),
        "states": {s: sum(t.state.name == s for t in study.trials) for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
    }  # fmt: skip
    try:
        best = study.best_trial
    except ValueError:
        out |= {"best_value": None, "best_params": None, "best_trial": None, "best_job": None}
    else:
        out |= {"best_value": best.value, "best_params": best.params, "best_trial": best.number,
                "best_job": best.user_attrs.get("job", str(best.number))}  # fmt: skip
    return out | {"notes": notes}


def _figures(study: optuna.Study, folder: Path, notes: list[str]) -> list[Path]:
    """Optuna's optimisation history, parameter importances and slice plot, as far as the study allows."""
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    names = {k for t in complete for k in t.params}
    plots: list[tuple[str, Any, bool, str]] = [
        (HISTORY_FILE, vis.plot_optimization_history, len(complete) >= 1, "no complete trial yet")
    ]
    plots.append((IMPORTANCES_FILE, vis.plot_param_importances, len(complete) >= 2 and len(names) > 1,
                  "parameter importances need two complete trials and two searched keys"))  # fmt: skip
    plots.append((SLICE_FILE, vis.plot_slice, len(complete) >= 1, "no complete trial yet"))
    written = []
    for name, plot, possible, why in plots:
        if not possible:
            notes.append(f"{name} not drawn: {why}")
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            first = axes.flat[0] if hasattr(axes, "flat") else axes
            figure: Any = first.get_figure()
            figure.savefig(folder / name, dpi=110, bbox_inches="tight")
            plt.close(figure)
        except Exception as err:  # a figure must not cost the tables
            notes.append(f"{name} not drawn: {type(err).__name__}: {err}")
            continue
        written.append(folder / name)
    return written
