"""Symmetric positive definite solves by Cholesky factorisation (never an inverse)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from bcd_cli.engine.chunking import wide_chunk_columns, wide_column_chunks
from bcd_cli.engine.workspace import Tally
from bcd_cli.errors import NumericalError

log = logging.getLogger(__name__)

# Rounding H to its dtype moves its eigenvalues by about eps ||H|| (measured: -3 eps mean|diag H| for
# a float32 A A^T, A 50 x 10), so a PSD H can look indefinite: the retries shift the diagonal by these
# multiples of eps(H.dtype) x mean|diag H|, and keep a solution only if the shift hardly changed it.
JITTER_EPS_MULTIPLES = (10.0, 1e2, 1e3, 1e4)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def spd_solve(
    H: Tensor,
    G: Tensor,
    *,
    solve_dtype: torch.dtype | None = None,
    rhs_dtype: torch.dtype | None = None,
    block: str = "",
    overwrite: bool = False,
) -> Tensor:
    """Returns X with H X = G, for H symmetric positive definite.

    H is factorised as L L^T in ``solve_dtype`` (default: H's dtype) and both
    triangular solves run in ``rhs_dtype`` (default: the factorisation's, L cast to it
    otherwise); X comes back in G's dtype. When the
    factorisation fails, it is retried in float64 (once as is when it failed in a
    narrower dtype, then with the diagonal shifts of ``JITTER_EPS_MULTIPLES``) and the
    first retry that factorises, and whose shift changes H X by at most sqrt(eps(H.dtype)) ||G||,
    is kept, with a warning naming ``block`` (e.g. ``W3``, ``V2``).
    Raises NumericalError when H has a non-finite entry or every retry fails.
    ``overwrite`` allows X to be written into G's memory (when G has the solve's dtype).
    """
    dtype = solve_dtype or H.dtype
    L, info = torch.linalg.cholesky_ex(H.to(dtype))
    if bool((info == 0) & torch.isfinite(H).all()):  # one host synchronisation, as for info alone
        return cholesky_solve(L.to(rhs_dtype or dtype), G, overwrite=overwrite)
    return _retry_with_jitter(H, G, failed_in=dtype, block=block)


def cholesky_solve(L: Tensor, G: Tensor, *, overwrite: bool = False) -> Tensor:
    """Returns X with L L^T X = G (L lower triangular), solved in L's dtype, X in G's dtype and layout.

    For G of shape k x n with many columns (a block of states, one per sample), solving
    X^T (L L^T) = G^T from the right keeps the row-major G as LAPACK's column-major G^T: the
    two triangular solves then run in place, with no transposed copy of G and a row-major X
    (``torch.cholesky_solve`` returns a column-major X, on which every later elementwise pass
    is several times slower). The columns go through ``_map_columns``. ``overwrite`` lets X
    take G's memory.
    """
    return _map_columns(G, L.dtype, lambda x, columns: _solve_from_the_right(L, x), overwrite=overwrite)


def shifted_gram_solve(
    shift: float,
    scale: float,
    W: Tensor,
    G: Tensor,
    *,
    solve_dtype: torch.dtype | None = None,
    rhs_dtype: torch.dtype | None = None,
    block: str = "",
    overwrite: bool = False,
) -> Tensor:
    """Returns X with (shift I + scale W^T W) X = G, for W of shape m x d, G of shape d x n, shift > 0.

    When the m x m form is cheaper (``woodbury_is_cheaper``, e.g. W is the 10 x d output layer),
    by the Woodbury identity (shift I + scale W^T W)^-1 = (I - scale W^T K^-1 W) / shift with
    K = shift I_m + scale W W^T: an m x m factorisation and two m-row products in place of the
    d x d factorisation and its 2 d^2 n triangular solves. K is factorised in ``solve_dtype``;
    the products and K's triangular solves run in ``rhs_dtype`` (default: ``solve_dtype``, else
    G's), the columns of G through ``_map_columns``. Otherwise the d x d matrix is solved by
    ``spd_solve`` with these dtypes. Failures name ``block``.
    """
    m, d = W.shape
    if not woodbury_is_cheaper(m, d):
        H = add_to_diagonal(gram(W.mT).mul_(scale), shift)
        return spd_solve(H, G, solve_dtype=solve_dtype, rhs_dtype=rhs_dtype, block=block, overwrite=overwrite)
    dtype = rhs_dtype or solve_dtype or G.dtype
    W_wide = W.to(dtype)
    K = add_to_diagonal(gram(W).mul_(scale), shift)
    WG = torch.cat([W_wide @ G[:, columns].to(dtype) for columns in wide_column_chunks(G, dtype)], dim=1)
    R = spd_solve(K, WG, solve_dtype=solve_dtype, rhs_dtype=dtype, block=block, overwrite=True)
    return _map_columns(
        G, dtype, lambda x, columns: x.addmm_(W_wide.T, R[:, columns], alpha=-scale).div_(shift), overwrite=overwrite
    )


def woodbury_is_cheaper(m: int, d: int) -> bool:
    """Whether ``shifted_gram_solve`` for W of shape m x d takes the m x m Woodbury form: when
    m^2 + 2 m d < d^2, the work per right-hand side of the m x m triangular solves and the two m-row
    products against the d^2 of the d x d triangular solves."""
    return m * m + 2 * m * d < d * d


def spd_solve_workspace(t: Tally, k: int, cols: int, *, e: int, es: int, G: int, rhs: int, overwrite: bool) -> int:
    """What ``spd_solve`` of a k x k H (``e`` bytes an element, allocated by the caller) for a k x cols G of
    ``G`` bytes an element allocates (``workspace``): H in the solve dtype (``es``) and its factor L,
    ``isfinite(H)``'s temporaries, L in the right-hand sides' dtype (``rhs``), the solution (none with
    ``overwrite``) and ``_map_columns``' wide chunks. Returns the solution's bytes, which stay allocated."""
    cast = k * k * es if es != e else 0
    t.alloc(cast, k * k * es)  # H in the solve dtype, its factor L
    t.free(cast)
    t.touch(k * k * e, 2 * k * k)  # isfinite(H): |H| and two masks
    L_rhs = k * k * rhs if rhs != es else 0
    t.alloc(L_rhs)
    X = 0 if overwrite else k * cols * G
    t.alloc(X)
    if G != rhs:
        t.touch(map_columns_workspace(k, cols, G, rhs))
    t.free(k * k * es, L_rhs)
    return X


def shifted_gram_solve_workspace(t: Tally, p: int, m: int, n: int, *, e: int, es: int, er: int) -> None:
    """What ``shifted_gram_solve`` for W of shape p x m and G of shape m x n (``e`` bytes an element) allocates
    into G's memory (``overwrite``): W^T W and its solve, or Woodbury's p x p K, W in the right-hand sides'
    dtype (``er``) and W G, its column chunks and their ``torch.cat``."""
    if not woodbury_is_cheaper(p, m):  # the m x m system
        t.alloc(m * m * e)  # W^T W (``gram``), scaled and shifted in place
        spd_solve_workspace(t, m, n, e=e, es=es, G=e, rhs=er, overwrite=True)
        t.free(m * m * e)
        return
    wide = p * m * er if er != e else 0  # W_wide, K = shift I + scale W W^T (p x p)
    t.alloc(wide, p * p * e)
    width = wide_chunk_columns(m, n, widened=er != e)
    t.alloc(p * n * er)  # W G (column chunks in the wider dtype)
    if er != e:
        t.touch(m * width * er)
    t.alloc(p * n * er)  # their torch.cat: WG
    t.free(p * n * er)
    spd_solve_workspace(t, p, n, e=e, es=es, G=er, rhs=er, overwrite=True)
    if er != e:
        t.touch(map_columns_workspace(m, n, e, er))  # G - scale W^T R, column chunk by column chunk
    t.free(p * n * er, p * p * e, wide)


def map_columns_workspace(rows: int, cols: int, G: int, wide: int) -> int:
    """Bytes of the wide copies ``_map_columns`` holds at once for a rows x cols G of ``G`` bytes an element
    worked on in a dtype of ``wide`` bytes: two chunks (the next one is made before the loop variable lets the
    previous one go), or the only one."""
    width = wide_chunk_columns(rows, cols, widened=G != wide)
    return min(2, -(-cols // width)) * rows * width * wide


def _map_columns(
    G: Tensor, dtype: torch.dtype, update: Callable[[Tensor, slice], object], *, overwrite: bool
) -> Tensor:
    """X in G's dtype and row-major layout with X[:, c] = update(G[:, c] in ``dtype``, c) for the chunks c of
    ``chunking.wide_column_chunks``; ``update`` works in place on a row-major k x |c| tensor. ``overwrite``: X is
    G itself (when G is contiguous)."""
    X = G if overwrite and G.is_contiguous() else torch.empty_like(G, memory_format=torch.contiguous_format)
    if G.dtype == dtype:  # one chunk, updated in X itself
        if X is not G:
            X.copy_(G)
        update(X, slice(0, G.shape[1]))
        return X
    for columns in wide_column_chunks(G, dtype):
        wide = G[:, columns].to(dtype, memory_format=torch.contiguous_format)
        update(wide, columns)
        X[:, columns].copy_(wide)
    return X


def _solve_from_the_right(L: Tensor, X: Tensor) -> None:
    """Overwrites the row-major X (k x n) with (L L^T)^-1 X, by X^T L^-T L^-1 in place."""
    Xt = X.mT  # n x k in column-major order
    torch.linalg.solve_triangular(L.mT, Xt, upper=True, left=False, out=Xt)  # Y L^T = X^T
    torch.linalg.solve_triangular(L, Xt, upper=False, left=False, out=Xt)  # Z L = Y, Z = X^T (L L^T)^-1


def _retry_with_jitter(H: Tensor, G: Tensor, *, failed_in: torch.dtype, block: str) -> Tensor:
    """The float64 retries of ``spd_solve`` after its factorisation of H failed in ``failed_in``."""
    if not bool(torch.isfinite(H).all()):
        raise NumericalError(f"Cholesky factorisation failed in block {block}: the matrix has non-finite entries")
    H64, G64 = H.to(torch.float64), G.to(torch.float64)
    eps = torch.finfo(H.dtype).eps
    scale = float(H64.diagonal().abs().mean())
    G_norm = float(torch.linalg.matrix_norm(G64))
    multiples = ((0.0,) if failed_in != torch.float64 else ()) + JITTER_EPS_MULTIPLES
    detail = ""
    for multiple in multiples:
        jitter = multiple * eps * scale
        L, info = torch.linalg.cholesky_ex(add_to_diagonal(H64.clone(), jitter))
        if int(info) != 0:
            continue
        X = cholesky_solve(L, G64)
        shift = jitter * float(torch.linalg.matrix_norm(X))  # ||(H + jitter I) X - H X||: what the shift changed
        if shift <= eps**0.5 * G_norm:  # large when G leaves the range of a singular H, whatever the jitter
            log.warning(
                "Cholesky factorisation failed in block %s in %s; solved in float64 with diagonal jitter %.3g "
                "(%g eps x mean|diag H|)", block, _name(failed_in), jitter, multiple,
            )  # fmt: skip
            return X.to(G.dtype)
        detail = f" (it factorises, but the jitter changes H X by {shift / G_norm:.3g} ||G||: H is singular)"
    raise NumericalError(
        f"Cholesky factorisation failed in block {block}: the matrix is not positive definite even with jitter "
        f"{multiples[-1] * eps * scale:.3g} ({multiples[-1]:g} eps x mean|diag H|){detail}"
    )


# a Gram product of more rows than this is split in two halves (``gram``); below it one product is cheaper than
# three smaller ones
GRAM_BASE_ROWS = 256


def gram(A: Tensor, *, out: Tensor | None = None) -> Tensor:
    """Returns A A^T (k x k for A of shape k x n) by about k^2 n multiply-adds instead of a product's 2 k^2 n.

    BLAS has a symmetric rank-k update for this, which PyTorch does not expose on either device, so the
    rows are halved recursively: with A = [A1; A2], A A^T = [A1 A1^T, (A2 A1^T)^T; A2 A1^T, A2 A2^T], where
    the off-diagonal block is one product and its mirror a copy. Halving down to ``GRAM_BASE_ROWS`` rows
    leaves 5/8 of the full product's work at 1024 rows, tending to 1/2 as k grows; the blocks stay large
    products, which run at the GEMM rate. The result is exactly symmetric. See docs/math.md §2.7.
    """
    k = A.shape[0]
    if out is None:
        out = A.new_empty(k, k)
    if k < 2 * GRAM_BASE_ROWS:
        torch.mm(A, A.mT, out=out)
        return _mirror_lower(out)
    half = k // 2
    gram(A[:half], out=out[:half, :half])
    gram(A[half:], out=out[half:, half:])
    torch.mm(A[half:], A[:half].mT, out=out[half:, :half])
    out[:half, half:] = out[half:, :half].mT
    return out


def _mirror_lower(G: Tensor, tile: int = 64) -> Tensor:
    """Copies the lower triangle of the square G onto its upper one, in place, tile by tile (no temporary beyond
    one tile): a product A A^T is not exactly symmetric with every BLAS kernel, and the factorisations read the
    lower triangle, which is kept as computed."""
    k = G.shape[0]
    for start in range(0, k, tile):
        stop = min(start + tile, k)
        G[start:stop, stop:] = G[stop:, start:stop].mT
        block = G[start:stop, start:stop]
        block.copy_(block.tril() + block.tril(-1).mT)
    return G


def add_to_diagonal(H: Tensor, value: float | Tensor) -> Tensor:
    """Adds ``value`` (a scalar or a vector) to the diagonal of the square matrix H, in place."""
    H.diagonal().add_(value)
    return H
