"""Composes and validates every job of a ``bcd-train`` command line before Hydra starts any of them.

Hydra reports a composition error (an unknown key or group option, bad override syntax, an unresolvable
interpolation) in several lines and exits with status 1, after creating the sweep folder of a multirun; and
a multirun validates its jobs one at a time, as each starts. ``preflight`` composes each job as Hydra would
and turns the first problem into a one-line ``ConfigError`` (exit status 2). ``HYDRA_FULL_ERROR=1`` re-raises
Hydra's or OmegaConf's own exception instead.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from hydra import version
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    GrammarParseError,
    InterpolationResolutionError,
    OmegaConfBaseException,
)

from bcd_cli.app import CONFIG_NAME, VERSION_BASE, config_dir
from bcd_cli.config import OPTIONAL_KEYS, PATH_KEYS, validate
from bcd_cli.errors import ConfigError

BASIC_SWEEPER = f"{BasicSweeper.__module__}.{BasicSweeper.__name__}"
SLURM_COMMANDS = ("sbatch", "srun")  # what submitit's SLURM executor calls
_UNRESOLVABLE = (InterpolationResolutionError, GrammarParseError)
_ABSENT = object()


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
    record as absolute paths."""

    multirun: bool
    folder: Path
    relative_paths: dict[str, str]


def preflight(argv: list[str]) -> Launch | None:
    """Composes and validates every job ``bcd-train argv`` would run; raises ConfigError for the first bad one.

    Does nothing when ``argv`` runs no job (``--help``, ``--hydra-help``, ``--cfg``, ``--info``,
    ``--shell-completion``, ``--version``), when argparse refuses it (Hydra reports that) and with
    ``--config-path``, whose search path Hydra derives from the module that calls it.
    """
    args = _parse_args(argv)
    if args is None or not _runs_jobs(args):
        return None
    with _hydra(config_dir(), args.config_dir) as hydra:
        return _Preflight(hydra, args.config_name or CONFIG_NAME).check(list(args.overrides), multirun=args.multirun)


