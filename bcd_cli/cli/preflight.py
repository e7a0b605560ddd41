"""Composes and validates every job of a ``bcd-train`` command line before Hydra starts any of them.

Hydra reports a composition error in several lines and exits with status 1, after creating the sweep folder of
a multirun, whose jobs it validates one at a time, as each starts. ``preflight`` composes each job through
Hydra's public Compose API, expanding a multirun as Hydra's basic sweeper does, and turns the first problem
into a one-line ``ConfigError`` (exit status 2): from what the exception carries (the missing config, the key
OmegaConf names, the type it expected) or, where it carries nothing, from the override at fault, found by
composing growing prefixes of the overrides. ``HYDRA_FULL_ERROR=1`` re-raises Hydra's own exception instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import enum
import io
import itertools
import os
import shutil
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra import compose
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, ValueType
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
    ValidationError,
)

from bcd_cli.app import BASIC_SWEEPER, CONFIG_NAME, config_dir, initialized, quoted
from bcd_cli.errors import ConfigError, first_line
from bcd_cli.run.spec import OPTIONAL_KEYS, PATH_KEYS, validate
from bcd_cli.search import study

SLURM_COMMANDS = ("sbatch", "srun")  # what submitit's SLURM executor calls
MULTIRUN = "hydra.mode=MULTIRUN"  # what Hydra adds to the overrides of a multirun
_UNRESOLVABLE = (InterpolationResolutionError, GrammarParseError)
_ABSENT = object()
_TYPE_NAMES = {bool: "a bool (true or false)", int: "an integer", float: "a number", str: "a string"}


class CompositionError(ConfigError):
    """A command line Hydra cannot compose: ``key``, ``value`` and ``allowed`` as in ConfigError.

    ``text`` replaces the ``key=value is invalid: allowed`` line where that form does not fit
    (bad override syntax, a deletion).
    """

    def __init__(self, key: str, value: object, allowed: str, text: str | None = None) -> None:
        super().__init__(key, value, allowed)
        if text is not None:
            self.args = (text,)


class JobError(ConfigError):
    """``error`` in job ``job`` of a multirun, whose swept overrides are ``overrides``."""

    def __init__(self, job: int, overrides: Sequence[str], error: ConfigError) -> None:
        super().__init__(error.key, error.value, error.allowed)
        self.job, self.overrides = job, list(overrides)
        label = f" ({' '.join(overrides)})" if overrides else ""
        self.args = (f"job {job}{label}: {error}",)


@dataclass(frozen=True)
class Launch:
    """What a command line launches: a run or a multirun, the folder it writes into (absolute, resolved as
    Hydra resolves it) and the relative paths of its config (key -> value) that the run folder should
    record as absolute paths; ``jobs`` holds the overrides of each job in job order, as its
    ``.hydra/overrides.yaml`` will (empty for a sweeper other than Hydra's basic one); ``search`` says that
    an Optuna search (bcd_cli.search.study) runs, whose sweep folder may hold the study it continues."""

    multirun: bool
    folder: Path
    relative_paths: dict[str, str]
    jobs: list[list[str]] = field(default_factory=list)
    search: bool = False


def preflight(argv: list[str]) -> Launch | None:
    """Composes and validates every job ``bcd-train argv`` would run; raises ConfigError for the first bad one.

    Does nothing when ``argv`` runs no job (``--help``, ``--hydra-help``, ``--cfg``, ``--info``,
    ``--shell-completion``, ``--version``), when it is not a command line Hydra accepts (Hydra reports that)
    and with ``--config-path``, whose search path Hydra derives from the module that calls it.
    """
    args = _parse_args(argv)
    if args is None or not _runs_jobs(args):
        return None
    name, main, extra = args.config_name or CONFIG_NAME, config_dir(), None
    if args.config_dir is not None:
        extra = Path(os.path.abspath(args.config_dir))
        if not extra.is_dir():
            raise ConfigError("--config-dir", args.config_dir, "an existing folder of configs (it is not one)")
        if not (main / f"{name}.yaml").is_file() and (extra / f"{name}.yaml").is_file():
            main, extra = extra, main  # Hydra finds a primary config in the main folder only
    with initialized(main):
        return _Preflight(name, extra).check(list(args.overrides), multirun=args.multirun)


def _arguments() -> argparse.ArgumentParser:
    """The command-line flags of ``@hydra.main`` (see ``bcd-train --hydra-help``), each read, none acted on."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("overrides", nargs="*")
    for flags in "--help -h|--hydra-help|--version|--resolve|--run -r|--multirun -m|--shell-completion -sc".split("|"):
        parser.add_argument(*flags.split(), action="store_true")
    for flags in "--cfg -c|--package -p|--config-path -cp|--config-name -cn|--config-dir -cd".split("|"):
        parser.add_argument(*flags.split())
    parser.add_argument("--experimental-rerun")
    parser.add_argument("--info", "-i", nargs="?", const="all")
    return parser


def _parse_args(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` parsed as Hydra parses it, silently; None where Hydra would refuse it (it says why)."""
    parser = _arguments()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            args, unknown = parser.parse_known_args(argv)
        except (SystemExit, argparse.ArgumentError):
            return None
    return None if unknown else args


def _runs_jobs(args: argparse.Namespace) -> bool:
    shows = args.help or args.hydra_help or args.version or args.resolve or args.shell_completion
    if shows or args.cfg is not None or args.info is not None:
        return False
    if args.experimental_rerun is not None or (args.run and args.multirun):
        return False  # Hydra reruns a pickled job, or refuses --run with --multirun, itself
    return args.config_path is None


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class _Preflight:
    """The checks of one command line, with Hydra initialized over bcd-train's configs (and ``--config-dir``)."""

    def __init__(self, config_name: str, extra: Path | None) -> None:
        self.config_name = config_name
        self.loader = GlobalHydra.instance().config_loader()
        self.searchpath: list[str] = []  # the override that adds --config-dir to the config search path
        if extra is not None:
            self.searchpath = [self._searchpath_override(str(extra))]

    def _searchpath_override(self, path: str) -> str:
        """``hydra.searchpath`` with ``path`` first, then the folders the primary config lists itself."""
        listed: Any = []
        with contextlib.suppress(Exception):
            listed = OmegaConf.to_container(self.compose([]).hydra.searchpath) or []
        entries = [f"file://{path}", *(str(entry) for entry in listed)]
        return f"hydra.searchpath=[{','.join(quoted(entry) for entry in entries)}]"

    def compose(self, overrides: list[str]) -> DictConfig:
        """The config, ``hydra`` node included, composed with ``overrides`` as ``hydra.compose`` composes it."""
        return compose(self.config_name, [*self.searchpath, *overrides], return_hydra_config=True)

    def check(self, overrides: list[str], *, multirun: bool) -> Launch:
        """A run: its config, folder and values. A multirun: its sweep config, then each job."""
        parsed = self._parse(overrides)
        self._check_added_keys(parsed)
        if not multirun:
            launch = self._check_run(parsed)
            if launch is not None:
                return launch
        return self._check_multirun(parsed)

    def _parse(self, overrides: list[str]) -> list[Override]:
        try:
            return OverridesParser.create(config_loader=self.loader).parse_overrides(overrides)
        except OverrideParseException as err:
            if _full_error():
                raise
            raise _syntax(err.override, err.message) from None

    def _check_run(self, parsed: list[Override]) -> Launch | None:
        """A single run; None where the config itself sets ``hydra.mode=MULTIRUN`` (Hydra then sweeps)."""
        fixed = [o.input_line or "" for o in parsed if not o.is_sweep_override()]
        error: Exception | None = None
        try:
            cfg = self.compose(fixed)
        except Exception as err:
            error = err
        if error is None and cfg.hydra.mode == RunMode.MULTIRUN:
            return None
        for o in parsed:
            if o.is_sweep_override():
                if _full_error():
                    self.compose([x.input_line or "" for x in parsed])  # raises Hydra's own exception
                raise _sweep_in_a_run(o)
        if error is not None:
            self._refuse(error, fixed)
        folder, task = self._check_job(cfg, "hydra.run.dir")
        return Launch(False, folder, _relative_paths(task, parsed), [[o.input_line or "" for o in _task(parsed)]])

    def _check_added_keys(self, parsed: list[Override]) -> None:
        """``+key=value`` and ``++key=value`` that add a key no part of bcd-train reads are refused: the run
        would otherwise ignore them without a word. Config groups and Hydra's own settings are Hydra's."""
        added = [
            o for o in parsed
            if (o.is_add() or o.is_force_add()) and not o.key_or_group.startswith("hydra.")
            and o.package is None and not self._is_group(o.key_or_group)
        ]  # fmt: skip
        if not added:
            return
        keys = {o.key_or_group for o in added}
        others = [o.input_line or "" for o in parsed if o.key_or_group not in keys and not o.is_sweep_override()]
        try:
            base = self.compose(others)
        except Exception:
            return  # the composition itself fails: that error is reported next
        for o in added:
            key = o.key_or_group
            if key in OPTIONAL_KEYS or OmegaConf.select(base, key, default=_ABSENT) is not _ABSENT:
                continue  # ++key of a key that exists sets it; +key of one that exists is Hydra's error
            parent_key, _, leaf = key.rpartition(".")
            parent = OmegaConf.select(base, parent_key) if parent_key else base
            keys_there = [str(k) for k in parent if str(k) != "hydra"] if isinstance(parent, DictConfig) else []
            allowed = "a key bcd-train reads; it reads no such key and would ignore it"
            if match := difflib.get_close_matches(leaf, keys_there, n=1):
                allowed += f"; did you mean {parent_key + '.' if parent_key else ''}{match[0]}={_as_text(o)}?"
            elif isinstance(parent, DictConfig):
                allowed += f" ({_key_list(parent, parent_key)})"
            optional = ", ".join(f"+{k}" for k in OPTIONAL_KEYS)
            allowed += f"; the keys that may be added with + are {optional}"
            raise ConfigError((o.input_line or key).partition("=")[0], o.value(), allowed)

    def _check_multirun(self, parsed: list[Override]) -> Launch:
        """The sweep config (its folder, launcher and sweeper), then each job of the sweep as Hydra runs it."""
        for o in parsed:
            if o.is_hydra_override() and o.is_sweep_override():
                key, value = o.get_key_element(), _as_text(o)
                raise ConfigError(key, value, "one value: Hydra's own settings (hydra.*) cannot be swept")
        master = self._master(parsed)
        HydraConfig.instance().set_config(master)
        sweep_dir = Path(os.path.abspath(str(_resolve(master, "hydra.sweep.dir"))))
        _check_launcher(master)
        if study.is_search(master.hydra):
            return self._check_search(master, parsed, sweep_dir)
        if master.hydra.runtime.choices.get("hydra/sweeper") != BASIC_SWEEPER:
            return Launch(True, sweep_dir, {})  # another sweeper plugin expands the sweep its own way
        jobs, swept = self._expand(master, parsed)
        relative: dict[str, str] = {}
        for num, job in enumerate(jobs):
            label = [o for o in job if o.split("=", 1)[0] in swept]
            task = self._check_sweep_job(master, parsed, num, job, label)
            relative |= {k: v for k, v in _relative_paths(task, parsed).items() if k not in swept}
        return Launch(True, sweep_dir, relative, jobs)

    def _check_sweep_job(
        self, master: DictConfig, parsed: list[Override], num: int, job: list[str], label: list[str]
    ) -> DictConfig:
        """Job ``num`` of a multirun, with overrides ``job``, composed and validated as Hydra's launcher
        composes it; returns its config without ``hydra``. JobError (naming the ``label`` overrides) if bad."""
        hydra_overrides = [*(o.input_line or "" for o in parsed if o.is_hydra_override()), MULTIRUN]
        try:
            cfg = self._compose_or_refuse([*hydra_overrides, *job])
            OmegaConf.copy_cache(from_config=master, to_config=cfg)  # the same ${now:} as the sweep's
            with open_dict(cfg):  # as Hydra's basic launcher
                cfg.hydra.job.id = num
                cfg.hydra.job.num = num
            _, task = self._check_job(cfg, "hydra.sweep.dir", "hydra.sweep.subdir")
        except ConfigError as err:
            raise JobError(num, label, err) from None
        return task

    def _check_search(self, master: DictConfig, parsed: list[Override], sweep_dir: Path) -> Launch:
        """An Optuna search: its settings and search space, a study its sweep folder holds (started with the
        same space and objective), and one job, at the lower bound of every interval and the first of every
        choice, so that a bad key or value is refused before the study starts."""
        settings = study.Settings.of(master.hydra.sweeper)
        space, fixed = study.parse_space(settings.params, [o.input_line or "" for o in _task(parsed)])
        study.make_pruner(settings)
        study.check_continuation(settings, sweep_dir, space)
        first = [param.first() for param in space.values()]
        task = self._check_sweep_job(master, parsed, 0, [*fixed, *first], first)
        relative = {k: v for k, v in _relative_paths(task, parsed).items() if k not in space}
        return Launch(True, sweep_dir, relative, search=True)

    def _master(self, parsed: list[Override]) -> DictConfig:
        """The sweep's own config: composed without the sweeps, or, where a swept group has no default,
        with the first value of each."""
        fixed = [o.input_line or "" for o in parsed if not o.is_sweep_override()] + [MULTIRUN]
        values = [(o.get_key_element(), next(iter(o.sweep_string_iterator()), None)) for o in parsed
                  if o.is_sweep_override() and o.is_discrete_sweep()]  # fmt: skip
        first = [f"{key}={value}" for key, value in values if value is not None]
        try:
            return self.compose(fixed)
        except Exception as err:
            if not first:
                self._refuse(err, fixed)
        return self._compose_or_refuse([*fixed, *first])

    def _expand(self, master: DictConfig, parsed: list[Override]) -> tuple[list[list[str]], set[str]]:
        """The overrides of each job, in the order of Hydra's basic sweeper: ``hydra.sweeper.params`` of the
        config, then the command line's; a key given twice takes the later value at the earlier place."""
        params = OmegaConf.to_container(master.hydra.sweeper.params or OmegaConf.create())
        assert isinstance(params, dict)
        arguments = [*(f"{k!s}={v}" for k, v in params.items()), *(o.input_line or "" for o in _task(parsed))]
        choices: dict[str, list[str]] = {}
        swept: set[str] = set()
        for o in self._parse(arguments):
            key = o.get_key_element()
            if not o.is_sweep_override():
                choices[key] = [f"{key}={o.get_value_element_as_str()}"]
                swept.discard(key)
            elif o.is_discrete_sweep():
                choices[key] = [f"{key}={value}" for value in o.sweep_string_iterator()]
                swept.add(key)
            else:
                allowed = "a list (a,b,c), choice(...), range(...) or glob(...) to sweep over"
                raise ConfigError(key, _as_text(o), allowed)
        return [list(job) for job in itertools.product(*choices.values())], swept

    def _check_job(self, cfg: DictConfig, *dir_keys: str) -> tuple[Path, DictConfig]:
        """Resolves what Hydra resolves before it runs a job (its folder, then its config) and validates it;
        returns the folder (absolute) and the job's config without ``hydra``."""
        HydraConfig.instance().set_config(cfg)
        folder = os.path.join(*(str(_resolve(cfg, key)) for key in dir_keys))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(folder)
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])
        OmegaConf.set_struct(task, True)
        _resolve(task)
        validate(task)
        return Path(cfg.hydra.runtime.output_dir), task

    def _compose_or_refuse(self, overrides: list[str]) -> DictConfig:
        try:
            return self.compose(overrides)
        except Exception as err:
            self._refuse(err, overrides)

    def _refuse(self, err: Exception, overrides: list[str]) -> NoReturn:
        """Raises the one-line ConfigError for ``err``; ``err`` itself under HYDRA_FULL_ERROR=1, or if it is a bug."""
        if _full_error() or not isinstance(err, HydraException | OmegaConfBaseException | ValueError | KeyError):
            raise err
        parsed = OverridesParser.create(config_loader=self.loader).parse_overrides(overrides)
        for exc in (err, err.__cause__):
            for kind, explain in _EXPLAINED:
                if isinstance(exc, kind) and (refusal := explain(self, exc, parsed)) is not None:
                    raise refusal from None
        raise self._by_override(err, parsed) from None

    def _missing_option(self, err: MissingConfigException, parsed: list[Override]) -> ConfigError | None:
        """A config that is not there: the primary config (``--config-name``) or an option of a group."""
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        if not group:
            primaries = self.loader.get_group_options("", config_name=None, overrides=self.searchpath)
            return ConfigError("--config-name", option, f"one of {', '.join(p for p in primaries if p[0] != '_')}")
        options = list(err.options or self._options(group))
        allowed = f"one of {', '.join(options)}" if options else f"no config in {group} (the group is empty)"
        for o in parsed:
            if o.key_or_group == group and not o.is_delete() and option in _names(o.value()):
                return ConfigError(o.get_key_element(), o.value(), allowed)
        culprit = self._culprit(parsed)
        asker = culprit[0].input_line if culprit else f"the defaults list of {self.config_name}"
        return ConfigError(group, option, f"{allowed} (asked for by {asker})")

    def _unknown_key(self, err: ConfigKeyError | ConfigAttributeError, parsed: list[Override]) -> ConfigError | None:
        """An override of a key the config does not have: the closest key, the keys there."""
        if not isinstance(err.full_key, str) or not err.full_key:
            return None
        parent_key, _, leaf = err.full_key.rpartition(".")
        parent = err.parent_node
        keys = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
        allowed = "no such key"
        if match := difflib.get_close_matches(leaf, keys, n=1):
            allowed += f"; did you mean {parent_key + '.' if parent_key else ''}{match[0]}?"
        if keys:
            where = _key_list(parent, parent_key)
        else:
            where = f"{parent_key} has no keys below it" if parent_key else "the config is empty"
        return ConfigError(err.full_key, _value_of(parsed, err.full_key, None), f"{allowed} ({where})")

    def _invalid_value(self, err: ValidationError, parsed: list[Override]) -> ConfigError | None:
        """A value of the wrong type for a typed key (Hydra's own settings): the type the key holds."""
        if not isinstance(err.full_key, str) or not err.full_key:
            return None
        return ConfigError(err.full_key, _value_of(parsed, err.full_key, err.value), _expected_type(err))

    def _unset_variable(self, err: KeyError, parsed: list[Override]) -> ConfigError | None:
        """``hydra.job.env_copy`` names a variable the environment does not have: Hydra copies it while composing."""
        name = err.args[0] if err.args else None
        if isinstance(err, OmegaConfBaseException) or not isinstance(name, str) or name in os.environ:
            return None
        value = _value_of(parsed, "hydra.job.env_copy", [name])
        return ConfigError("hydra.job.env_copy", value, f"names of set environment variables ({name} is not set)")

    def _by_override(self, err: Exception, parsed: list[Override]) -> ConfigError:
        """An error that names nothing: the override at fault, judged against the config composed without it."""
        found = self._culprit(parsed)
        if found is None:
            return self._missing_choice(err, parsed)
        o, base = found
        reason = first_line(err)
        if not o.key_or_group:
            return _syntax(o.input_line or "", "no key before '='")
        if self._is_group(o.key_or_group):
            return self._group_override(o, base, reason)
        return _key_override(o, base, reason)

    def _culprit(self, parsed: list[Override]) -> tuple[Override, DictConfig] | None:
        """The first override whose addition makes the composition fail, and the config composed before it."""
        base = None
        for end in range(len(parsed) + 1):
            try:
                cfg = self.compose([o.input_line or "" for o in parsed[:end]])
            except Exception:
                return (parsed[end - 1], base) if base is not None else None
            base = cfg
        return None

    def _missing_choice(self, err: Exception, parsed: list[Override]) -> ConfigError:
        """A config group without a default (``???``) that the command line does not choose; else Hydra's reason."""
        overrides = [*self.searchpath, *(o.input_line or "" for o in parsed)]
        with contextlib.suppress(Exception):  # composed as for a multirun, which leaves such a group out
            cfg = self.loader.load_configuration(
                self.config_name, overrides, run_mode=RunMode.MULTIRUN, validate_sweep_overrides=False
            )
            choices = cfg.hydra.runtime.choices
            for group in choices:
                if OmegaConf.is_missing(choices, group):
                    options = self._options(str(group).split("@")[0])
                    return ConfigError(str(group), "???", f"one of {', '.join(options)} (it has no default)")
        reason = first_line(err)
        line = " ".join(o.input_line or "" for o in parsed)
        return CompositionError("overrides", line, reason, text=f"invalid command line: {reason}")

    def _group_override(self, o: Override, base: DictConfig, reason: str) -> ConfigError:
        """An override of config group ``o.key_or_group`` that Hydra refused, against the choices of ``base``."""
        group, typed, element = o.key_or_group, _as_text(o), o.get_key_element()
        choice = group if o.package is None else f"{group}@{o.package}"
        choices = base.hydra.runtime.choices
        chosen = choice in choices
        if o.is_force_add():
            return ConfigError(element, o.value(), f"a config group: choose an option with {choice}={typed}, not ++")
        if o.is_delete():
            allowed = reason if not typed else f"{choice} is {choices[choice]}; delete it with ~{choice}"
            allowed = allowed if chosen else "no such entry in the defaults list"
            return CompositionError(element, typed or None, allowed, text=f"{o.input_line} is invalid: {allowed}")
        if not isinstance(o.value(), str | list):
            options = ", ".join(self._options(group))
            return ConfigError(element, o.value(), f"one of {options} (a config name; ~{choice} removes the group)")
        if o.is_add() and chosen:
            allowed = f"{choice} is already in the defaults list; choose it without the +: {choice}={typed}"
            return ConfigError(element, o.value(), allowed)
        if not chosen:
            near = [str(k) for k in choices if str(k).split("@")[0] == group]
            allowed = f"{choice} is not in the defaults list"
            allowed += f"; did you mean {' or '.join(sorted(near))}?" if near else ""
            return ConfigError(element, o.value(), f"{allowed} (add it with +{choice}={typed})")
        return ConfigError(element, o.value(), reason)

    def _is_group(self, name: str) -> bool:
        return not name or bool(self.loader.get_group_options(name, results_filter=None, overrides=self.searchpath))

    def _options(self, group: str) -> list[str]:
        return self.loader.get_group_options(group, overrides=self.searchpath)


_Explain = Callable[[_Preflight, Any, list[Override]], ConfigError | None]
# What each kind of exception, or the OmegaConf exception that caused it, carries to name the key and what is
# allowed; the first kind that explains the error gives its line. Those no kind explains: _Preflight._by_override.
_EXPLAINED: list[tuple[type[BaseException] | tuple[type[BaseException], ...], _Explain]] = [
    (MissingConfigException, _Preflight._missing_option),
    ((ConfigKeyError, ConfigAttributeError), _Preflight._unknown_key),
    (ValidationError, _Preflight._invalid_value),
    (KeyError, _Preflight._unset_variable),
]


def _key_override(o: Override, base: DictConfig, reason: str) -> ConfigError:
    """An override of config key ``o.key_or_group`` that Hydra refused, against its value in ``base``."""
    key, typed = o.key_or_group, _as_text(o)
    present = OmegaConf.select(base, key, default=_ABSENT, throw_on_missing=False)
    if o.is_add() and present is not _ABSENT:
        return ConfigError(f"+{key}", o.value(), f"{key} already exists; set it without the +: {key}={typed}")
    if o.is_delete() and present is _ABSENT:
        parent_key = key.rpartition(".")[0]
        near = _key_list(OmegaConf.select(base, parent_key) if parent_key else base, parent_key)
        return CompositionError(f"~{key}", None, near, text=f"~{key} is invalid: no such key to delete ({near})")
    if o.is_delete() and typed:
        allowed = f"{key} is {present}; delete it with ~{key} (or ~{key}={present})"
        return CompositionError(f"~{key}", typed, allowed, text=f"~{key}={typed} is invalid: {allowed}")
    return CompositionError(key, typed, reason, text=f"{o.input_line} is invalid: {reason}")


def _task(parsed: list[Override]) -> list[Override]:
    """The overrides of the job's own config (not Hydra's): what ``.hydra/overrides.yaml`` records."""
    return [o for o in parsed if not o.is_hydra_override()]


def _sweep_in_a_run(o: Override) -> ConfigError:
    key, typed = o.get_key_element(), _as_text(o)
    if o.value_type == ValueType.SIMPLE_CHOICE_SWEEP:
        allowed = (
            f"one value per run; for a list write {key}=[{typed}], for a text quote it ({key}='{typed}'), "
            "to run one job per value add -m (--multirun)"
        )
        return ConfigError(key, typed, allowed)
    return ConfigError(key, typed, "a sweep: add -m (--multirun) to run one job per value")


def _relative_paths(task: DictConfig, parsed: list[Override]) -> dict[str, str]:
    """The path keys of ``task`` given on the command line as relative paths: key -> value as typed."""
    given = {o.key_or_group for o in parsed if not o.is_delete()}
    found = {}
    for key in PATH_KEYS:
        value = OmegaConf.select(task, key, default=None)
        if key in given and isinstance(value, str) and value and not os.path.isabs(os.path.expanduser(value)):
            found[key] = value
    return found


def _check_launcher(master: DictConfig) -> None:
    """A SLURM launcher needs SLURM's commands on this machine: submitit fails with a traceback without them."""
    if not str(OmegaConf.select(master, "hydra.launcher._target_") or "").endswith(".SlurmLauncher"):
        return
    missing = [command for command in SLURM_COMMANDS if shutil.which(command) is None]
    if missing:
        choice = master.hydra.runtime.choices.get("hydra/launcher")
        raise ConfigError(
            "hydra/launcher", choice, f"a launcher that runs here: SLURM's {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH (submit from a SLURM login node); "
            "hydra/launcher=joblib or submitit_local run the jobs on this machine",
        )  # fmt: skip


def _value_of(parsed: list[Override], key: str, default: Any) -> Any:
    """The value the command line gives ``key``, else ``default``."""
    found = next((o for o in parsed if o.key_or_group == key and not o.is_delete()), None)
    return found.value() if found is not None else default


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _as_text(o: Override) -> str:
    """The value of ``o`` as it was typed."""
    return (o.input_line or "").partition("=")[2]


def _expected_type(err: ValidationError) -> str:
    """What a typed key of a structured config accepts, from its annotation; else OmegaConf's reason."""
    owner = OmegaConf.get_type(err.parent_node) if err.parent_node is not None else None
    hint = typing.get_type_hints(owner).get(str(err.key)) if isinstance(owner, type) and is_dataclass(owner) else None
    kinds = [t for t in typing.get_args(hint) or (hint,) if t is not type(None)]
    if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], enum.Enum):
        return f"one of {', '.join(member.name for member in kinds[0])}"
    if len(kinds) == 1 and kinds[0] in _TYPE_NAMES:
        return _TYPE_NAMES[kinds[0]]
    return first_line(err)


def _syntax(line: str, message: str) -> CompositionError:
    """Bad override syntax: the parser's reason, its lines that quote the override or give a link left out."""
    lines = [x.strip() for x in message.splitlines() if x.strip()]
    reason = next((x for x in lines if f"'{line}'" not in x and "://" not in x), message.strip())
    key = line.lstrip("~+").partition("=")[0]
    return CompositionError(key, line, reason, text=f"override {line!r} is not valid override syntax: {reason}")


def _key_list(parent: Any, parent_key: str) -> str:
    if not isinstance(parent, DictConfig):
        return f"{parent_key} holds a value, not keys"
    keys = sorted(str(k) for k in parent if not (k == "hydra" and not parent_key))
    return f"{'keys of ' + parent_key if parent_key else 'top-level keys'}: {', '.join(keys) or 'none'}"


def _resolve(cfg: DictConfig, key: str | None = None) -> Any:
    """``cfg``'s value at ``key`` (all of ``cfg`` when None), resolved; an unresolvable interpolation is a
    ConfigError naming its key."""
    try:
        return OmegaConf.select(cfg, key) if key is not None else OmegaConf.to_container(cfg, resolve=True)
    except _UNRESOLVABLE as err:
        if _full_error():
            raise
        raise _unresolvable(cfg, err) from None


def _unresolvable(cfg: DictConfig, err: OmegaConfBaseException) -> ConfigError:
    key = err.full_key if isinstance(err.full_key, str) else ""
    parent_key, _, leaf = key.rpartition(".")
    raw: Any = None
    with contextlib.suppress(Exception):
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        container = OmegaConf.to_container(parent, resolve=False) if isinstance(parent, DictConfig) else None
        raw = container.get(leaf) if isinstance(container, dict) else None
    return ConfigError(key or "interpolation", raw, f"an interpolation that resolves ({first_line(err)})")
