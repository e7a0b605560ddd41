"""The BCD engine: the network's parameters, shared block solvers, and one module per algorithm."""

from bcd_cli.engine.network import MLP
from bcd_cli.engine.three_splitting import ThreeSplittingBCD

__all__ = ["MLP", "ThreeSplittingBCD"]
