"""Where ``bcd-train``'s configuration lives, and how Hydra reads it: one place for the entry point,
the up-front checks, the tests and the benchmarks.

``compose(*overrides)`` composes the config exactly as ``bcd-train`` does, through Hydra's public
Compose API, and restores Hydra's global state afterwards; ``initialized()`` holds Hydra initialized over the
config tree for several compositions (the up-front checks of bcd_cli.cli.preflight compose each job of a sweep).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from hydra import compose as _hydra_compose
from hydra import initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Quote, QuotedString
from omegaconf import DictConfig

CONFIG_NAME = "train"  # the primary config: conf/train.yaml
VERSION_BASE = "1.3"  # Hydra's defaults of version 1.3 (no working-directory change, ...)
BASIC_SWEEPER = "basic"  # the hydra/sweeper option of Hydra's own sweeper, which bcd-cli expands itself


def config_dir() -> Path:
    """The YAML config tree: inside the installed package, or ``conf/`` beside it in a source checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / f"{CONFIG_NAME}.yaml").is_file():
            return candidate
    raise RuntimeError(f"bcd-cli's configs are missing: neither {here / 'conf'} nor {here.parent / 'conf'} exists")


@contextlib.contextmanager
def initialized(directory: Path | None = None) -> Iterator[None]:
    """Hydra initialized over ``directory`` (``config_dir()`` by default) with bcd-train's version base, for
    ``hydra.compose`` and ``GlobalHydra``; on leaving, Hydra's global state is as it was, the config that
    ``HydraConfig`` holds (which resolves ``${hydra:...}``) included."""
    saved = HydraConfig.instance().cfg
    folder = str(directory or config_dir())
    try:
        with initialize_config_dir(config_dir=folder, version_base=VERSION_BASE, job_name=CONFIG_NAME):
            yield
    finally:
        HydraConfig.instance().cfg = saved


def compose(*overrides: str, hydra_config: bool = False) -> DictConfig:
    """``conf/train.yaml`` composed with ``overrides`` as a run of ``bcd-train`` composes it (with the
    ``hydra`` node when ``hydra_config``)."""
    with initialized():
        return _hydra_compose(CONFIG_NAME, overrides=list(overrides), return_hydra_config=hydra_config)


def quoted(value: str) -> str:
    """``value`` written as a Hydra override value that Hydra and OmegaConf read back as ``value``: as it is
    when it is a plain word or path, else single-quoted; inside the quotes a quote is escaped, as are the
    backslashes before a quote or at the end, and ``${`` (which would start an interpolation)."""
    if "${" not in value:
        with contextlib.suppress(Exception):
            if OverridesParser.create().parse_overrides([f"key={value}"])[0].value() == value:
                return value
    return QuotedString(text=value.replace("${", "\\${"), quote=Quote.single).with_quotes()
