"""bcd-cli: training deep networks by block coordinate descent (Zeng, Lau, Lin and Yao, ICML 2019)."""

__version__ = "0.1.0"
