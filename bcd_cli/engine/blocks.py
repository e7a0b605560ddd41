"""Block solvers shared by the splitting schemes (Zeng et al. 2019, Algorithms 1-3).

Each function returns the minimiser of one block subproblem with every other block
fixed: exactly where a closed form exists (a linear system solved by Cholesky, an
elementwise prox), otherwise by a monotone inner solver (``inner.py``) started at the
block's old value. Matrices are d x n (one column per sample); biases are vectors
broadcast over columns and are never regularized. docs/math.md §2 derives every update and the
condition it needs; its table maps each block of each scheme to the function here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from bcd_cli.catalogue._memory import RegularizerMemory
from bcd_cli.engine.chunking import cpu_row_chunks
from bcd_cli.engine.inner import (
    ColumnGradient,
    ColumnValue,
    InnerSolver,
    columnwise_prox_gradient,
    fista,
    fista_workspace,
    largest_eigenvalue,
    largest_eigenvalue_workspace,
    prox_gradient,
    sample_chunks,
    spectral_norm_squared,
)
from bcd_cli.engine.linalg import (
    add_to_diagonal,
    gram,
    shifted_gram_solve,
    shifted_gram_solve_workspace,
    spd_solve,
    spd_solve_workspace,
)
from bcd_cli.engine.parallel import all_reduce_sum_, world_size
from bcd_cli.engine.workspace import Shapes, Tally

log = logging.getLogger(__name__)

ALPHA_CHECKS = ("warn", "raise")


def output_alpha(loss, n: int, *, gamma: float, alpha: float, check: str) -> float:
    """The proximal weight of the V_N block, checked against Theorem 2 when the loss is prox-linear.

    The prox-linear V_N step lowers the objective by (alpha + gamma/2 - L/2) ||Delta||^2,
    L the Lipschitz constant of grad R, so Theorem 2 needs alpha > (L - gamma)/2. When
    that fails, ``check='warn'`` logs a warning and keeps alpha; ``check='raise'``
    uses (L - gamma)/2 + alpha for this block, which restores a decrease of alpha ||Delta||^2.
    See docs/math.md §4.2.
    """
    if loss.solver != "prox_linear":
        return alpha
    L = loss.lipschitz(n)
    bound = (L - gamma) / 2
    if alpha > bound:
        return alpha
    if check == "raise":
        log.warning("alpha=%g fails Theorem 2 for this loss (needs alpha > (L - gamma)/2 = %g); the V_N block uses "
                    "alpha=%g", alpha, bound, bound + alpha)  # fmt: skip
        return bound + alpha
    log.warning("alpha=%g fails Theorem 2 for this loss (needs alpha > (L - gamma)/2 = %g): the objective may rise; "
                "raise alpha or set trainer.alpha_check=raise", alpha, bound)  # fmt: skip
    return alpha


def feasible(reg, X: Tensor) -> Tensor:
    """X projected onto the domain of the regularizer (``prox`` with t = 0), e.g. clamped for a box."""
    return reg.prox(X, 0.0)


def feasible_workspace(t: Tally, reg: RegularizerMemory, total: int, largest: int) -> None:
    """What ``feasible`` of blocks of ``total`` bytes in all (the largest ``largest``) allocates when the prox
    returns new tensors (``copies``): the new blocks, all made before the old are freed, and the prox's
    temporaries on the largest."""
    if reg.copies:
        t.touch(total, max(0, reg.prox - 1) * largest)


def update_output_state(loss, reg_v, Y: Tensor, target: Tensor, V_old: Tensor, *, gamma: float, alpha: float) -> Tensor:
    """Returns argmin_V R(V; Y) + s_N(V) + gamma/2 ||V - target||^2 + alpha/2 ||V - V_old||^2 (step 1 of Algorithm 2).

    ``target`` is U_N (three-splitting) or W_N V_{N-1} + b_N (two-splitting). For a loss
    with an exact prox the two quadratics merge into weight/2 ||V - center||^2 and the
    regularizer combines its prox with the loss's (both elementwise). Otherwise the
    prox-linear step (3.2) of Theorem 2 linearises R at V_old:
    V = prox_{s_N/(alpha + gamma)}((alpha V_old + gamma target - grad R(V_old)) / (alpha + gamma)).
    See docs/math.md §2.1 (and §4.2 for the condition on alpha of the prox-linear step).
    """
    weight = gamma + alpha
    if loss.solver == "prox_linear":
        center = torch.mul(V_old, alpha).add_(target, alpha=gamma).sub_(loss.grad(V_old, Y)).div_(weight)
        return reg_v.prox(center, 1.0 / weight)
    center = V_old * (alpha / weight)
    center.add_(target, alpha=gamma / weight)
    return reg_v.prox_with(lambda c, w: loss.prox(Y, c, w), center, weight)


def update_output_state_workspace(t: Tally, s: Shapes) -> None:
    """What ``update_output_state`` allocates (``engine.workspace``) on the classes x n block V_N: at its peak
    the loss's ``output`` blocks and the regularizer's, the result among them, which stays allocated."""
    t.label = f"the V{s.depth} block"
    block = s.sizes[-1] * s.n * s.e
    peak = s.loss.output + s.reg_v.output
    t.alloc(peak * block)
    t.free((peak - 1) * block)


def update_preactivation(
    act, V: Tensor, Z: Tensor, U_old: Tensor, *, gamma: float, rho: float, alpha: float, V_in: Tensor | None = None
) -> Tensor:
    """Returns argmin_U gamma/2 ||V - V_in - sigma(U)||^2 + rho/2 ||U - Z||^2 + alpha/2 ||U - U_old||^2, elementwise.

    ``Z`` is W V_prev + b; ``V_in`` is the layer's input for a residual layer (its output is
    V_in + sigma(U)), else None. With b = (rho Z + alpha U_old)/(rho + alpha) and
    c = (rho + alpha)/gamma this is the activation's prox(V - V_in, b, c), which never returns
    a worse point than U_old. ``Z`` must be a fresh tensor: the result is written into it,
    over the row chunks of ``chunking.cpu_row_chunks``, so the prox's temporaries are a chunk's.
    See docs/math.md §2.3 (ReLU's threshold form there, the other activations in §3.2).
    """
    c = (rho + alpha) / gamma
    in_place = getattr(act, "prox_", None)  # the activation's in-place variant, when it has one
    for rows in cpu_row_chunks(Z):
        b = Z[rows]
        if alpha:
            b.mul_(rho / (rho + alpha)).add_(U_old[rows], alpha=alpha / (rho + alpha))
        v = V[rows] if V_in is None else torch.sub(V[rows], V_in[rows])
        if in_place is not None:
            in_place(v, b, c, start=U_old[rows])
        else:
            b.copy_(act.prox(v, b, c, start=U_old[rows]))
    return Z


def update_preactivation_workspace(t: Tally, s: Shapes, l: int) -> None:
    """What ``update_preactivation`` of layer l allocates besides Z (the caller's new tensor, its result): per
    row chunk V - V_in for a residual layer and the activation's prox temporaries (its ``prox`` profile)."""
    chunk = s.chunk(s.sizes[l + 1], s.n) * s.e
    t.touch(chunk if s.residual[l] else 0, s.act_of(l).prox * chunk)


def input_moments(V_in: Tensor) -> Tensor:
    """[V;1][V;1]^T for V_in of shape d x n, as (d + 1) x (d + 1): V V^T by ``linalg.gram``, the row sums of V
    and n, without building the row of ones. The data's own moments (V_in = X) do not change from sweep to
    sweep: a scheme computes them once."""
    d, n = V_in.shape
    M = V_in.new_empty(d + 1, d + 1)
    gram(V_in, out=M[:d, :d])
    row_sums = V_in.sum(dim=1)
    M[:d, d] = row_sums
    M[d, :d] = row_sums
    M[d, d] = n
    return M


def _weights_system(
    U: Tensor,
    V_in: Tensor,
    W_old: Tensor,
    b_old: Tensor,
    *,
    rho: float,
    alpha: float,
    ridge: float,
    moments: Tensor | None = None,
):
    """H and G of the normal equations Theta H = G in Theta = [W b] (see ``update_weights``, docs/math.md §2.4);
    ``moments`` is ``input_moments(V_in)`` when the caller has it (a copy is modified, not it)."""
    d = V_in.shape[0]
    H = input_moments(V_in) if moments is None else moments.clone()
    G = U.new_empty(U.shape[0], d + 1)
    if world_size() > 1:  # data-parallel: sum the sample products over the ranks' shards first
        G[:, :d] = U @ V_in.T
        G[:, d] = U.sum(dim=1)
        all_reduce_sum_(H)
        all_reduce_sum_(G)
        G.mul_(rho)
        G[:, :d].add_(W_old, alpha=alpha)
        G[:, d].add_(b_old, alpha=alpha)
    else:
        G[:, :d] = torch.addmm(W_old, U, V_in.T, beta=alpha, alpha=rho)
        G[:, d] = U.sum(dim=1).mul_(rho).add_(b_old, alpha=alpha)
    H.mul_(rho)
    diagonal = H.new_full((d + 1,), alpha + ridge)
    diagonal[d] = alpha
    add_to_diagonal(H, diagonal)
    return H, G


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
    inner: InnerSolver | None = None,
    block: str = "W",
    moments: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Returns argmin_{W,b} r(W) + rho/2 ||U - W V_in - b 1^T||^2 + alpha/2 (||W - W_old||^2 + ||b - b_old||^2).

    The smooth part is 1/2 <Theta, Theta H> - <G, Theta> in Theta = [W b] with
    H = rho [V;1][V;1]^T + alpha I and G = rho U [V;1]^T + alpha [W_old b_old]; [V;1][V;1]^T
    is assembled from V V^T, the row sums of V and n (``input_moments``; or ``moments``, computed
    before), so the row of ones is never built.
    For r = ridge/2 ||W||^2 the minimiser solves Theta (H + ridge I_W) = G (Cholesky).
    Otherwise (l1, elastic net, box, nonnegativity) FISTA on Theta runs from [W_old b_old]
    or from the prox of the minimiser without r, whichever is better; each of its steps
    costs one (d_out x (d+1)) x ((d+1) x (d+1)) product, independent of n. See docs/math.md §2.4.
    """
    d = V_in.shape[0]
    if reg_w.quadratic:
        H, G = _weights_system(U, V_in, W_old, b_old, rho=rho, alpha=alpha, ridge=reg_w.ridge, moments=moments)
        Theta = spd_solve(H, G.T, solve_dtype=solve_dtype, block=block).T
        return Theta[:, :d].contiguous(), Theta[:, d].contiguous()

    H, G = _weights_system(U, V_in, W_old, b_old, rho=rho, alpha=alpha, ridge=0.0, moments=moments)

    def prox(Theta: Tensor, t: float) -> Tensor:
        return torch.cat([reg_w.prox(Theta[:, :d], t), Theta[:, d:]], dim=1)  # the bias column is not regularized

    L = largest_eigenvalue(H)
    # the minimiser without h, moved into dom h: exact when h is inactive there, a warm start otherwise
    candidate = prox(spd_solve(H, G.T, solve_dtype=solve_dtype, block=block).T, 1.0 / L)
    Theta = fista(
        lambda T: T @ H, G, torch.cat([W_old, b_old.unsqueeze(1)], dim=1),
        lipschitz=L, prox=prox, penalty=lambda T: reg_w(T[:, :d]), solver=inner or InnerSolver(), candidate=candidate,
    )  # fmt: skip
    return Theta[:, :d].contiguous(), Theta[:, d].contiguous()


def update_weights_workspace(t: Tally, s: Shapes, l: int, *, moments: bool) -> int:
    """What ``update_weights`` of layer l allocates (``moments``: given the data's): H and G of the (d+1) x (d+1)
    normal equations, their solve, and for a nonsmooth r FISTA from the prox of the solution; the new W and b
    stay allocated. Returns the bytes b holds: all of the (d+1) x m solution of the closed form (b is a view
    of it), else its own copy."""
    d, m, e = s.sizes[l], s.sizes[l + 1], s.e
    k = d + 1
    t.label = f"the W{l + 1} block, its {k} x {k} normal equations"
    t.alloc(k * k * e)  # H: [V;1][V;1]^T, V V^T written into it (``linalg.gram``); or the data's, copied
    if not moments:
        t.touch(d * e)  # V's row sums
    t.alloc(m * k * e)  # G
    t.touch(m * d * e, m * e, k * e)  # U V^T + alpha W, U's row sums, the diagonal
    if s.reg_w.quadratic:
        X = spd_solve_workspace(t, k, m, e=e, es=s.es, G=e, rhs=s.es, overwrite=False)
        t.alloc(m * d * e)  # W = Theta[:, :d].contiguous(); b stays a view of X
        t.free(k * k * e, m * k * e)  # H, G
        return X
    largest_eigenvalue_workspace(t, k, e, cpu=s.cpu)
    X = spd_solve_workspace(t, k, m, e=e, es=s.es, G=e, rhs=s.es, overwrite=False)
    prox = s.reg_w.prox * m * d * e
    t.alloc(prox, m * k * e)  # prox of the solution, the candidate (torch.cat)
    t.free(X, prox)
    fista_workspace(t, m * k * e, prox)
    t.alloc(m * d * e, m * e)  # W, b (copies)
    t.free(m * k * e, k * k * e, m * k * e)  # the candidate, H, G
    return m * e


def update_hidden_state(
    reg_v,
    target: Tensor,
    weight: float,
    U_next: Tensor,
    W_next: Tensor,
    b_next: Tensor,
    V_old: Tensor,
    *,
    rho: float,
    solve_dtype: torch.dtype | None = None,
    rhs_dtype: torch.dtype | None = None,
    inner: InnerSolver | None = None,
    block: str = "V",
    overwrite_target: bool = False,
) -> Tensor:
    """Returns argmin_V s(V) + weight/2 ||V - target||^2 + rho/2 ||U_next - W_next V - b_next 1^T||^2.

    The callers merge every quadratic in V into ``weight/2 ||V - target||^2`` (the penalty
    gamma/2 ||V - sigma(U_i)||^2, a residual successor's term, a proximal term). The
    smooth part is 1/2 <V, H V> - <G, V> with H = weight I + rho W^T W and
    G = weight target + rho W^T (U_next - b_next 1^T), the bias a column broadcast over
    the samples. For s = ridge/2 ||V||^2 the minimiser solves (H + ridge I) V = G
    (Cholesky, of the smaller Woodbury form when W_next has few rows: ``shifted_gram_solve``);
    otherwise FISTA runs from V_old or from the prox of the minimiser without
    s, whichever is better. H is factorised in ``solve_dtype``, the n right-hand sides are
    solved in ``rhs_dtype`` (default: ``solve_dtype``; see ``linalg.spd_solve``). With
    ``overwrite_target`` G (and then V) takes the target's memory. See docs/math.md §2.2 (the
    targets of each scheme), §2.4 (the Woodbury form) and §2.7 (the dtypes).
    """
    if overwrite_target:
        G = target.addmm_(W_next.T, U_next, beta=weight, alpha=rho)
    else:
        G = torch.addmm(target, W_next.T, U_next, beta=weight, alpha=rho)
    G.sub_((W_next.T @ b_next).mul_(rho).unsqueeze(1))
    if reg_v.quadratic:  # H = (weight + ridge) I + rho W^T W: X may take G's memory
        return shifted_gram_solve(
            weight + reg_v.ridge, rho, W_next, G,
            solve_dtype=solve_dtype, rhs_dtype=rhs_dtype, block=block, overwrite=True,
        )  # fmt: skip
    H = add_to_diagonal(gram(W_next.mT).mul_(rho), weight)
    solution = spd_solve(H, G, solve_dtype=solve_dtype, rhs_dtype=rhs_dtype, block=block)  # the minimiser without s
    L = largest_eigenvalue(H)
    return fista(
        lambda V: H @ V, G, V_old,
        lipschitz=L, prox=reg_v.prox, penalty=reg_v, solver=inner or InnerSolver(),
        candidate=reg_v.prox(solution, 1.0 / L),  # the minimiser without h, moved into dom h
    )  # fmt: skip


def update_hidden_state_workspace(t: Tally, s: Shapes, l: int) -> None:
    """What ``update_hidden_state`` of V_{l+1} allocates with ``overwrite_target`` (the target, allocated by the
    caller, becomes G, then V): W^T b, the closed form's solve in G's memory, or for a nonsmooth s H, the
    solution without s, FISTA, and the result, which replaces G."""
    m, p, e, n = s.sizes[l + 1], s.sizes[l + 2], s.e, s.n
    t.touch(m * e)  # W^T b
    if s.reg_v.quadratic:
        shifted_gram_solve_workspace(t, p, m, n, e=e, es=s.es, er=s.er)
        return
    block, prox = m * n * e, s.reg_v.prox
    t.alloc(m * m * e)  # rho W^T W (``linalg.gram``), shifted in place
    X = spd_solve_workspace(t, m, n, e=e, es=s.es, G=e, rhs=s.er, overwrite=False)
    largest_eigenvalue_workspace(t, m, e, cpu=s.cpu)
    t.alloc(prox * block)  # the candidate and its prox's temporaries
    t.free((prox - 1) * block)
    fista_workspace(t, block, prox * block)
    t.alloc(block)  # the result
    t.free(X, block, block, m * m * e)  # the solution, the candidate, G, H


def update_hidden_state_nonlinear(
    act_next,
    reg_v,
    target: Tensor | Callable[[slice], Tensor],
    weight: float,
    V_next: Tensor,
    W_next: Tensor,
    b_next: Tensor,
    V_old: Tensor,
    *,
    gamma: float,
    inner: InnerSolver,
) -> Tensor:
    """Returns a point no worse than V_old for
    min_V s(V) + weight/2 ||V - target||^2 + gamma/2 ||V_next - sigma_next(W_next V + b_next 1^T)||^2.

    The V_i block of Algorithm 1 (two-splitting) behind a nonlinear sigma_next, with its
    penalty and proximal terms merged into ``weight/2 ||V - target||^2``: nonconvex, so
    proximal gradient with backtracking from V_old. See docs/math.md §2.5.

    Every term is a sum over the samples, so the solver (``inner.columnwise_prox_gradient``) holds
    one new block, the iterate, and works on column chunks (``inner.sample_chunks``). ``target`` is
    the tensor, or a function of a column slice returning those columns of it (a new tensor the
    solver may keep for the chunk): the target is then never held whole, at the cost of computing
    its columns again at each pass over the samples.
    """
    columns = target if callable(target) else (lambda cols: target[:, cols])
    bias = b_next.unsqueeze(1)

    def local(cols: slice) -> tuple[ColumnValue, ColumnGradient]:
        T, V_next_cols = columns(cols), V_next[:, cols]

        def misfit(V: Tensor, out: Tensor) -> Tensor:  # the chunk's terms, out = sigma_next(W_next V + b_next)
            return 0.5 * weight * squared_distance(V, T) + 0.5 * gamma * squared_distance(V_next_cols, out)

        def value(V: Tensor) -> Tensor:
            return misfit(V, act_next(torch.addmm(bias, W_next, V)))

        def gradient(V: Tensor, with_value: bool) -> tuple[Tensor | None, Tensor]:
            A = torch.addmm(bias, W_next, V)
            out = act_next(A)
            f = misfit(V, out) if with_value else None
            residual = (out - V_next_cols).mul_(act_next.derivative(A))
            del A, out
            return f, torch.addmm(V - T, W_next.T, residual, beta=weight, alpha=gamma)

        return value, gradient

    rows = max(V_old.shape[0], V_next.shape[0])
    chunks = sample_chunks(V_old.shape[1], rows, cpu=V_old.device.type == "cpu")
    curvature = weight + gamma * spectral_norm_squared(W_next)
    return columnwise_prox_gradient(
        local, V_old, chunks=chunks, step=1.0 / curvature, prox=reg_v.prox, penalty=reg_v, solver=inner
    )


def update_hidden_state_nonlinear_workspace(t: Tally, s: Shapes, l: int) -> None:
    """What ``update_hidden_state_nonlinear`` of V_{l+1} (two-splitting) allocates: one new block, the iterate
    (the new V, which stays), and one column chunk's temporaries at a time: the target's columns, the gradient
    there, a trial point and its terms."""
    m, p, n, e = s.sizes[l + 1], s.sizes[l + 2], s.n, s.e
    w = sample_chunk_columns(s, max(m, p))
    mc, pc = m * w * e, p * w * e
    forward, prox = s.act.forward, s.reg_v.prox
    t.label = f"the V{l + 1} block"
    t.alloc(m * n * e)  # the iterate
    t.alloc(mc, (1 + forward) * mc)  # the target's columns: W V + b, sigma of it (then T, in place)
    t.free(mc + forward * mc)
    t.alloc(pc, (1 + forward) * pc, pc)  # the gradient: the next layer's W V + b, sigma of it, the residual
    t.free(forward * pc)
    t.touch(pc / e, (1 + forward) * pc)  # sigma'
    t.free(2 * pc)
    t.alloc(mc, mc)  # V - T, the gradient
    t.free(mc + pc)
    t.alloc(mc, mc)  # a trial point: step g, V - step g, then its prox
    t.free(mc)
    t.alloc(prox * mc)
    t.free(max(prox - 1, 0) * mc + (mc if prox else 0))
    t.touch(mc)  # Z - V
    t.alloc(pc, (1 + forward) * pc)  # its W Z + b, sigma of it
    t.free(pc + forward * pc)
    t.touch(max(mc, pc), prox * mc)  # squared distances, the penalty
    t.free(pc, mc, mc, mc)  # sigma, the trial, the gradient, the target


def sample_chunk_columns(s: Shapes, rows: int) -> int:
    """Samples per chunk of the solvers that sweep a block's samples chunk by chunk (``inner.sample_chunks``),
    ``rows`` the most rows of their temporaries."""
    first = sample_chunks(s.n, rows, cpu=s.cpu)[0]
    return first.stop - first.start


def update_weights_nonlinear(
    act,
    reg_w,
    V_out: Tensor,
    V_in: Tensor,
    W_old: Tensor,
    b_old: Tensor,
    *,
    gamma: float,
    alpha: float,
    inner: InnerSolver,
) -> tuple[Tensor, Tensor]:
    """Returns a point no worse than (W_old, b_old) for
    min_{W,b} r(W) + gamma/2 ||V_out - sigma(W V_in + b 1^T)||^2 + alpha/2 (||W - W_old||^2 + ||b - b_old||^2).

    The W_i block of Algorithm 1 behind a nonlinear sigma: a nonlinear least-squares
    problem, solved by proximal gradient with backtracking on Theta = [W b] from the old value.
    See docs/math.md §2.5.

    W V_in + b is never held whole: a trial point is evaluated over column chunks of the samples
    (``inner.sample_chunks``), with its gradient (used if it is accepted) in the same pass, which
    stops once the sum so far fails the backtracking test (its terms are nonnegative).
    """
    d = V_in.shape[0]
    Theta_old = torch.cat([W_old, b_old.unsqueeze(1)], dim=1)
    chunks = sample_chunks(V_in.shape[1], max(d, V_out.shape[0]), cpu=V_in.device.type == "cpu")

    def smooth(Theta: Tensor, rejected) -> tuple[Tensor, Tensor | None]:
        """f(Theta) and its gradient, or a lower bound of f that ``rejected`` holds for and None."""
        W, bias = Theta[:, :d], Theta[:, d:]
        proximal = 0.5 * alpha * squared_distance(Theta, Theta_old)
        grad = Theta - Theta_old
        grad.mul_(alpha)
        misfit = Theta.new_zeros(())
        for cols in chunks:
            A = torch.addmm(bias, W, V_in[:, cols])
            out = act(A)
            misfit += squared_distance(V_out[:, cols], out)
            value = 0.5 * gamma * misfit + proximal
            if rejected is not None and rejected(value):
                return value, None
            residual = (out - V_out[:, cols]).mul_(act.derivative(A)).mul_(gamma)
            grad[:, :d].addmm_(residual, V_in[:, cols].T)
            grad[:, d].add_(residual.sum(dim=1))
            del A, out, residual  # before the next chunk's are made
        return value, grad

    def gradient(Theta: Tensor, grad: Tensor | None) -> Tensor:
        assert grad is not None  # smooth returns None only for a rejected trial
        return grad

    def prox(Theta: Tensor, t: float) -> Tensor:
        return torch.cat([reg_w.prox(Theta[:, :d], t), Theta[:, d:]], dim=1)  # the bias column is not regularized

    curvature = alpha + gamma * (spectral_norm_squared(V_in) + V_in.shape[1])
    Theta = prox_gradient(
        smooth, gradient, Theta_old,
        step=1.0 / curvature, prox=prox, penalty=lambda T: reg_w(T[:, :d]), solver=inner,
    )  # fmt: skip
    return Theta[:, :d].contiguous(), Theta[:, d].contiguous()


def update_weights_nonlinear_workspace(t: Tally, s: Shapes, l: int) -> int:
    """What ``update_weights_nonlinear`` of layer l allocates: [W_old b_old], the iterate and its gradient, a
    trial point and its gradient, one column chunk's temporaries; the new W and b (copies) stay. Returns b's
    bytes."""
    d, m, e = s.sizes[l], s.sizes[l + 1], s.e
    theta, W = m * (d + 1) * e, m * d * e
    mc = m * sample_chunk_columns(s, max(d, m)) * e
    forward, prox = s.act.forward, s.reg_w.prox
    t.label = f"the W{l + 1} block"
    t.alloc(theta, theta, theta)  # [W_old b_old], an iterate after a step, its gradient
    t.alloc(theta, theta)  # a trial point: step g, Theta - step g, then its prox (and torch.cat)
    t.free(theta)
    t.alloc(prox * W, theta)
    t.free(prox * W, theta)
    t.touch(theta, prox * W)  # Z - Theta, the penalty
    t.alloc(theta)  # the trial's gradient, summed over the chunks
    t.touch(s.chunk(m, d + 1) * e)  # the proximal term
    t.alloc(mc, (1 + forward) * mc)  # a chunk: W V + b, sigma of it, the squared distance, the residual
    t.free(forward * mc)
    t.touch(mc)
    t.alloc(mc)
    t.touch(mc / e, (1 + forward) * mc)  # sigma'
    t.free(3 * mc)
    t.free(theta, theta, theta)  # accepted: the trial and its gradient replace the iterate's
    t.alloc(W, m * e)  # W, b (copies)
    t.free(theta, theta)  # the last iterate and its gradient
    return m * e


def squared_distance(A: Tensor, B: Tensor) -> Tensor:
    """||A - B||_F^2 as a 0-dim tensor on A's device (no host synchronisation).

    Under autograd by ``mse_loss``, whose backward keeps references to A and B only (sub and
    square would keep the difference, a block-sized tensor per term). Otherwise by sub, square
    and sum over the row chunks of ``chunking.cpu_row_chunks``.
    """
    if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return torch.nn.functional.mse_loss(A, B, reduction="sum")
    chunks = cpu_row_chunks(A)
    if len(chunks) == 1:
        return torch.sub(A, B).square_().sum()
    return torch.stack([torch.sub(A[rows], B[rows]).square_().sum() for rows in chunks]).sum()


def squared_distance_workspace(s: Shapes, rows: int, cols: int) -> int:
    """Bytes ``squared_distance`` of two rows x cols blocks allocates: one row chunk's difference."""
    return s.chunk(rows, cols) * s.e
