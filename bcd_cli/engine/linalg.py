"""Symmetric positive definite solves by Cholesky factorisation (never an inverse)."""

from __future__ import annotations

import torch
from torch import Tensor

from bcd_cli.errors import NumericalError


def spd_solve(H: Tensor, G: Tensor, *, solve_dtype: torch.dtype | None = None, block: str = "") -> Tensor:
    """Returns X with H X = G, for H symmetric positive definite.

    H is factorised as L L^T in ``solve_dtype`` (default: H's dtype) and both
    triangular solves run in that dtype; X comes back in G's dtype.
    """
    dtype = solve_dtype or H.dtype
    L, info = torch.linalg.cholesky_ex(H.to(dtype))
    if int(info) != 0:
        raise NumericalError(f"Cholesky factorisation failed in block {block} (matrix not positive definite)")
    return torch.cholesky_solve(G.to(dtype), L).to(G.dtype)


def add_to_diagonal(H: Tensor, value: float | Tensor) -> Tensor:
    """Adds ``value`` (a scalar or a vector) to the diagonal of the square matrix H, in place."""
    H.diagonal().add_(value)
    return H
