"""What every BCD scheme shares: its hyperparameters, the starting point and the objective's bookkeeping."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from bcd_cli.engine.blocks import ALPHA_CHECKS, feasible, output_alpha
from bcd_cli.engine.inner import InnerSolver
from bcd_cli.engine.network import MLP, column_chunks
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

    def objective(self, *, with_gradient: bool = False) -> dict[str, float]:
        """L(P^k) and its parts, moved to the host in one transfer.

        ``with_gradient`` adds ``grad_norm`` = ||grad L(P^k)||_F over all blocks, by
        autograd through the same evaluation (Lemma 2 bounds it by b ||P^k - P^(k-1)||):
        NaN when a regularizer is not differentiable (l1, box, ...); elsewhere L is
        differentiable almost everywhere (ReLU and hinge kinks have measure zero).

        Every term but r(W) is a sum over samples, so L is evaluated over column chunks of
        the samples (``network.column_chunks``), as the ranks of a data-parallel run split them:
        the chunk's parts are added up, r(W) weighted by 1 / (chunks x ranks), a mean loss by
        the chunk's share of the samples. The gradients of W and b add up over the chunks and
        ranks; the V and U blocks' gradients are the chunk's own, their squared norms add up.
        Autograd thus holds the intermediates of one chunk at a time, not of the whole state.
        """
        differentiable = with_gradient and self.reg_w.quadratic and self.reg_v.quadratic
        saved, X, Y = self.blocks(), self.V[0], self.Y
        n_weights, n = 2 * self.net.depth, X.shape[1]
        weights = [t.detach().requires_grad_(differentiable) for t in saved[:n_weights]]  # the blocks' memory
        state_squares, total = X.new_zeros((), dtype=torch.float64), None
        chunks = column_chunks(n)
        try:
            for columns in chunks:
                states = [t[:, columns].detach().requires_grad_(differentiable) for t in saved[n_weights:]]
                self._set_blocks([*weights, *states])
                self.V[0], self.Y = X[:, columns], Y[:, columns]
                with torch.set_grad_enabled(differentiable):
                    parts = self.objective_parts()
                    share = (columns.stop - columns.start) / n
                    scale = [1.0 / (len(chunks) * world_size()) if k == "reg_w" else
                             share if k == "loss" and getattr(self.loss, "reduction", "sum") == "mean" else 1.0
                             for k in parts]  # fmt: skip
                    local = torch.stack([torch.as_tensor(p, dtype=torch.float64) for p in parts.values()])
                    local = local * local.new_tensor(scale)
                    if differentiable:  # W and b gradients accumulate in their .grad over the chunks
                        local.sum().backward(inputs=[*weights, *states])
                        state_squares += sum(t.grad.double().square().sum() for t in states if t.grad is not None)
                total = local.detach() if total is None else total + local.detach()
        finally:
            self._set_blocks(saved)
            self.V[0], self.Y = X, Y
        assert total is not None  # at least one chunk: n >= 1
        weight_grads = [w.grad for w in weights if w.grad is not None]
        result = dict(zip(parts, all_reduce_sum_(total).tolist(), strict=True))
        result["objective"] = sum(result.values())
        if with_gradient:
            result["grad_norm"] = (
                math.sqrt(self._squared_gradient_norm(weight_grads, state_squares)) if differentiable else math.nan
            )
        return result

    def _squared_gradient_norm(self, weight_grads: Sequence[Tensor], state_squares: Tensor) -> float:
        """||grad L||^2 from the summed gradients of W_1..W_N, b_1..b_N and the squared norms of the V
        and U blocks' gradients; data-parallel, the first sum over the ranks (then they are the same on
        every rank) and so do the second."""
        for g in weight_grads:
            all_reduce_sum_(g)
        weights = sum(g.double().square().sum() for g in weight_grads)
        return float(weights + all_reduce_sum_(state_squares))


def first_nonfinite(blocks: list[tuple[str, list[Tensor]]]) -> str | None:
    """The name of the first (name, tensors) pair with a NaN or an infinity in a tensor; None if all are finite.

    Checks every tensor on its device and moves the flags to the host in one synchronisation.
    """
    if not blocks:
        return None
    names = [name for name, tensors in blocks for _ in tensors]
    finite = torch.stack([torch.isfinite(t).all() for _, tensors in blocks for t in tensors]).tolist()
    return next((name for name, ok in zip(names, finite, strict=True) if not ok), None)
