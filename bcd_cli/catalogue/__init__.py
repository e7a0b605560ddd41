"""The catalogue: losses, activations and regularizers, each with its block solver.

Every entry is a small frozen dataclass built by Hydra from its YAML file
(``conf/loss``, ``conf/act``, ``conf/reg``) through ``_target_``.
"""

from bcd_cli.catalogue._checks import require
from bcd_cli.catalogue.activations import Linear, ReLU
from bcd_cli.catalogue.losses import Square
from bcd_cli.catalogue.regularizers import L2, NoReg

__all__ = ["L2", "Linear", "NoReg", "ReLU", "Square", "require"]
