"""Algorithm 1 of Zeng et al. (ICML 2019): two-splitting BCD, backward order (docs/math.md §1.1, §2).

Objective (2.3), with layers l = 0..N-1 (the paper's i = l + 1):

    L(W, b, V) = R(V_N; Y) + sum_l r(W_l) + sum_l s(V_{l+1})
                 + gamma/2 sum_l ||V_{l+1} - sigma_l(W_l V_l + b_l 1^T)||^2,      V_0 = X.

One sweep (Zeng et al. 2019, Algorithm 1), every block with the proximal term alpha/2 ||. - old||^2:

    V_N <- argmin R + s_N + gamma/2 ||V - W_N V_{N-1} - b_N||^2 + alpha/2 ||V - V_N^old||^2  (exact, or prox-linear)
    W_N <- argmin r + gamma/2 ||V_N - W V_{N-1} - b||^2 + alpha/2 ||(W, b) - old||^2         (sigma_N = Id: Cholesky)
    for i = N-1 .. 1:
        V_i <- argmin s + gamma/2 ||V - sigma_i(W_i V_{i-1} + b_i)||^2
                        + gamma/2 ||V_{i+1} - sigma_{i+1}(W_{i+1} V + b_{i+1})||^2 + alpha/2 ||V - V_i^old||^2
        W_i <- argmin r + gamma/2 ||V_i - sigma_i(W V_{i-1} + b)||^2 + alpha/2 ||(W, b) - old||^2

V_i is quadratic when sigma_{i+1} is the identity (always for i = N-1) and W_i when
sigma_i is; those blocks are solved exactly. The others are nonconvex and solved by
proximal gradient with backtracking from the old value, which never raises the block
objective; with the proximal terms this keeps Lemma 1's sufficient descent (docs/math.md §2.5, §4.1).
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from bcd_cli.catalogue.activations import Linear
from bcd_cli.engine.blocks import (
    feasible,
    sample_chunk_columns,
    squared_distance,
    squared_distance_workspace,
    update_hidden_state,
    update_hidden_state_nonlinear,
    update_hidden_state_nonlinear_workspace,
    update_hidden_state_workspace,
    update_output_state,
    update_output_state_workspace,
    update_weights,
    update_weights_nonlinear,
    update_weights_nonlinear_workspace,
    update_weights_workspace,
)
from bcd_cli.engine.inner import sample_chunks
from bcd_cli.engine.scheme import BCDScheme
from bcd_cli.engine.workspace import LINEAR, Shapes, Tally


class TwoSplittingBCD(BCDScheme):
    """State (W, b, V) of two-splitting BCD and its sweep. V starts from one forward pass of ``net``."""

    name = "two"
    splitting = "two"
    layer_blocks = ("V", "W")  # sweep: V_N, W_N, V_{N-1}, W_{N-1}, ..., W_1

    def __init__(self, net, X, Y, **hyper) -> None:
        super().__init__(net, X, Y, **hyper)
        _, self.V = net.forward_states(X)
        self.V[1:] = [feasible(self.reg_v, v) for v in self.V[1:]]

    def sweep_blocks(self) -> float:
        """One sweep of Algorithm 1; returns D_k = ||P^k - P^(k-1)||_F^2 over all blocks."""
        net, V = self.net, self.V
        W, b, acts = net.W, net.b, net.acts
        gamma, alpha = self.gamma, self.alpha
        N = net.depth
        D = V[0].new_zeros(())
        for l in self.layer_order():
            i = l + 1  # the paper's layer index, for messages
            if l == N - 1:
                V_new = update_output_state(
                    self.loss, self.reg_v, self.Y, net.pre_activation(l, V[l]), V[i], gamma=gamma, alpha=self.alpha_out
                )
            elif isinstance(acts[i], Linear):
                weight = gamma + alpha
                target = torch.empty_like(V[i])  # filled chunk by chunk: sigma(W V + b) is never held whole
                for cols in sample_chunks(V[i].shape[1], V[i].shape[0], cpu=V[i].device.type == "cpu"):
                    target[:, cols] = self._target_columns(l, V[l], V[i], cols)
                V_new = update_hidden_state(
                    self.reg_v, target, weight, V[i + 1], W[i], b[i], V[i],
                    rho=gamma, solve_dtype=self.solve_dtype, rhs_dtype=self.state_solve_dtype, inner=self.inner,
                    block=f"V{i}", overwrite_target=True,  # target: a new tensor
                )  # fmt: skip
                del target  # freed here when the solver returns a new tensor (FISTA, for a nonsmooth s)
            else:  # the target's columns computed where the solver needs them: it is never held whole
                V_new = update_hidden_state_nonlinear(
                    acts[i], self.reg_v, functools.partial(self._target_columns, l, V[l], V[i]), gamma + alpha,
                    V[i + 1], W[i], b[i], V[i], gamma=gamma, inner=self.inner,
                )  # fmt: skip
            D += squared_distance(V_new, V[i])
            V[i] = V_new
            if isinstance(acts[l], Linear):
                W_new, b_new = update_weights(
                    self.reg_w, V[i], V[l], W[l], b[l],
                    rho=gamma, alpha=alpha, solve_dtype=self.solve_dtype, inner=self.inner, block=f"W{i}",
                    moments=self.data_moments if l == 0 else None,
                )  # fmt: skip
            else:
                W_new, b_new = update_weights_nonlinear(
                    acts[l], self.reg_w, V[i], V[l], W[l], b[l], gamma=gamma, alpha=alpha, inner=self.inner
                )
            D += squared_distance(W_new, W[l]) + squared_distance(b_new, b[l])
            W[l], b[l] = W_new, b_new
        return D.item()

    @classmethod
    def caches_moments(cls, s: Shapes) -> bool:
        return s.act_of(0) is LINEAR  # the W_1 block by ``update_weights`` only when sigma_1 is the identity

    @classmethod
    def closed_form_weights(cls, s: Shapes, l: int) -> bool:
        return s.reg_w.quadratic and s.act_of(l) is LINEAR

    @staticmethod
    def state_block_workspace(t: Tally, s: Shapes, l: int) -> None:
        """The V_{l+1} block of ``sweep_blocks``: its target (whole, by chunks, or column by column inside the
        solver), the update, D's term; the new V replaces the old."""
        m, n, e = s.sizes[l + 1], s.n, s.e
        block = m * n * e
        if l == s.depth - 1:
            t.alloc(block)  # the target W V + b
            update_output_state_workspace(t, s)
        elif s.act_of(l + 1) is LINEAR:  # sigma_{l+2} = Id: the closed form, in the target's memory
            chunk = m * sample_chunk_columns(s, m) * e
            t.alloc(block)  # the target, chunk by chunk: W V + b, sigma of it
            t.touch(chunk, (1 + s.act.forward) * chunk)
            update_hidden_state_workspace(t, s, l)
        else:  # the target's columns made chunk by chunk inside the solver
            update_hidden_state_nonlinear_workspace(t, s, l)
        t.touch(squared_distance_workspace(s, m, n))
        t.free(block)  # the old V
        if l == s.depth - 1:
            t.free(block)  # the target

    @classmethod
    def weights_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The W_l block of ``sweep_blocks``: by the normal equations when sigma_l is the identity (from
        ``data_moments`` for the first layer), else proximal gradient; D's term; the new W, b replace the old."""
        d, m = s.sizes[l], s.sizes[l + 1]
        if s.act_of(l) is LINEAR:
            b = update_weights_workspace(t, s, l, moments=l == 0 and cls.caches_moments(s))
        else:
            b = update_weights_nonlinear_workspace(t, s, l)
        t.touch(squared_distance_workspace(s, m, d))
        t.free(m * d * s.e, b)

    def _target_columns(self, l: int, V_in: Tensor, V_old: Tensor, cols: slice) -> Tensor:
        """The columns ``cols`` of the target T of the V_{l+1} block (docs/math.md §2.2), the penalty and the
        proximal term merged: (gamma sigma_l(W_l V_in + b_l) + alpha V_old) / (gamma + alpha); a new tensor."""
        weight = self.gamma + self.alpha
        pre = self.net.pre_activation(l, V_in[:, cols])
        return self.net.acts[l](pre).mul_(self.gamma / weight).add_(V_old[:, cols], alpha=self.alpha / weight)

    def objective_parts(self):
        """The terms of (2.3); two-splitting has no U blocks, so penalty_u is 0."""
        net, V = self.net, self.V
        layers = range(net.depth)
        return {
            "loss": self.loss(V[-1], self.Y),
            "penalty_v": 0.5
            * self.gamma
            * sum(squared_distance(V[l + 1], net.acts[l](net.pre_activation(l, V[l]))) for l in layers),
            "penalty_u": V[0].new_zeros(()),
            "reg_w": sum(self.reg_w(w) for w in net.W),
            "reg_v": sum(self.reg_v(v) for v in V[1:]),
        }
