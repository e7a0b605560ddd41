"""The catalogue: losses, activations and regularizers, each with its block solver.

Every entry is a small frozen dataclass built by Hydra from its YAML file
(``conf/loss``, ``conf/act``, ``conf/reg``) through ``_target_``. docs/math.md §3 lists every
entry with its value and the derivation of its solver.
"""

from bcd_cli.catalogue._checks import require
from bcd_cli.catalogue.activations import LeakyReLU, Linear, Polynomial, ReLU, Sigmoid, Softplus, Tanh
from bcd_cli.catalogue.losses import CrossEntropy, Exponential, Hinge, Logistic, Square
from bcd_cli.catalogue.regularizers import L1, L2, Box, ElasticNet, NonNeg, NoReg

__all__ = [
    "L1",
    "L2",
    "Box",
    "CrossEntropy",
    "ElasticNet",
    "Exponential",
    "Hinge",
    "LeakyReLU",
    "Linear",
    "Logistic",
    "NoReg",
    "NonNeg",
    "Polynomial",
    "ReLU",
    "Sigmoid",
    "Softplus",
    "Square",
    "Tanh",
    "require",
]
