"""bcd-cli's Optuna sweeper where Hydra looks for plugins (installed as ``hydra_plugins.bcd_cli_optuna``).

Hydra instantiates only sweepers of the ``hydra_plugins`` package; everything it does is in bcd_cli.search.study.
"""

from bcd_cli.search import study


class OptunaSweeper(study.OptunaSweeper):
    """``hydra/sweeper=optuna`` (conf/hydra/sweeper/optuna.yaml): see bcd_cli.search.study.study."""
