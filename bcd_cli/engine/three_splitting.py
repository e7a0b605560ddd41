"""Algorithm 2 of Zeng et al. (ICML 2019): three-splitting BCD, backward order (docs/math.md §1.2, §2).

Objective (2.5), with layers l = 0..N-1 (the paper's i = l + 1):

    L(W, b, V, U) = R(V_N; Y) + sum_l r(W_l) + sum_l s(V_{l+1})
                    + gamma/2 sum_l ||V_{l+1} - sigma_l(U_l)||^2
                    + rho/2   sum_l ||U_l - W_l V_l - b_l 1^T||^2,      V_0 = X.

One sweep visits the blocks from the output back to the input, each solved with the
others fixed at their latest values (Zeng et al. 2019, Algorithm 2):

    V_N <- argmin R + s_N + gamma/2 ||V - U_N||^2 + alpha/2 ||V - V_N^old||^2   (exact, or prox-linear (3.2))
    U_N <- argmin gamma/2 ||V_N - U||^2 + rho/2 ||U - W_N V_{N-1} - b_N||^2
    W_N <- argmin r + rho/2 ||U_N - W V_{N-1} - b||^2 + alpha/2 ||(W, b) - old||^2
    for i = N-1 .. 1:
        V_i <- argmin s + gamma/2 ||V - sigma(U_i)||^2 + rho/2 ||U_{i+1} - W_{i+1} V - b_{i+1}||^2
        U_i <- argmin gamma/2 ||V_i - sigma(U)||^2 + rho/2 ||U - W_i V_{i-1} - b_i||^2 + alpha/2 ||U - U_i^old||^2
        W_i <- as W_N, with U_i and V_{i-1}

The V_i block needs no proximal term when s is quadratic (it is solved exactly); for a
nonsmooth s (l1, box, ...) it is solved by a monotone inner solver, and the proximal term
alpha/2 ||V - V_i^old||^2 is added so that Lemma 1's sufficient descent still holds
(docs/math.md §2.2, §4.1).
"""

from __future__ import annotations

import torch
from torch import Tensor

from bcd_cli.engine.blocks import (
    feasible,
    squared_distance,
    update_hidden_state,
    update_output_state,
    update_preactivation,
    update_weights,
)
from bcd_cli.engine.parallel import all_reduce_sum_
from bcd_cli.engine.scheme import BCDScheme


class ThreeSplittingBCD(BCDScheme):
    """State (W, b, V, U) of three-splitting BCD and its sweep.

    U and V start from one forward pass of ``net`` (Remark 1), V projected onto the
    domain of ``reg_v``.
    """

    name = "three"
    splitting = "three"
    layer_blocks = ("V", "U", "W")  # sweep: V_N, U_N, W_N, V_{N-1}, U_{N-1}, W_{N-1}, ..., W_1

    def block_tensors(self, kind: str, l: int) -> list[Tensor]:
        return [self.U[l]] if kind == "U" else super().block_tensors(kind, l)

    def sample_blocks(self) -> dict[str, list[Tensor]]:
        return {"V": self.V[1:], "U": list(self.U)}

    def _set_sample_blocks(self, blocks: dict[str, list[Tensor]]) -> None:
        self.V[1:], self.U[:] = blocks["V"], blocks["U"]

    def __init__(self, net, X, Y, **hyper) -> None:
        super().__init__(net, X, Y, **hyper)
        self.U, self.V = net.forward_states(X)
        self.V[1:] = [feasible(self.reg_v, v) for v in self.V[1:]]

    def hidden_state_target(self, l: int) -> tuple[Tensor, float]:
        """(target, weight) merging the V_{l+1} block's terms gamma/2 ||V - sigma(U_l)||^2 (and the proximal
        term when s is not quadratic) into weight/2 ||V - target||^2; its coupling through W_{l+1} stays apart.
        The target is a new tensor, which the V block overwrites."""
        target, weight = self.net.layer_output(l, self.V[l], self.U[l]), self.gamma  # a new tensor
        return self.with_proximal_term(l, target, weight)

    def with_proximal_term(self, l: int, target: Tensor, weight: float) -> tuple[Tensor, float]:
        """Adds alpha/2 ||V - V_{l+1}^old||^2 to weight/2 ||V - target||^2 when the V block is solved inexactly."""
        if self.reg_v.quadratic:
            return target, weight
        total = weight + self.alpha
        return torch.add(target, self.V[l + 1], alpha=self.alpha / weight).mul_(weight / total), total

    def residual_input(self, l: int) -> Tensor | None:
        """What layer l adds to sigma_l(U_l) in its output V_{l+1}: nothing in a plain network."""
        return None

    def sweep(self) -> float:
        """One sweep of Algorithm 2; returns D_k = ||P^k - P^(k-1)||_F^2 over all blocks."""
        net, U, V = self.net, self.U, self.V
        W, b = net.W, net.b
        gamma, rho, alpha = self.gamma, self.rho, self.alpha
        N = net.depth
        D, D_states = U[0].new_zeros(()), U[0].new_zeros(())  # W, b are the same on every rank; V, U are shards
        for l in self.layer_order():
            i = l + 1  # the paper's layer index, for messages
            if l == N - 1:
                V_new = update_output_state(
                    self.loss, self.reg_v, self.Y, U[l], V[i], gamma=gamma, alpha=self.alpha_out
                )
            else:
                target, weight = self.hidden_state_target(l)
                V_new = update_hidden_state(
                    self.reg_v, target, weight, U[i], W[i], b[i], V[i],
                    rho=rho, solve_dtype=self.solve_dtype, rhs_dtype=self.state_solve_dtype, inner=self.inner,
                    block=f"V{i}", overwrite_target=True,
                )  # fmt: skip
                del target
            D_states += squared_distance(V_new, V[i])
            V[i] = V_new  # the old V_i is freed before the U_i block's temporaries are made
            U_new = update_preactivation(
                net.acts[l], V_new, net.pre_activation(l, V[l]), U[l],
                gamma=gamma, rho=rho, alpha=0.0 if l == N - 1 else alpha,  # U_N: strongly convex, no proximal term
                V_in=self.residual_input(l),
            )  # fmt: skip
            del V_new
            D_states += squared_distance(U_new, U[l])
            U[l] = U_new
            W_new, b_new = update_weights(
                self.reg_w, U[l], V[l], W[l], b[l],
                rho=rho, alpha=alpha, solve_dtype=self.solve_dtype, inner=self.inner, block=f"W{i}",
            )  # fmt: skip
            D += squared_distance(W_new, W[l]) + squared_distance(b_new, b[l])
            W[l], b[l] = W_new, b_new
        return (D + all_reduce_sum_(D_states)).item()

    def objective_parts(self):
        """The terms of (2.5) (or (3.4) for residual layers, whose penalty is ||V_i - V_{i-1} - sigma(U_i)||^2)."""
        net, U, V = self.net, self.U, self.V
        layers = range(net.depth)
        return {
            "loss": self.loss(V[-1], self.Y),
            "penalty_v": 0.5
            * self.gamma
            * sum(squared_distance(V[l + 1], net.layer_output(l, V[l], U[l])) for l in layers),
            "penalty_u": 0.5 * self.rho * sum(squared_distance(U[l], net.pre_activation(l, V[l])) for l in layers),
            "reg_w": sum(self.reg_w(w) for w in net.W),
            "reg_v": sum(self.reg_v(v) for v in V[1:]),
        }
