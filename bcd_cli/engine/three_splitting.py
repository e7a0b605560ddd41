"""Algorithm 2 of Zeng et al. (ICML 2019): three-splitting BCD, backward order.

Objective (2.5), with layers l = 0..N-1 (the paper's i = l + 1):

    L(W, b, V, U) = R(V_N; Y) + sum_l r(W_l) + sum_l s(V_{l+1})
                    + gamma/2 sum_l ||V_{l+1} - sigma_l(U_l)||^2
                    + rho/2   sum_l ||U_l - W_l V_l - b_l 1^T||^2,      V_0 = X.

One sweep visits the blocks from the output back to the input, each solved
exactly with the others fixed at their latest values (``bcd-math.md``):

    V_N <- argmin R + s_N + gamma/2 ||V - U_N||^2 + alpha/2 ||V - V_N^old||^2
    U_N <- argmin gamma/2 ||V_N - U||^2 + rho/2 ||U - W_N V_{N-1} - b_N||^2
    W_N <- argmin r + rho/2 ||U_N - W V_{N-1} - b||^2 + alpha/2 ||(W, b) - old||^2
    for i = N-1 .. 1:
        V_i <- argmin s + gamma/2 ||V - sigma(U_i)||^2 + rho/2 ||U_{i+1} - W_{i+1} V - b_{i+1}||^2
        U_i <- argmin gamma/2 ||V_i - sigma(U)||^2 + rho/2 ||U - W_i V_{i-1} - b_i||^2 + alpha/2 ||U - U_i^old||^2
        W_i <- as W_N, with U_i and V_{i-1}
"""

from __future__ import annotations

import torch
from torch import Tensor

from bcd_cli.catalogue.activations import Linear
from bcd_cli.engine.blocks import (
    squared_distance,
    update_hidden_state,
    update_output_state,
    update_preactivation,
    update_weights,
)
from bcd_cli.engine.network import MLP


class ThreeSplittingBCD:
    """State (W, b, V, U) of three-splitting BCD and its sweep.

    U and V start from one forward pass of ``net`` (Remark 1). ``net`` is
    updated in place, so its forward pass always uses the current weights.
    """

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
    ) -> None:
        self.net, self.Y = net, Y
        self.loss, self.reg_w, self.reg_v = loss, reg_w, reg_v
        self.gamma, self.alpha = float(gamma), float(alpha)
        self.rho = float(gamma if rho is None else rho)
        self.solve_dtype = solve_dtype
        self.U, self.V = net.forward_states(X)

    def sweep(self) -> float:
        """One sweep of Algorithm 2; returns D_k = ||P^k - P^(k-1)||_F^2 over all blocks."""
        net, U, V = self.net, self.U, self.V
        W, b = net.W, net.b
        gamma, rho, alpha = self.gamma, self.rho, self.alpha
        N = net.depth
        D = U[0].new_zeros(())
        for l in reversed(range(N)):
            i = l + 1  # the paper's layer index, for messages
            if l == N - 1:
                V_new = update_output_state(self.loss, self.reg_v, self.Y, U[l], V[l + 1], gamma=gamma, alpha=alpha)
                # U_N: strongly convex, no proximal term
                U_new = update_preactivation(
                    Linear(), V_new, net.pre_activation(l, V[l]), U[l], gamma=gamma, rho=rho, alpha=0.0
                )
            else:
                V_new = update_hidden_state(
                    self.reg_v, net.acts[l](U[l]), U[l + 1], W[l + 1], b[l + 1],
                    gamma=gamma, rho=rho, solve_dtype=self.solve_dtype, block=f"V{i}",
                )  # fmt: skip
                U_new = update_preactivation(
                    net.acts[l], V_new, net.pre_activation(l, V[l]), U[l], gamma=gamma, rho=rho, alpha=alpha
                )
            D += squared_distance(V_new, V[l + 1]) + squared_distance(U_new, U[l])
            V[l + 1], U[l] = V_new, U_new
            W_new, b_new = update_weights(
                self.reg_w, U[l], V[l], W[l], b[l], rho=rho, alpha=alpha, solve_dtype=self.solve_dtype, block=f"W{i}"
            )
            D += squared_distance(W_new, W[l]) + squared_distance(b_new, b[l])
            W[l], b[l] = W_new, b_new
        return D.item()

    def objective(self) -> dict[str, float]:
        """L(P^k) of (2.5) and its parts: loss, the two penalty sums, the two regularizer sums."""
        net, U, V = self.net, self.U, self.V
        layers = list(enumerate(net.acts))
        parts = {
            "loss": self.loss(V[-1], self.Y),
            "penalty_v": 0.5 * self.gamma * sum(squared_distance(V[l + 1], sigma(U[l])) for l, sigma in layers),
            "penalty_u": 0.5 * self.rho * sum(squared_distance(U[l], net.pre_activation(l, V[l])) for l, _ in layers),
            "reg_w": sum(self.reg_w(w) for w in net.W),
            "reg_v": sum(self.reg_v(v) for v in V[1:]),
        }
        values = torch.stack([torch.as_tensor(p, dtype=torch.float64, device=V[-1].device) for p in parts.values()])
        result = dict(zip(parts, values.tolist(), strict=True))  # one host transfer
        result["objective"] = sum(result.values())
        return result
