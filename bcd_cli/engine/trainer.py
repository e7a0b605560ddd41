"""What every training method offers the run loop, the checkpoints and the reports.

A ``Trainer`` owns a network and what trains it: the BCD schemes (``engine.scheme.BCDScheme``,
Algorithms 1-3 of Zeng et al., ICML 2019) and the gradient baselines (``bcd_cli.engine.baselines``).
Like ``torch.optim.Optimizer`` it is driven from outside, one ``sweep`` at a time, and its
whole state goes in and out as a dict (``state_dict`` / ``load_state_dict``), so the code that
runs, checkpoints and reports a run never needs to know which method it holds.
"""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor

from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import all_reduce_sum_

# the dtypes a run, its factorisations and its solves may use, by their config names
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class Samples(Protocol):
    """The train and test samples a trainer is evaluated on (``bcd_cli.data.loaders.Dataset`` is one):
    this rank's columns, and the totals over the ranks in ``n_train``/``n_test``."""

    @property
    def X_train(self) -> Tensor: ...

    @property
    def Y_train(self) -> Tensor: ...

    @property
    def y_train(self) -> Tensor: ...

    @property
    def X_test(self) -> Tensor: ...

    @property
    def y_test(self) -> Tensor: ...

    @property
    def n_train(self) -> int: ...

    @property
    def n_test(self) -> int: ...


class Trainer(abc.ABC):
    """A network and the method that trains it, one sweep at a time.

    ``net`` always holds the current weights, so its forward pass is the trained network.
    ``loss`` is the catalogue loss R of the objective. ``divergence_hint`` is the setting to try
    when a sweep diverges (named as the user sets it).
    """

    name: str  # the method, as the summary reports it: three, two, resnet, sgd, adam
    net: MLP
    loss: Any
    divergence_hint: ClassVar[str]
    splitting: ClassVar[str | None] = None  # a BCD scheme's objective (two, three); None for a gradient method
    residual: ClassVar[bool] = False  # whether a BCD scheme trains networks with residual layers

    @classmethod
    @abc.abstractmethod
    def build(
        cls, settings: Any, net: MLP, X: Tensor, Y: Tensor, *, loss: Any, reg_w: Any, reg_v: Any, seed: int = 0
    ) -> Trainer:
        """The trainer of ``net`` on samples X (features x samples) with one-hot targets Y: ``settings`` are the
        method's checked settings (``BCDSettings``, ``BaselineSettings``), ``loss``, ``reg_w``, ``reg_v`` the
        catalogue entries of the objective, ``seed`` that of any randomness the method draws itself."""

    @abc.abstractmethod
    def sweep(self) -> float:
        """One pass over every block (BCD) or every sample (an epoch of SGD/Adam); returns D_k, the squared
        distance the trained variables moved."""

    @abc.abstractmethod
    def objective(self, *, with_gradient: bool = False) -> dict[str, float]:
        """The objective and its parts loss, penalty_v, penalty_u, reg_w, reg_v at the current point;
        ``with_gradient`` adds grad_norm, the norm of its gradient (NaN where it has none)."""

    @abc.abstractmethod
    def nonfinite_block(self) -> str | None:
        """The first block, in the order a sweep updates them, holding a NaN or an infinity; None if all are
        finite."""

    @abc.abstractmethod
    def state_tensors(self) -> list[Tensor]:
        """The tensors of the training state as they live on the device: a BCD scheme's blocks; a baseline's
        weights, their gradients and the optimizer's moments once they exist."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything ``load_state_dict`` needs to continue bit-identically, as tensors and plain values.

        In a data-parallel run it holds every sample's columns (a collective: every rank calls it),
        so it can be loaded with any number of processes.
        """

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Puts a ``state_dict`` of a trainer built from the same config back (moved to this one's device and
        dtype); raises ValueError when its blocks do not fit this network."""

    def last_sweep(self) -> dict[str, float]:
        """What metrics.csv records of the last sweep beyond D: a BCD scheme's extrapolation weight and whether
        its safeguard rejected the extrapolated point; nothing for the gradient baselines."""
        return {}

    def summary_fields(self) -> dict[str, Any]:
        """What summary.json records about the method."""
        return {"method": self.name}

    def evaluate(self, data: Samples, *, grad_norm: bool = True) -> dict[str, float]:
        """The metrics of the current point: ``objective`` (with the gradient norm when ``grad_norm``, else
        grad_norm NaN), and the network's own loss on the train samples and accuracies on both sets.

        The network's sums are all-reduced over the ranks' shards in one collective.
        """
        row = self.objective(with_gradient=grad_norm)
        row.setdefault("grad_norm", math.nan)
        output = self.net(data.X_train)
        sums = torch.stack([
            self.loss(output, data.Y_train).double(),
            (output.argmax(dim=0) == data.y_train).double().sum(),
            (self.net(data.X_test).argmax(dim=0) == data.y_test).double().sum(),
        ])  # fmt: skip
        train_loss, train_correct, test_correct = all_reduce_sum_(sums).tolist()
        row["train_loss"] = train_loss
        row["train_acc"] = train_correct / data.n_train
        row["test_acc"] = test_correct / data.n_test
        return row


def check_shapes(current: list[Tensor], saved: list[Tensor], what: str) -> None:
    """Raises ValueError unless ``saved`` (from a state_dict) has the shapes of ``current``, one by one."""
    if [tuple(t.shape) for t in current] != [tuple(t.shape) for t in saved]:
        raise ValueError(f"the saved {what} blocks do not fit the network built from the run's config")


def own(t: Tensor) -> Tensor:
    """``t`` detached, itself when it owns its storage, else a compact copy (torch.save writes a view's whole
    storage)."""
    t = t.detach()
    return t if t.untyped_storage().nbytes() == t.nbytes else t.clone()
