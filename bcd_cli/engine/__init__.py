"""The BCD engine: the network, shared block solvers, and one module per algorithm."""

from bcd_cli.engine.network import MLP
from bcd_cli.engine.resnet import ResNetBCD
from bcd_cli.engine.scheme import BCDScheme
from bcd_cli.engine.three_splitting import ThreeSplittingBCD
from bcd_cli.engine.two_splitting import TwoSplittingBCD

__all__ = ["MLP", "BCDScheme", "ResNetBCD", "ThreeSplittingBCD", "TwoSplittingBCD"]