def _parse_args(argv: list[str]) -> argparse.Namespace | None:
    """``argv`` parsed by Hydra's own parser, silently; None where argparse exits (an error, ``--version``)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            return get_args_parser().parse_args(argv)
        except SystemExit:
            return None


def _runs_jobs(args: argparse.Namespace) -> bool:
    if args.help or args.hydra_help or args.cfg or args.info or args.shell_completion or args.resolve:
        return False
    if args.experimental_rerun is not None or (args.run and args.multirun):
        return False  # Hydra reruns a pickled job, or refuses --run with --multirun, itself
    return args.config_path is None


@contextlib.contextmanager
def _hydra(conf: Path, extra_dir: str | None) -> Iterator[Hydra]:
    """Hydra over ``conf`` (and ``--config-dir``), built as ``@hydra.main`` builds it; global state restored after."""
    search_path = create_config_search_path(str(conf))
    if extra_dir is not None:
        path = os.path.abspath(extra_dir)
        if not os.path.isdir(path):
            raise ConfigError("--config-dir", extra_dir, "an existing folder of configs (it is not one)")
        search_path.prepend(provider="command-line", path=f"file://{path}", anchor=SearchPathQuery(provider="schema"))
    backup, hydra_cfg = get_gh_backup(), HydraConfig.instance().cfg
    version.setbase(VERSION_BASE)  # as @hydra.main in bcd_cli.cli
    try:
        yield Hydra.create_main_hydra2(task_name=CONFIG_NAME, config_search_path=search_path)
    finally:
        restore_gh_from_backup(backup)
        HydraConfig.instance().cfg = hydra_cfg


def _full_error() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


class _Preflight:
    """The checks of one command line, against one Hydra instance."""

    def __init__(self, hydra: Hydra, config_name: str) -> None:
        self.hydra, self.config_name = hydra, config_name

    def check(self, overrides: list[str], *, multirun: bool) -> Launch:
        """A run: its config, folder and values. A multirun: its sweep config, then each job as BasicSweeper runs it."""
        self._check_added_keys(overrides)
        if not multirun:
            try:
                cfg = self.hydra.compose_config(self.config_name, overrides, run_mode=RunMode.RUN, from_shell=True)
            except Exception as err:
                if self.hydra.get_mode(config_name=self.config_name, overrides=overrides) != RunMode.MULTIRUN:
                    self._refuse(err, overrides)
            else:
                if cfg.hydra.mode != RunMode.MULTIRUN:  # a config may set hydra.mode=MULTIRUN: Hydra then sweeps
                    folder, task = self._check_job(cfg, "hydra.run.dir")
                    return Launch(False, folder, _relative_paths(task, overrides))
        return self._check_multirun(overrides)

    def _check_added_keys(self, overrides: list[str]) -> None:
        """``+key=value`` and ``++key=value`` that add a key no part of bcd-train reads are refused: the run
        would otherwise ignore them without a word. Config groups and Hydra's own settings are Hydra's."""
        added = [
            o for o in _parse_each(overrides)
            if (o.is_add() or o.is_force_add()) and not o.key_or_group.startswith("hydra.")
            and o.package is None and not self._is_group(o.key_or_group)
        ]  # fmt: skip
        if not added:
            return
        keys = {o.key_or_group for o in added}
        base_overrides = [a for a in overrides if _parse_each([a]) and _parse_each([a])[0].key_or_group not in keys]
        try:
            base = self.hydra.compose_config(
                self.config_name, base_overrides, run_mode=RunMode.RUN, validate_sweep_overrides=False
            )
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
            raise ConfigError(
                f"{o.input_line.partition('=')[0] if o.input_line else key}",
                o.value(),
                f"{allowed}; the keys that may be added with + are {optional}",
            )

    def _check_multirun(self, overrides: list[str]) -> Launch:
        sweep_overrides = [*overrides, "hydra.mode=MULTIRUN"]
        try:
            master = self.hydra.compose_config(
                self.config_name, sweep_overrides, run_mode=RunMode.MULTIRUN, from_shell=True
            )
        except Exception as err:
            self._refuse(err, sweep_overrides)
        sweep_dir = Path(os.path.abspath(str(_resolve(master, "hydra.sweep.dir"))))
        _check_launcher(master)
        if OmegaConf.select(master, "hydra.sweeper._target_") != BASIC_SWEEPER:
            return Launch(True, sweep_dir, {})  # another sweeper plugin expands the sweep its own way
        params = OmegaConf.to_container(master.hydra.sweeper.params or OmegaConf.create())
        task = OmegaConf.to_container(master.hydra.overrides.task)
        assert isinstance(params, dict) and isinstance(task, list)
        arguments = [*(f"{k!s}={v}" for k, v in params.items()), *map(str, task)]
        try:
            parsed = OverridesParser.create(config_loader=self.hydra.config_loader).parse_overrides(arguments)
            jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        except Exception as err:
            self._refuse(err, arguments)
        swept = {o.get_key_element() for o in parsed if o.is_sweep_override()}
        relative: dict[str, str] = {}
        hydra_overrides = OmegaConf.to_container(master.hydra.overrides.hydra)  # unresolved, as load_sweep_config
        assert isinstance(hydra_overrides, list)
        for num, job in enumerate(jobs):
            label = [o for o in job if o.split("=", 1)[0] in swept]
            try:
                try:
                    cfg = self.hydra.config_loader.load_sweep_config(master, list(job))
                except Exception as err:
                    self._refuse(err, [*map(str, hydra_overrides), *job])
                with open_dict(cfg):  # as BasicLauncher.launch
                    cfg.hydra.job.id = num
                    cfg.hydra.job.num = num
                _, task = self._check_job(cfg, "hydra.sweep.dir", "hydra.sweep.subdir")
            except ConfigError as err:
                raise JobError(num, label, err) from None
            relative |= {k: v for k, v in _relative_paths(task, overrides).items() if k not in swept}
        return Launch(True, sweep_dir, relative)

    def _check_job(self, cfg: DictConfig, *dir_keys: str) -> tuple[Path, DictConfig]:
        """Resolves what ``hydra.core.utils.run_job`` resolves (the job's folder, then its config) and validates it;
        returns the folder (absolute) and the job's config without ``hydra``."""
        HydraConfig.instance().set_config(cfg)
        folder = os.path.join(*(str(_resolve(cfg, key)) for key in dir_keys))
        with read_write(cfg.hydra.runtime), open_dict(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = os.path.abspath(folder)
        HydraConfig.instance().set_config(cfg)
        task = OmegaConf.masked_copy(cfg, [str(key) for key in cfg if key != "hydra"])  # as run_job's, without hydra
        OmegaConf.set_struct(task, True)
        try:
            OmegaConf.to_container(task, resolve=True)
        except _UNRESOLVABLE as err:
            if _full_error():
                raise
            raise _unresolvable(task, err) from None
        validate(task)
        return Path(cfg.hydra.runtime.output_dir), task

    def _refuse(self, err: Exception, overrides: list[str]) -> NoReturn:
        """Raises the one-line ConfigError for ``err``; ``err`` itself under HYDRA_FULL_ERROR=1, or if it is a bug."""
        refusal = self._refusal(err, overrides)
        if refusal is err:
            raise err
        raise refusal from None

    def _refusal(self, err: Exception, overrides: list[str]) -> Exception:
        if _full_error() or not isinstance(err, HydraException | OmegaConfBaseException | ValueError | KeyError):
            return err
        parsed = _parse_each(overrides)
        if isinstance(err, KeyError) and not isinstance(err, OmegaConfBaseException):
            found = _find(parsed, "hydra.job.env_copy")  # Hydra copies these variables while composing
            if found is None:
                return err
            return ConfigError(found.key_or_group, found.value(), f"names of set environment variables ({err} is not)")
        if isinstance(err, OverrideParseException):
            return _syntax(err.override, err.message)
        if isinstance(err, MissingConfigException):
            return self._missing_option(err, parsed)
        cause = err.__cause__
        if isinstance(cause, ConfigKeyError | ConfigAttributeError) and isinstance(cause.full_key, str):
            return _unknown_key(cause.full_key, cause.parent_node, parsed)
        if isinstance(cause, OmegaConfBaseException) and isinstance(cause.full_key, str) and cause.full_key:
            found = _find(parsed, cause.full_key)
            return ConfigError(cause.full_key, found.value() if found else cause.value, _allowed(_first_line(cause)))
        if isinstance(err, ValueError):
            return self._group_value(err, parsed)
        return self._known_message(str(err), parsed, overrides)

    def _missing_option(self, err: MissingConfigException, parsed: list[Override]) -> ConfigError:
        group, _, option = (err.missing_cfg_file or "").rpartition("/")
        loader = self.hydra.config_loader
        if not group:
            primaries = [o for o in loader.get_group_options("") if not o.startswith("_")]
            return ConfigError("--config-name", option, f"one of {', '.join(primaries)}")
        options = list(err.options or loader.get_group_options(group))
        allowed = f"one of {', '.join(options)}" if options else f"no config in {group} (the group is empty)"
        for o in parsed:
            if o.key_or_group == group and not o.is_delete() and option in _names(o.value()):
                return ConfigError(o.get_key_element(), o.value(), allowed)
        origin = re.match(r"In '([^']+)'", str(err))
        if origin and origin.group(1) != self.config_name:
            allowed += f" (asked for by {origin.group(1)})"
        return ConfigError(group, option, allowed)

    def _group_value(self, err: ValueError, parsed: list[Override]) -> Exception:
        """A config group given a value that is not a config name (``data=null``, ``=1``)."""
        if not str(err).startswith("Config group override"):
            return err
        for o in parsed:
            value = o.value()
            if o.is_delete() or isinstance(value, str | list) or not self._is_group(o.key_or_group):
                continue
            if not o.key_or_group:
                return _syntax(o.input_line or "", "no key before '='")
            options = self.hydra.config_loader.get_group_options(o.key_or_group)
            allowed = f"one of {', '.join(options)} (a config name; ~{o.key_or_group} removes the group)"
            return ConfigError(o.get_key_element(), value, allowed)
        return err

    def _is_group(self, name: str) -> bool:
        parent, _, leaf = name.rpartition("/")
        return not name or leaf in self.hydra.config_loader.list_groups(parent)

    def _known_message(self, text: str, parsed: list[Override], overrides: list[str]) -> ConfigError:
        """Hydra's own wording, for the composition errors it raises without an OmegaConf cause."""
        if m := re.search(r"An item is already at '([^']+)'", text):
            key, found = m.group(1), _find(parsed, m.group(1))
            value = found.value() if found else None
            return ConfigError(f"+{key}", value, f"{key} already exists; set it without the +: {key}={_as_text(found)}")
        if m := re.search(r"Could not delete from config\. '([^']+)' does not exist", text):
            key = m.group(1)
            near = self._keys_near(key, overrides)
            return CompositionError(f"~{key}", None, near, text=f"~{key} is invalid: no such key to delete ({near})")
        if m := re.search(r"Could not delete from config\. The value of '([^']+)' is (.*) and not (.*)\.$", text):
            key, value, given = m.groups()
            allowed = f"{key} is {value}; delete it with ~{key} (or ~{key}={value})"
            return CompositionError(f"~{key}", given, allowed, text=f"~{key}={given} is invalid: {allowed}")
        if m := re.search(r"Could not override '([^']+)'\.(?:\nDid you mean to override (?:one of )?([^?]+)\?)?", text):
            key, choices = m.groups()
            found = _find(parsed, key)
            allowed = f"{key} is not in the defaults list"
            allowed += f"; did you mean {' or '.join(choices.split(', '))}?" if choices else ""
            allowed += f" (add it with +{key}={_as_text(found)})" if found else ""
            return ConfigError(key, found.value() if found else None, allowed)
        if m := re.search(r"Could not delete '([^']+)'\. No match in the defaults list", text):
            return CompositionError(
                f"~{m.group(1)}", None, "", text=f"~{m.group(1)} is invalid: no such entry in the defaults list"
            )
        if m := re.search(r"Ambiguous value for argument '([^']+)'", text):
            key, _, value = m.group(1).partition("=")
            allowed = (
                f"one value per run; for a list write {key}=[{value}], for a text quote it ({key}='{value}'), "
                "to run one job per value add -m (--multirun)"
            )
            return ConfigError(key, value, allowed)
        if m := re.search(r"Sweep parameters '([^']+)' requires --multirun", text):
            key, _, value = m.group(1).partition("=")
            return ConfigError(key, value, "a sweep: add -m (--multirun) to run one job per value")
        if m := re.search(r"Sweeping over Hydra's configuration is not supported : '([^']+)'", text):
            key, _, value = m.group(1).partition("=")
            return ConfigError(key, value, "one value: Hydra's own settings (hydra.*) cannot be swept")
        if m := re.search(r"Multiple values for (\S+)\. To override a value use", text):
            key = m.group(1)
            found = next((o for o in parsed if o.is_add() and o.key_or_group == key), None)
            return ConfigError(
                f"+{key}", found.value() if found else None,
                f"{key} is already in the defaults list; choose it without the +: {key}={_as_text(found)}",
            )  # fmt: skip
        if m := re.search(r"force-add of config groups is not supported: '([^']+)'", text):
            key, _, value = m.group(1).partition("=")
            return ConfigError(key, value, f"a config group: choose an option with {key[2:]}={value}, not ++")
        if m := re.search(r"You must specify '([^']+)'", text):
            options = self.hydra.config_loader.get_group_options(m.group(1).split("@")[0])
            return ConfigError(m.group(1), "???", f"one of {', '.join(options)} (it has no default)")
        if m := re.search(r"hydra\.searchpath must be a list of strings\. Got: (.*)", text):
            return ConfigError("hydra.searchpath", m.group(1), "a list of strings (config folders)")
        if m := re.search(r"does not support sweep type : (\w+)", text):
            found = next((o for o in parsed if o.is_sweep_override() and not o.is_discrete_sweep()), None)
            line = found.input_line if found and found.input_line else ""
            key, _, value = line.partition("=")
            return ConfigError(key, value, "a list (a,b,c), choice(...), range(...) or glob(...) to sweep over")
        reason = _one_line(text)
        return CompositionError("overrides", " ".join(overrides), reason, text=f"invalid command line: {reason}")

    def _keys_near(self, key: str, overrides: list[str]) -> str:
        """The keys next to ``key`` in the config composed without the override that names it."""
        parent_key = key.rpartition(".")[0]
        others = [o for o in overrides if not o.lstrip("~+").startswith(f"{key}=") and o.lstrip("~+") != key]
        for attempt in (others, []):
            try:
                cfg = self.hydra.compose_config(
                    self.config_name, attempt, run_mode=RunMode.RUN, validate_sweep_overrides=False
                )
            except Exception:
                continue
            parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
            return _key_list(parent, parent_key)
        return "the config could not be composed"


def _relative_paths(task: DictConfig, overrides: list[str]) -> dict[str, str]:
    """The path keys of ``task`` given on the command line as relative paths: key -> value as typed."""
    given = {o.key_or_group for o in _parse_each(overrides) if not o.is_delete()}
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
        choice = OmegaConf.select(master, "hydra.runtime.choices").get("hydra/launcher")
        raise ConfigError(
            "hydra/launcher", choice, f"a launcher that runs here: SLURM's {' and '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not on PATH (submit from a SLURM login node); "
            "hydra/launcher=joblib or submitit_local run the jobs on this machine",
        )  # fmt: skip


def _parse_each(overrides: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    parsed = []
    for line in overrides:
        with contextlib.suppress(Exception):
            parsed.extend(parser.parse_overrides([line]))
    return parsed


def _find(parsed: list[Override], key: str) -> Override | None:
    return next((o for o in parsed if o.key_or_group == key and not o.is_delete()), None)


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _as_text(found: Override | None) -> str:
    """The value of ``found`` as it was typed."""
    if found is None or found.input_line is None:
        return "..."
    return found.input_line.partition("=")[2]


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _one_line(text: str) -> str:
    """Hydra's message up to its config search path, on one line."""
    lines = []
    for line in text.splitlines():
        if line.startswith(("Config search path:", "Search path:")):
            break
        if line.strip() and not line.startswith("See https://"):
            lines.append(line.strip())
    return "; ".join(lines)


def _allowed(reason: str) -> str:
    """OmegaConf's validation message turned into what is allowed."""
    if m := re.search(r"is not a valid (\w+)", reason):
        return f"a {m.group(1)}"
    if m := re.search(r"could not be converted to (\w+)", reason):
        return f"a value of type {m.group(1)}"
    if m := re.search(r"expected one of \[([^\]]*)\]", reason):
        return f"one of {m.group(1)}"
    return reason


def _syntax(line: str, message: str) -> CompositionError:
    lines = [x for x in message.splitlines() if x.strip()]
    reason = next((x for x in lines if not x.startswith(("Error parsing override", "See https://"))), message)
    key = line.lstrip("~+").partition("=")[0]
    return CompositionError(key, line, reason, text=f"override {line!r} is not valid override syntax: {reason}")


def _key_list(parent: Any, parent_key: str) -> str:
    if not isinstance(parent, DictConfig):
        return f"{parent_key} holds a value, not keys"
    keys = sorted(str(k) for k in parent if not (k == "hydra" and not parent_key))
    return f"{'keys of ' + parent_key if parent_key else 'top-level keys'}: {', '.join(keys) or 'none'}"


def _unknown_key(full_key: str, parent: Any, parsed: list[Override]) -> ConfigError:
    """An override of a key the config does not have: the closest key, the keys there, and how to add one."""
    parent_key, _, leaf = full_key.rpartition(".")
    found = _find(parsed, full_key)
    keys = [str(k) for k in parent] if isinstance(parent, DictConfig) else []
    allowed = "no such key"
    if match := difflib.get_close_matches(leaf, keys, n=1):
        allowed += f"; did you mean {parent_key + '.' if parent_key else ''}{match[0]}?"
    if keys:
        where = _key_list(parent, parent_key)
    else:
        where = f"{parent_key} has no keys below it" if parent_key else "the config is empty"
    return ConfigError(full_key, found.value() if found else None, f"{allowed} ({where})")


def _resolve(cfg: DictConfig, key: str) -> Any:
    """``cfg``'s value at ``key``, resolved; an unresolvable interpolation is a ConfigError naming ``key``."""
    try:
        return OmegaConf.select(cfg, key)
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
    return ConfigError(key or "interpolation", raw, f"an interpolation that resolves ({_first_line(err)})")
