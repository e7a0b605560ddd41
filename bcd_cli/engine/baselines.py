"""Gradient baselines: the network BCD trains, trained instead by mini-batch SGD or Adam (torch.optim).

The baseline trains the plain forward network ``net(X)`` (residual layers included)
from the same initial weights, on the objective F = R(net(X); Y) + sum_l r(W_l) with
the catalogue loss R and weight regularizer r. Each epoch shuffles the samples and
takes one optimizer step per mini-batch B of columns on the per-sample mean loss
(1/|B|) sum_{j in B} l_j, i.e. the catalogue loss with ``reduction='mean'`` on the batch.

The regularizer is handled by proximal SGD: after each optimizer step,
W_l <- prox_{lr c r}(W_l), with c = 1/n when the loss sums over the n samples and
c = 1 when it averages them, so that an epoch decreases F/n or F. For a quadratic r
this is weight decay, for an indicator (box, nonneg) a projection. Adam takes the
same proximal step after its own update (a common heuristic: the prox does not use
Adam's per-coordinate step sizes). The torch.optim ``weight_decay`` option is separate,
passed through to the optimizer, and applies to every parameter, biases included.

A baseline is a ``Trainer`` (``bcd_cli.engine.trainer``) as the BCD schemes are: ``sweep`` is one
epoch, ``objective`` gives the parts of F (zero penalties, no state regularizer), and the metrics
rows, checkpoints and reports are the same.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from bcd_cli.engine.blocks import feasible, feasible_workspace
from bcd_cli.engine.network import MLP
from bcd_cli.engine.scheme import first_nonfinite
from bcd_cli.engine.trainer import Trainer, check_shapes, own
from bcd_cli.engine.workspace import BACKWARD_BLOCKS, Footprint, Shapes, Tally, workspace_of
from bcd_cli.errors import require, require_number

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class BaselineSettings:
    """The optimizer settings of a gradient baseline, checked when made (``ParameterError`` naming the field).

    ``momentum`` and ``nesterov`` are SGD's, ``betas`` Adam's; ``weight_decay`` is torch.optim's.
    """

    optimizer: str = "sgd"
    lr: float = 1e-3
    batch_size: int = 512
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: Sequence[float] = (0.9, 0.999)

    def __post_init__(self) -> None:
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " or ".join(OPTIMIZERS))
        require_number("lr", self.lr, lambda x: x > 0, "a number > 0 (step size)")
        require_number("batch_size", self.batch_size, lambda x: x >= 1, "an integer >= 1 (samples per step)",
                       integer=True)  # fmt: skip
        require_number("weight_decay", self.weight_decay, lambda x: x >= 0, "a number >= 0")
        require_number("momentum", self.momentum, lambda x: 0 <= x < 1, "a number in [0, 1)")
        require(isinstance(self.nesterov, bool), "nesterov", self.nesterov, "true or false")
        require(not self.nesterov or self.momentum > 0, "nesterov", self.nesterov,
                "false when trainer.momentum=0 (Nesterov needs momentum > 0)")  # fmt: skip
        betas = self.betas
        require(
            isinstance(betas, list | tuple) and len(betas) == 2 and all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and 0 <= x < 1
                for x in betas
            ),
            "betas", betas, "a list of two numbers in [0, 1)",
        )  # fmt: skip
        object.__setattr__(self, "betas", tuple(float(x) for x in betas))


class GradientBaseline(Trainer):
    """Mini-batch training of ``net`` by torch.optim SGD or Adam, with a proximal step for ``reg_w``.

    ``settings`` are the fields of ``BaselineSettings``, checked before anything is built.
    ``net.W`` and ``net.b`` always hold the current (detached) weights, so ``net(X)``
    and its accuracy use the trained network. The weights start inside the domain of
    ``reg_w`` (projected), as in the BCD schemes. ``seed`` seeds the generator of the
    epochs' sample permutations (drawn on the CPU), so runs are reproducible.
    """

    divergence_hint = "a smaller trainer.lr"

    def __init__(
        self, net: MLP, X: Tensor, Y: Tensor, *, loss: Any, reg_w: Any, seed: int = 0, **settings: Any
    ) -> None:
        config = BaselineSettings(**settings)
        self.name = config.optimizer
        self.net, self.X, self.Y = net, X, Y
        self.loss, self.reg_w = loss, reg_w
        self.batch_loss = dataclasses.replace(loss, reduction="mean")
        self.lr, self.batch_size = float(config.lr), int(config.batch_size)
        # the prox step of r for one optimizer step: the epoch minimises F/n (sum over samples) or F (mean)
        self.prox_step = self.lr / X.shape[1] if loss.reduction == "sum" else self.lr
        self.generator = torch.Generator().manual_seed(int(seed))
        self.W = [feasible(reg_w, w).detach().clone().requires_grad_(True) for w in net.W]
        self.b = [b.detach().clone().requires_grad_(True) for b in net.b]
        params = [*self.W, *self.b]
        self.optimizer: torch.optim.Optimizer
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(
                params, lr=self.lr, momentum=float(config.momentum), nesterov=config.nesterov,
                weight_decay=float(config.weight_decay),
            )  # fmt: skip
        else:
            beta1, beta2 = config.betas
            self.optimizer = torch.optim.Adam(
                params, lr=self.lr, betas=(beta1, beta2), weight_decay=config.weight_decay
            )
        self._publish()

    @classmethod
    def build(
        cls, settings: Any, net: MLP, X: Tensor, Y: Tensor, *, loss: Any, reg_w: Any, reg_v: Any, seed: int = 0
    ) -> GradientBaseline:
        """The baseline with ``settings`` (``BaselineSettings``); the state regularizer ``reg_v`` has no part in it
        (no state variables)."""
        return cls(net, X, Y, loss=loss, reg_w=reg_w, seed=seed, **dataclasses.asdict(settings))

    def state_tensors(self) -> list[Tensor]:
        params = [*self.W, *self.b]
        moments = [v for state in self.optimizer.state.values() for v in state.values() if torch.is_tensor(v)]
        return [*params, *(p.grad for p in params if p.grad is not None), *moments]

    def state_dict(self) -> dict[str, Any]:
        """{"W": [...], "b": [...], "optimizer": the torch.optim state, "generator": the shuffling generator's state}.

        The tensors are the live parameters and optimizer state (not copies): save or copy them
        before the next sweep.
        """
        return {
            "W": [own(w) for w in self.W], "b": [own(b) for b in self.b],
            "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Puts a ``state_dict`` back: the weights copied into the parameters, the optimizer state and the
        generator restored."""
        if set(state) != {"W", "b", "optimizer", "generator"}:
            raise ValueError(
                f"the saved state holds {sorted(state)}, not a gradient baseline's W, b, optimizer, generator"
            )
        for kind, params in (("W", self.W), ("b", self.b)):
            check_shapes(params, state[kind], kind)
            with torch.no_grad():
                for p, saved in zip(params, state[kind], strict=True):
                    p.copy_(saved)
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])

    def _publish(self) -> None:
        """Points ``net`` at detached views of the trained parameters (they follow every in-place update)."""
        self.net.W[:] = [w.detach() for w in self.W]
        self.net.b[:] = [b.detach() for b in self.b]

    def _forward(self, X: Tensor, W: list[Tensor], b: list[Tensor]) -> Tensor:
        """The network's output at weights W, b, differentiable with respect to them."""
        saved_W, saved_b = list(self.net.W), list(self.net.b)
        self.net.W[:], self.net.b[:] = W, b
        try:
            with torch.enable_grad():
                for l in range(self.net.depth):
                    X = self.net.layer_output(l, X, self.net.pre_activation(l, X))
        finally:
            self.net.W[:], self.net.b[:] = saved_W, saved_b
        return X

    def sweep(self) -> float:
        """One epoch over a fresh permutation of the samples; returns D = ||theta_after - theta_before||_F^2."""
        before = [p.detach().clone() for p in (*self.W, *self.b)]
        n = self.X.shape[1]
        order = torch.randperm(n, generator=self.generator).to(self.X.device)
        for start in range(0, n, self.batch_size):
            batch = order[start : start + self.batch_size]
            X, Y = self.X.index_select(1, batch), self.Y.index_select(1, batch)
            self.optimizer.zero_grad(set_to_none=True)
            with torch.enable_grad():
                self.batch_loss(self._forward(X, self.W, self.b), Y).backward()
            self.optimizer.step()
            with torch.no_grad():
                for w in self.W:
                    projected = self.reg_w.prox(w, self.prox_step)
                    if projected is not w:
                        w.copy_(projected)
        with torch.no_grad():
            change = torch.stack([(p - q).square().sum() for p, q in zip((*self.W, *self.b), before, strict=True)])
        return float(change.sum())

    def nonfinite_block(self) -> str | None:
        """The first layer's weights, W1 (W_1 with b_1) to WN, holding a NaN or an infinity; None if all are finite.

        An epoch updates every parameter at each step, so layer order is the order they can go non-finite.
        """
        return first_nonfinite([(f"W{l + 1}", [w, b]) for l, (w, b) in enumerate(zip(self.W, self.b, strict=True))])

    def objective(self, *, with_gradient: bool = False) -> dict[str, float]:
        """F at the current weights and its parts (penalties and reg_v are 0), moved to the host in one transfer.

        ``with_gradient`` adds ``grad_norm`` = ||grad F||_F over all W and b, by autograd
        through the same evaluation; NaN when ``reg_w`` is not differentiable (l1, box, ...).
        """
        differentiable = with_gradient and self.reg_w.quadratic
        W = [w.detach().requires_grad_(differentiable) for w in self.W]  # the parameters' memory, not a copy
        b = [b.detach().requires_grad_(differentiable) for b in self.b]
        with torch.set_grad_enabled(differentiable):
            loss = self.loss(self._forward(self.X, W, b), self.Y)
            reg_w = torch.stack([torch.as_tensor(self.reg_w(w), dtype=loss.dtype, device=loss.device) for w in W]).sum()
            grads = torch.autograd.grad(loss + reg_w, [*W, *b], allow_unused=True) if differentiable else []
        zero = loss.new_zeros(())
        parts = {"loss": loss, "penalty_v": zero, "penalty_u": zero, "reg_w": reg_w, "reg_v": zero}
        values = torch.stack([p.detach().to(torch.float64) for p in parts.values()]).tolist()
        result = dict(zip(parts, values, strict=True))
        result["objective"] = sum(result.values())
        if with_gradient:
            squares = [g.square().sum() for g in grads if g is not None]
            result["grad_norm"] = math.sqrt(float(torch.stack(squares).sum())) if differentiable else math.nan
        return result

    # ---------------------------------------------------------------- memory (``engine.workspace``)

    @classmethod
    def memory_footprint(
        cls, s: Shapes, *, optimizer: str = "sgd", batch_size: int = 512, momentum: bool = False,
        nesterov: bool = False, weight_decay: bool = False,
    ) -> Footprint:  # fmt: skip
        """The baseline's memory on ``s``: W and b, their gradients and the optimizer's moments (and Adam's step
        counts); the workspaces of building it, of an epoch and of ``evaluate``."""
        adam = optimizer == "adam"
        state = (2 + (2 if adam else int(momentum))) * s.weights() * s.e + (2 * s.depth * 4 if adam else 0)
        epoch = workspace_of("a mini-batch step", cls.epoch_workspace, s, adam, batch_size, nesterov, weight_decay)
        build, evaluation = workspace_of("", cls.build_workspace, s), workspace_of("", cls.evaluation_workspace, s)
        return Footprint(state, state, build, (epoch,), evaluation)

    @staticmethod
    def build_workspace(t: Tally, s: Shapes) -> None:
        """``MLP.init``, W made feasible, and the trained copies while the network's own are alive."""
        MLP.init_workspace(t, s)
        feasible_workspace(t, s.reg_w, s.weights() * s.e, s.largest_weight() * s.e)
        t.touch(s.weights() * s.e)

    @staticmethod
    def epoch_workspace(t: Tally, s: Shapes, adam: bool, batch_size: int, nesterov: bool, decay: bool) -> None:
        """What ``sweep`` allocates: the parameters before the epoch, a permutation, each mini-batch's forward and
        backward pass, the optimizer step, the prox of r, D."""
        sizes, e = s.sizes, s.e
        B = min(batch_size, s.n)
        params = s.weights() * e
        largest = (s.largest_weight() + max(sizes[1:])) * e
        t.alloc(params, 8 * s.n)  # the parameters before the epoch, the permutation
        t.alloc((sizes[0] + sizes[-1]) * B * e)  # the mini-batch's X and Y
        saved = sum((1 + s.act.saved + s.residual[l]) * sizes[l + 1] for l in range(s.depth - 1)) * B * e
        widest = max(sizes) * B * e
        t.touch(saved + s.loss.saved * sizes[-1] * B * e, BACKWARD_BLOCKS * widest, s.act.forward * widest)
        # the optimizer step: on the CPU one parameter at a time (Adam: the sqrt of its second moments, their
        # scaling, and the previous parameter's, which its loop variable keeps), on CUDA all at once
        # (torch._foreach_*); the gradient plus weight decay; Nesterov's gradient
        copies = ((3 if s.cpu else 2) if adam else int(nesterov)) + int(decay)
        t.touch(copies * (largest if s.cpu else params))
        t.touch(s.reg_w.prox * s.largest_weight() * e)  # the prox of r
        t.touch(2 * largest)  # D: the change of each parameter, squared
        t.free(params, 8 * s.n, (sizes[0] + sizes[-1]) * B * e)

    @staticmethod
    def evaluation_workspace(t: Tally, s: Shapes) -> None:
        """``Trainer.evaluate``: ``objective`` over all samples at once (autograd for the gradient norm), then the
        network on the training and test samples."""
        sizes, e, n, N = s.sizes, s.e, s.n, s.depth
        differentiable = s.grad_norm and s.reg_w.quadratic
        t.label = "the objective over all samples" + (" and its gradient" if differentiable else "")
        if differentiable:
            saved = sum((1 + s.act.saved + s.residual[l]) * sizes[l + 1] for l in range(N - 1)) * n * e
            widest = max(sizes[1:]) * n * e
            t.touch(saved, s.loss.saved * sizes[-1] * n * e, s.weights() * e, BACKWARD_BLOCKS * widest)
        else:
            for l in range(N):
                out = 2 + s.act_of(l).forward + s.residual[l]  # W V + b, sigma of it (+ V)
                t.touch((sizes[l] if l else 0) * n * e, out * sizes[l + 1] * n * e)
            t.touch(s.loss.value * sizes[-1] * n * e)
        MLP.evaluate_workspace(t, s, n, loss=True)
        MLP.evaluate_workspace(t, s, s.n_test, loss=False)
