"""Block solvers shared by the splitting schemes (``../bcd-math.md``, Algorithm 2).

Each function returns the exact minimiser of one block subproblem with every
other block fixed. Matrices are d x n (one column per sample); biases are
vectors broadcast over columns and are never regularized.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bcd_cli.engine.linalg import add_to_diagonal, spd_solve


def update_output_state(loss, reg_v, Y: Tensor, target: Tensor, V_old: Tensor, *, gamma: float, alpha: float) -> Tensor:
    """Returns argmin_V R(V; Y) + s_N(V) + gamma/2 ||V - target||^2 + alpha/2 ||V - V_old||^2.

    ``target`` is U_N (three-splitting). The two quadratics and the quadratic
    part ``ridge/2 ||V||^2`` of s_N merge into one, weight/2 ||V - center||^2,
    handed to the loss's prox.
    """
    weight = gamma + alpha + reg_v.ridge
    center = V_old * (alpha / weight)
    center.add_(target, alpha=gamma / weight)
    return loss.prox(Y, center, weight)


def update_preactivation(act, V: Tensor, Z: Tensor, U_old: Tensor, *, gamma: float, rho: float, alpha: float) -> Tensor:
    """Returns argmin_U gamma/2 ||V - sigma(U)||^2 + rho/2 ||U - Z||^2 + alpha/2 ||U - U_old||^2, elementwise.

    ``Z`` is W V_prev + b. With b = (rho Z + alpha U_old)/(rho + alpha) and
    c = (rho + alpha)/gamma this is the activation's prox(V, b, c).
    """
    if alpha:
        b = Z.mul_(rho / (rho + alpha)).add_(U_old, alpha=alpha / (rho + alpha))  # Z is a fresh product: reuse it
    else:
        b = Z
    return act.prox(V, b, (rho + alpha) / gamma)


def update_weights(
    reg_w,
    U: Tensor,
    V_in: Tensor,
    W_old: Tensor,
    b_old: Tensor,
    *,
    rho: float,
    alpha: float,
    solve_dtype: torch.dtype | None = None,
    block: str = "W",
) -> tuple[Tensor, Tensor]:
    """Returns argmin_{W,b} r(W) + rho/2 ||U - W V_in - b 1^T||^2 + alpha/2 (||W - W_old||^2 + ||b - b_old||^2).

    For r = ridge/2 ||W||^2 the normal equations in Theta = [W b] read
    Theta (rho [V;1][V;1]^T + diag(alpha + ridge, ..., alpha)) = rho U [V;1]^T + alpha [W_old b_old];
    [V;1][V;1]^T is assembled from V V^T, the row sums of V and n, so the
    row of ones is never materialised.
    """
    d, n = V_in.shape
    H = V_in.new_empty(d + 1, d + 1)
    H[:d, :d] = V_in @ V_in.T
    row_sums = V_in.sum(dim=1)
    H[:d, d] = row_sums
    H[d, :d] = row_sums
    H[d, d] = n
    H.mul_(rho)
    diagonal = H.new_full((d + 1,), alpha + reg_w.ridge)
    diagonal[d] = alpha
    add_to_diagonal(H, diagonal)

    G = U.new_empty(U.shape[0], d + 1)
    G[:, :d] = torch.addmm(W_old, U, V_in.T, beta=alpha, alpha=rho)
    G[:, d] = U.sum(dim=1).mul_(rho).add_(b_old, alpha=alpha)
    Theta = spd_solve(H, G.T, solve_dtype=solve_dtype, block=block).T
    return Theta[:, :d].contiguous(), Theta[:, d].contiguous()


def update_hidden_state(
    reg_v,
    target: Tensor,
    U_next: Tensor,
    W_next: Tensor,
    b_next: Tensor,
    *,
    gamma: float,
    rho: float,
    solve_dtype: torch.dtype | None = None,
    block: str = "V",
) -> Tensor:
    """Returns argmin_V s(V) + gamma/2 ||V - target||^2 + rho/2 ||U_next - W_next V - b_next 1^T||^2.

    ``target`` is sigma(U_i). For s = ridge/2 ||V||^2 this solves
    ((gamma + ridge) I + rho W^T W) V = gamma target + rho W^T (U_next - b_next 1^T);
    the bias enters as one column broadcast over the samples.
    """
    H = add_to_diagonal(rho * (W_next.T @ W_next), gamma + reg_v.ridge)
    G = torch.addmm(target, W_next.T, U_next, beta=gamma, alpha=rho)
    G.sub_((W_next.T @ b_next).mul_(rho).unsqueeze(1))
    return spd_solve(H, G, solve_dtype=solve_dtype, block=block)


def squared_distance(A: Tensor, B: Tensor) -> Tensor:
    """||A - B||_F^2 as a 0-dim tensor on A's device (no host synchronisation)."""
    return torch.sub(A, B).square_().sum()
