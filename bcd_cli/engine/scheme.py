"""What every BCD scheme shares: its hyperparameters, the starting point and the objective's bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from bcd_cli.engine.blocks import ALPHA_CHECKS, feasible, output_alpha
from bcd_cli.engine.inner import InnerSolver
from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import all_reduce_sum_, world_size


class BCDScheme:
    """Hyperparameters and state of a BCD scheme; subclasses define ``sweep`` and ``objective_parts``.

    ``rho`` (the weight of ||U - W V||^2 in three-splitting) defaults to ``gamma``.
    ``solve_dtype`` is the dtype of every Cholesky factorisation and of the W blocks' solves;
    ``state_solve_dtype`` (default: ``solve_dtype``) that of the V blocks' triangular solves,
    whose n right-hand sides (one per sample) make them the costly ones.
    ``inner_iters``/``inner_tol`` bound the monotone inner solvers of blocks without a
    closed form; ``alpha_check`` ('warn' or 'raise') is what happens when alpha fails
    Theorem 2 for a prox-linear loss (see ``blocks.output_alpha``).
    The weights start inside the domain of ``reg_w`` (projected); ``net`` is updated in
    place, so its forward pass always uses the current weights.
    """

    name: ClassVar[str]
    residual: ClassVar[bool] = False  # whether the scheme trains networks with residual layers
    layer_blocks: ClassVar[tuple[str, ...]]  # the blocks of layer i in the order ``sweep`` updates them ("W": W_i, b_i)
    V: list[Tensor]  # the states V_0 = X, V_1, ..., V_N (set by each scheme)

    def __init__(
        self,
        net: MLP,
        X: Tensor,
        Y: Tensor,
        *,
        loss,
        reg_w,
        reg_v,
        gamma: float,
        alpha: float,
        rho: float | None = None,
        solve_dtype: torch.dtype | None = None,
        state_solve_dtype: torch.dtype | None = None,
        inner_iters: int = 20,
        inner_tol: float = 1e-6,
        alpha_check: str = "warn",
    ) -> None:
        if any(net.residual) != self.residual:
            raise ValueError(
                f"splitting={self.name} trains {'residual' if self.residual else 'plain'} networks; "
                f"this one {'has' if any(net.residual) else 'has no'} residual layers"
            )
        if alpha_check not in ALPHA_CHECKS:
            raise ValueError("alpha_check", alpha_check, " or ".join(ALPHA_CHECKS))
        self.net, self.X, self.Y = net, X, Y
        self.loss, self.reg_w, self.reg_v = loss, reg_w, reg_v
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.rho = float(gamma if rho is None else rho)
        self.solve_dtype = solve_dtype
        self.state_solve_dtype = state_solve_dtype or solve_dtype
        self.inner = InnerSolver(iters=int(inner_iters), tol=float(inner_tol))
        self.alpha_out = output_alpha(loss, Y.shape[1], gamma=self.gamma, alpha=self.alpha, check=alpha_check)
        net.W[:] = [feasible(reg_w, w) for w in net.W]

    def sweep(self) -> float:
        """One sweep over all blocks; returns D_k = ||P^k - P^(k-1)||_F^2."""
        raise NotImplementedError

    def update_order(self) -> list[tuple[str, list[Tensor]]]:
        """Every block as (name, tensors) in the order a sweep updates them: layers N down to 1, each in the
        order ``layer_blocks``; named in the paper's indexing, e.g. V3, U3, W3 (W_3 with b_3)."""
        layers = reversed(range(self.net.depth))
        return [(f"{kind}{l + 1}", self.block_tensors(kind, l)) for l in layers for kind in self.layer_blocks]

    def block_tensors(self, kind: str, l: int) -> list[Tensor]:
        """The tensors of block ``kind`` of layer l (the paper's i = l + 1): [V_i] for "V", [W_i, b_i] for "W"."""
        return [self.V[l + 1]] if kind == "V" else [self.net.W[l], self.net.b[l]]

    def nonfinite_block(self) -> str | None:
        """The first block, in the order a sweep updates them, holding a NaN or an infinity; None if all are finite."""
        return first_nonfinite(self.update_order())

    def objective_parts(self) -> dict[str, Tensor]:
        """The terms of the scheme's objective as 0-dim tensors: loss, penalty_v, penalty_u, reg_w, reg_v."""
        raise NotImplementedError

    def blocks(self) -> list[Tensor]:
        """Every block of the state: W, b, then the V (and U) blocks."""
        return [*self.net.W, *self.net.b, *self.V[1:], *getattr(self, "U", [])]

    def _set_blocks(self, blocks: list[Tensor]) -> None:
        depth = self.net.depth
        self.net.W[:], self.net.b[:] = blocks[:depth], blocks[depth : 2 * depth]
        self.V[1:] = blocks[2 * depth : 3 * depth]
        if hasattr(self, "U"):
            self.U[:] = blocks[3 * depth :]

    def gradient_norm(self) -> float:
        """||grad L(P^k)||_F over all blocks (see ``objective``)."""
        return self.objective(with_gradient=True)["grad_norm"]

    def _squared_gradient_norm(self, grads: Sequence[Tensor | None]) -> float:
        """||grad L||^2 from the gradients of this rank's terms, in the order of ``blocks()``.

        Data-parallel: the gradients of W_1..W_N, b_1..b_N sum over the ranks (they are the
        same on every rank afterwards); those of the V and U shards are the rank's own, so
        their squared norms sum over the ranks.
        """
        if world_size() == 1:
            return float(torch.stack([g.square().sum() for g in grads if g is not None]).sum())
        n_weights = 2 * self.net.depth
        weights, states = [torch.zeros((), dtype=torch.float64)], [torch.zeros((), dtype=torch.float64)]
        for i, g in enumerate(grads):
            if g is not None:
                target = weights if i < n_weights else states
                target.append(
                    all_reduce_sum_(g).square().sum().double().cpu()
                    if i < n_weights
                    else g.square().sum().double().cpu()
                )
        state_part = all_reduce_sum_(torch.stack(states).sum().to(self.X.device))
        return float(torch.stack(weights).sum()) + float(state_part)

    def objective(self, *, with_gradient: bool = False) -> dict[str, float]:
        """L(P^k) and its parts, moved to the host in one transfer.

        ``with_gradient`` adds ``grad_norm`` = ||grad L(P^k)||_F over all blocks, by
        autograd through the same evaluation (Lemma 2 bounds it by b ||P^k - P^(k-1)||):
        NaN when a regularizer is not differentiable (l1, box, ...); elsewhere L is
        differentiable almost everywhere (ReLU and hinge kinks have measure zero).
        """
        differentiable = with_gradient and self.reg_w.quadratic and self.reg_v.quadratic
        saved = self.blocks()
        # leaves share the blocks' memory (objective_parts never writes into a block)
        leaves = [t.detach().requires_grad_(True) for t in saved] if differentiable else saved
        try:
            self._set_blocks(leaves)
            with torch.set_grad_enabled(differentiable):
                parts = self.objective_parts()
                values = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in parts.values()])
                # data-parallel: every term but r(W) sums over this rank's samples; r(W) is the same on every rank
                weights = values.new_tensor([1.0 / world_size() if k == "reg_w" else 1.0 for k in parts])
                local = values * weights
                grads = torch.autograd.grad(local.sum(), leaves, allow_unused=True) if differentiable else []
        finally:
            self._set_blocks(saved)
        result = dict(zip(parts, all_reduce_sum_(local.detach()).tolist(), strict=True))
        result["objective"] = sum(result.values())
        if with_gradient:
            result["grad_norm"] = math.sqrt(self._squared_gradient_norm(grads)) if differentiable else math.nan
        return result


def first_nonfinite(blocks: list[tuple[str, list[Tensor]]]) -> str | None:
    """The name of the first (name, tensors) pair with a NaN or an infinity in a tensor; None if all are finite.

    Checks every tensor on its device and moves the flags to the host in one synchronisation.
    """
    if not blocks:
        return None
    names = [name for name, tensors in blocks for _ in tensors]
    finite = torch.stack([torch.isfinite(t).all() for _, tensors in blocks for t in tensors]).tolist()
    return next((name for name, ok in zip(names, finite, strict=True) if not ok), None)
