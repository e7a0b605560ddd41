"""What every BCD scheme shares: its hyperparameters, the starting point and the objective's bookkeeping."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from bcd_cli.engine.acceleration import Extrapolation
from bcd_cli.engine.blocks import ALPHA_CHECKS, feasible, feasible_workspace, input_moments, output_alpha
from bcd_cli.engine.chunking import column_chunk_width, column_chunks
from bcd_cli.engine.inner import InnerSolver
from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import all_reduce_sum_, gather_columns, local_columns, world_size
from bcd_cli.engine.trainer import DTYPES, Trainer, check_shapes, own
from bcd_cli.engine.workspace import BACKWARD_BLOCKS, Footprint, Shapes, Tally, Workspace, workspace_of
from bcd_cli.errors import require, require_number


@dataclass(frozen=True)
class BCDSettings:
    """The hyperparameters of a BCD scheme, checked when made (``ParameterError`` naming the field).

    ``rho`` (the weight of ||U - W V||^2 in three-splitting) defaults to ``gamma``.
    ``solve_dtype`` is the dtype of every Cholesky factorisation and of the W blocks' solves
    (None: the data's); ``state_solve_dtype`` (default: ``solve_dtype``) that of the V blocks'
    triangular solves, whose n right-hand sides (one per sample) make them the costly ones.
    Both are given as torch dtypes or by name (float32, float64) and held as torch dtypes.
    ``inner_iters``/``inner_tol`` bound the monotone inner solvers of blocks without a
    closed form; ``alpha_check`` ('warn' or 'raise') is what happens when alpha fails
    Theorem 2 for a prox-linear loss (see ``blocks.output_alpha``). ``extrapolation`` > 0 starts
    every sweep from a safeguarded extrapolated point (``acceleration.Extrapolation``, with that
    largest weight); ``safeguard`` is the margin its point must keep, as a multiple of Lemma 1's constant a.
    """

    gamma: float
    alpha: float
    rho: float | None = None
    solve_dtype: torch.dtype | str | None = None
    state_solve_dtype: torch.dtype | str | None = None
    inner_iters: int = 20
    inner_tol: float = 1e-6
    alpha_check: str = "warn"
    extrapolation: float = 0.0
    safeguard: float = 1e-4

    def __post_init__(self) -> None:
        require_number("gamma", self.gamma, lambda x: x > 0, "a number > 0")
        if self.rho is not None:
            require_number("rho", self.rho, lambda x: x > 0, "a number > 0, or null for rho = gamma")
        require_number("alpha", self.alpha, lambda x: x > 0, "a number > 0")
        require_number("inner_iters", self.inner_iters, lambda x: x >= 1, "an integer >= 1 (inner solver steps)",
                       integer=True)  # fmt: skip
        require_number("inner_tol", self.inner_tol, lambda x: x >= 0, "a number >= 0 (relative step size)")
        require(self.alpha_check in ALPHA_CHECKS, "alpha_check", self.alpha_check, f"one of {', '.join(ALPHA_CHECKS)}")
        require_number("extrapolation", self.extrapolation, lambda x: 0 <= x < 1,
                       "a number in [0, 1): the largest extrapolation weight, 0 for none")  # fmt: skip
        require_number("safeguard", self.safeguard, lambda x: x > 0, "a number > 0 (a multiple of Lemma 1's margin)")
        names = ", ".join(DTYPES)
        for key, allowed in (("solve_dtype", f"one of {names}"), ("state_solve_dtype", f"one of {names}, or null")):
            value = getattr(self, key)
            if isinstance(value, str) or value is None:
                require(value is None or value in DTYPES, key, value, allowed)
                object.__setattr__(self, key, DTYPES[value] if value is not None else None)
            else:
                require(value in DTYPES.values(), key, value, allowed)

    def dtypes(self) -> tuple[torch.dtype | None, torch.dtype | None]:
        """(solve_dtype, state_solve_dtype) as torch dtypes, the second defaulting to the first."""
        solve, state = self.solve_dtype, self.state_solve_dtype or self.solve_dtype
        assert not isinstance(solve, str) and not isinstance(state, str)  # __post_init__ turned names into dtypes
        return solve, state

    def keywords(self) -> dict[str, Any]:
        """The settings as the keyword arguments of a scheme's constructor."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


class BCDScheme(Trainer):
    """Hyperparameters and state of a BCD scheme; subclasses define ``sweep`` and ``objective_parts``.

    ``hyper`` are the fields of ``BCDSettings`` (gamma and alpha required), checked before
    anything is built. The weights start inside the domain of ``reg_w`` (projected); ``net``
    is updated in place, so its forward pass always uses the current weights.
    """

    name: str
    # the objective a sweep descends (``splitting``): "two" (docs/math.md §1.1) or "three" (§1.2, §1.3); the memory
    # model and the data-parallel check go by it, so a variant inheriting a scheme's blocks inherits it too
    layer_blocks: ClassVar[tuple[str, ...]]  # the blocks of layer i in the order ``sweep`` updates them ("W": W_i, b_i)
    divergence_hint = "a larger alpha"
    V: list[Tensor]  # the states V_0 = X, V_1, ..., V_N (set by each scheme)

    def __init__(self, net: MLP, X: Tensor, Y: Tensor, *, loss: Any, reg_w: Any, reg_v: Any, **hyper: Any) -> None:
        settings = BCDSettings(**hyper)
        if any(net.residual) != self.residual:
            raise ValueError(
                f"splitting={self.name} trains {'residual' if self.residual else 'plain'} networks; "
                f"this one {'has' if any(net.residual) else 'has no'} residual layers"
            )
        self.net, self.X, self.Y = net, X, Y
        self.n_samples = _total_columns(X)  # over all ranks: the width of a checkpoint's V and U blocks
        self.loss, self.reg_w, self.reg_v = loss, reg_w, reg_v
        self.gamma, self.alpha = float(settings.gamma), float(settings.alpha)
        self.rho = float(settings.gamma if settings.rho is None else settings.rho)
        self.solve_dtype, self.state_solve_dtype = settings.dtypes()
        self.inner = InnerSolver(iters=int(settings.inner_iters), tol=float(settings.inner_tol))
        self.alpha_out = output_alpha(loss, Y.shape[1], gamma=self.gamma, alpha=self.alpha, check=settings.alpha_check)
        net.W[:] = [feasible(reg_w, w) for w in net.W]
        self.n_weights = 2 * net.depth  # blocks() starts with W_1..W_N, b_1..b_N
        self.extrapolation = (
            Extrapolation(float(settings.extrapolation), float(settings.safeguard) * self.descent_margin())
            if settings.extrapolation > 0 else None
        )  # fmt: skip
        self._objective_here: float | None = None  # L at the current point, once evaluated

    @classmethod
    def build(
        cls, settings: Any, net: MLP, X: Tensor, Y: Tensor, *, loss: Any, reg_w: Any, reg_v: Any, seed: int = 0
    ) -> BCDScheme:
        """The scheme with ``settings`` (``BCDSettings``); BCD draws nothing at random, so ``seed`` is unused."""
        return cls(net, X, Y, loss=loss, reg_w=reg_w, reg_v=reg_v, **settings.keywords())

    @property
    def mean_loss(self) -> bool:
        """Whether R is a mean over the samples (``reduction: mean``), so that a chunk's loss is weighted by its
        share of them when an evaluation adds chunks up; otherwise a sum."""
        return getattr(self.loss, "reduction", "sum") == "mean"

    @functools.cached_property
    def data_moments(self) -> Tensor:
        """[X;1][X;1]^T of this rank's samples (``blocks.input_moments``), for the W_1 block: computed at its
        first use, as the data never changes."""
        return input_moments(self.X)

    def summary_fields(self) -> dict[str, Any]:
        """The method and alpha of the output block V_N (raised above alpha when Theorem 2 needs it)."""
        return {"method": self.name, "alpha_output_block": self.alpha_out}

    def sweep(self) -> float:
        """One sweep over all blocks, from the safeguarded extrapolated point when ``trainer.extrapolation`` > 0
        (``acceleration.Extrapolation``); returns D_k = ||P^k - P^(k-1)||_F^2."""
        self.inner.count.take()  # the count of last_sweep() is this sweep's
        D = self.sweep_blocks() if self.extrapolation is None else self.extrapolation.sweep(self)
        self._objective_here = None
        return D

    def sweep_blocks(self) -> float:
        """The scheme's own sweep (Algorithm 1, 2 or 3) from the current point; returns D_k."""
        raise NotImplementedError

    def descent_margin(self) -> float:
        """Lemma 1's constant a, L(P^(k-1)) - L(P^k) >= a D_k (docs/math.md §4.1): min(alpha, gamma) / 2 for
        three-splitting and ResNet, alpha / 2 for two-splitting."""
        return self.alpha / 2 if self.splitting == "two" else min(self.alpha, self.gamma) / 2

    def last_sweep(self) -> dict[str, float]:
        """The last sweep's extrapolation weight and safeguard verdict (both 0 for plain BCD), and how many of its
        inner solves (blocks without a closed form) stopped at ``inner_iters`` before their step fell below
        ``inner_tol``: those blocks still descend, but are not solved to the tolerance asked for."""
        row = {"extrapolation": 0.0, "rejected": 0.0} if self.extrapolation is None else self.extrapolation.record()
        return {**row, "inner_capped": float(self.inner.count.capped)}

    def current_objective(self) -> float:
        """L at the current point: the value the last evaluation found, or computed now when none is known."""
        if self._objective_here is None:
            self.objective()
        assert self._objective_here is not None  # set by objective()
        return self._objective_here

    def layer_order(self) -> range:
        """The layers l (the paper's i = l + 1) in the order a sweep visits them: N down to 1, the backward
        order of Algorithms 1-3. Any order keeps the descent of docs/math.md §4.1, since each block update
        minimises the objective over its block alone."""
        return range(self.net.depth - 1, -1, -1)

    def update_order(self) -> list[tuple[str, list[Tensor]]]:
        """Every block as (name, tensors) in the order a sweep updates them: the layers of ``layer_order``,
        each in the order ``layer_blocks``; named in the paper's indexing, e.g. V3, U3, W3 (W_3 with b_3)."""
        return [
            (f"{kind}{l + 1}", self.block_tensors(kind, l)) for l in self.layer_order() for kind in self.layer_blocks
        ]

    def block_tensors(self, kind: str, l: int) -> list[Tensor]:
        """The tensors of block ``kind`` of layer l (the paper's i = l + 1): [V_i] for "V", [W_i, b_i] for "W"."""
        return [self.V[l + 1]] if kind == "V" else [self.net.W[l], self.net.b[l]]

    def nonfinite_block(self) -> str | None:
        """The first block, in the order a sweep updates them, holding a NaN or an infinity; None if all are finite."""
        return first_nonfinite(self.update_order())

    def objective_parts(self) -> dict[str, Tensor]:
        """The terms of the scheme's objective as 0-dim tensors: loss, penalty_v, penalty_u, reg_w, reg_v."""
        raise NotImplementedError

    def sample_blocks(self) -> dict[str, list[Tensor]]:
        """The blocks with one column per sample, by kind: the states V_1..V_N (and U_1..U_N in three-splitting)."""
        return {"V": self.V[1:]}

    def _set_sample_blocks(self, blocks: dict[str, list[Tensor]]) -> None:
        self.V[1:] = blocks["V"]

    def blocks(self) -> list[Tensor]:
        """Every block of the state: W, b, then the blocks of ``sample_blocks`` (V, then U)."""
        return [*self.net.W, *self.net.b, *(t for kind in self.sample_blocks().values() for t in kind)]

    def _set_blocks(self, blocks: list[Tensor]) -> None:
        """Puts the list of ``blocks()``'s layout back (forgetting the objective evaluated at the old point)."""
        self._objective_here = None
        depth = self.net.depth
        self.net.W[:], self.net.b[:] = blocks[:depth], blocks[depth : 2 * depth]
        rest = blocks[2 * depth :]
        kinds = list(self.sample_blocks())
        self._set_sample_blocks({kind: rest[i * depth : (i + 1) * depth] for i, kind in enumerate(kinds)})

    def state_tensors(self) -> list[Tensor]:
        return list(self.blocks())

    def state_dict(self) -> dict[str, Any]:
        """{"W": [W_1..W_N], "b": [b_1..b_N], "V": [V_1..V_N], and "U": [U_1..U_N] in three-splitting}.

        The tensors are the scheme's own (detached, not copied): save or copy them before the next
        sweep. In a data-parallel run the V and U blocks are gathered from the ranks' shards.
        """
        state: dict[str, Any] = {"W": [own(w) for w in self.net.W], "b": [own(b) for b in self.net.b]}
        for kind, tensors in self.sample_blocks().items():
            state[kind] = [own(gather_columns(t, self.n_samples)) for t in tensors]
        if self.extrapolation is not None:
            state["extrapolation"] = self._extrapolation_state()
        return state

    def _extrapolation_state(self) -> dict[str, Any]:
        """The extrapolation's t and previous point (every sample's columns), and the objective known at the
        current point, which its safeguard compares against: a resumed run decides as the uninterrupted one."""
        assert self.extrapolation is not None
        saved = self.extrapolation.state_dict()
        previous = saved["previous"]
        if previous is not None:
            previous = [own(t if i < self.n_weights else gather_columns(t, self.n_samples))
                        for i, t in enumerate(previous)]  # fmt: skip
        return {"t": saved["t"], "previous": previous, "objective": self._objective_here}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Puts a ``state_dict`` back (copied, on this scheme's device and dtype; in a data-parallel run each rank
        takes its own columns of the V and U blocks)."""
        current = {"W": list(self.net.W), "b": list(self.net.b), **self.sample_blocks()}
        state = dict(state)
        extrapolated = state.pop("extrapolation", None)
        if (extrapolated is None) != (self.extrapolation is None):
            raise ValueError(
                f"the saved state {'lacks' if extrapolated is None else 'holds'} an extrapolation's previous point; "
                f"this run's trainer.extrapolation is {0.0 if self.extrapolation is None else 'on'}"
            )
        if set(state) != set(current):
            raise ValueError(f"the saved state holds blocks {sorted(state)}, this scheme {sorted(current)}")
        loaded = {}
        for kind, tensors in current.items():
            saved = state[kind] if kind in ("W", "b") else [local_columns(t) for t in state[kind]]
            check_shapes(tensors, saved, kind)
            loaded[kind] = [
                s.to(device=c.device, dtype=c.dtype, copy=True) for c, s in zip(tensors, saved, strict=True)
            ]
        self.net.W[:], self.net.b[:] = loaded.pop("W"), loaded.pop("b")
        self._set_sample_blocks(loaded)
        self._objective_here = None
        if self.extrapolation is not None and extrapolated is not None:
            previous = extrapolated["previous"]
            if previous is not None:
                previous = [t if i < self.n_weights else local_columns(t) for i, t in enumerate(previous)]
            self.extrapolation.load_state_dict({"t": extrapolated["t"], "previous": previous}, like=self.blocks())
            self._objective_here = extrapolated["objective"]

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
                             share if k == "loss" and self.mean_loss else 1.0
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
        self._objective_here = result["objective"]
        return result

    def _squared_gradient_norm(self, weight_grads: Sequence[Tensor], state_squares: Tensor) -> float:
        """||grad L||^2 from the summed gradients of W_1..W_N, b_1..b_N and the squared norms of the V
        and U blocks' gradients; data-parallel, the first sum over the ranks (then they are the same on
        every rank) and so do the second."""
        for g in weight_grads:
            all_reduce_sum_(g)
        weights = sum(g.double().square().sum() for g in weight_grads)
        return float(weights + all_reduce_sum_(state_squares))

    # ---------------------------------------------------------------- memory (``engine.workspace``)

    sample_kinds: ClassVar[int] = 1  # the kinds of blocks with one column per sample (``sample_blocks``)

    @classmethod
    def memory_footprint(cls, s: Shapes, *, extrapolation: bool = False) -> Footprint:
        """The scheme's memory on ``s``: its state; what stays live between sweeps (b of a closed-form W block a
        view of its (d+1) x m solution, ``data_moments`` from the first sweep on, with ``extrapolation`` the
        previous point); the workspaces of building it, of each block of a sweep (with ``extrapolation`` the
        safeguard's objective first) and of ``evaluate``."""
        e, sizes = s.e, s.sizes
        state = (s.weights() + cls.sample_kinds * s.widths() * s.n) * e
        moments = (sizes[0] + 1) ** 2 * e if cls.caches_moments(s) else 0
        views = sum(sizes[l] * sizes[l + 1] * e for l in range(s.depth) if cls.closed_form_weights(s, l))
        live = state + moments + views + (state if extrapolation else 0)
        sweep = cls.sweep_workspaces(s)
        if extrapolation:
            without = dataclasses.replace(s, grad_norm=False)
            sweep = [workspace_of("the objective", cls.objective_workspace, without), *sweep]
        build, evaluation = workspace_of("", cls.build_workspace, s), workspace_of("", cls.evaluation_workspace, s)
        return Footprint(state, live, build, tuple(sweep), evaluation)

    @classmethod
    def caches_moments(cls, s: Shapes) -> bool:
        """Whether the W_1 block is solved from ``data_moments``, which stay allocated from the first sweep on."""
        return True

    @classmethod
    def closed_form_weights(cls, s: Shapes, l: int) -> bool:
        """Whether the W_l block is solved by its normal equations, b then a view of the (d+1) x m solution."""
        return s.reg_w.quadratic

    @classmethod
    def sweep_workspaces(cls, s: Shapes) -> list[Workspace]:
        """The workspace of each block of ``sweep_blocks`` on ``s``, in its order (``engine.workspace``): the
        blocks ``layer_blocks`` of each layer, declared by the scheme's ``state_block_workspace`` (V),
        ``preactivation_block_workspace`` (U) and ``weights_block_workspace`` (W, b)."""
        declared = {
            "V": cls.state_block_workspace, "U": cls.preactivation_block_workspace, "W": cls.weights_block_workspace,
        }  # fmt: skip
        return [
            workspace_of(f"the {kind}{l + 1} block", declared[kind], s, l)
            for l in reversed(range(s.depth))
            for kind in cls.layer_blocks
        ]

    @classmethod
    def state_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The V_{l+1} block of a sweep: its target, the update, D's term; the new V replaces the old."""
        raise NotImplementedError

    @classmethod
    def preactivation_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The U_{l+1} block of a sweep (three-splitting)."""
        raise NotImplementedError

    @classmethod
    def weights_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The W_{l+1}, b_{l+1} block of a sweep."""
        raise NotImplementedError

    @classmethod
    def build_workspace(cls, t: Tally, s: Shapes) -> None:
        """Building the scheme on the data: ``MLP.init``, W made feasible, the first forward pass, V made feasible."""
        e = s.e
        MLP.init_workspace(t, s)
        feasible_workspace(t, s.reg_w, s.weights() * e, s.largest_weight() * e)
        MLP.forward_states_workspace(t, s)
        feasible_workspace(t, s.reg_v, s.widths() * s.n * e, max(s.sizes[1:]) * s.n * e)

    @classmethod
    def evaluation_workspace(cls, t: Tally, s: Shapes) -> None:
        """``Trainer.evaluate``: ``objective`` (its gradient by autograd), the network on the training and test
        samples."""
        cls.objective_workspace(t, s)
        MLP.evaluate_workspace(t, s, s.n, loss=True)
        MLP.evaluate_workspace(t, s, s.n_test, loss=False)

    @staticmethod
    def objective_workspace(t: Tally, s: Shapes) -> None:
        """What ``objective`` allocates over its column chunks: the largest chunk's terms, and with the gradient
        norm what autograd keeps of them, the gradients of the state's chunk and of every W and b."""
        sizes, e, N, c = s.sizes, s.e, s.depth, s.sizes[-1]
        w = column_chunk_width(s.n)
        differentiable = s.grad_norm and s.reg_w.quadratic and s.reg_v.quadratic
        t.label = "the objective" + (" and its gradient" if differentiable else "")
        if not differentiable:
            t.touch(s.loss.value * c * w * e)
            for l in range(N):
                out = (1 + s.act_of(l).forward + int(s.residual[l])) * sizes[l + 1] * w * e
                t.touch(out, s.chunk(sizes[l + 1], w) * e)  # sigma(U) (+ V), squared distance
            return
        t.alloc(s.weights() * e)  # the W and b gradients, summed over the chunks
        saved = s.loss.saved * c * w * e
        for l in range(N):
            saved += (1 + s.act_of(l).saved + int(s.residual[l])) * sizes[l + 1] * w * e  # sigma(W V + b) (+ V)
        grads = s.widths() * w * e  # of the state's chunk (the last chunk's stay until the objective returns)
        widest = max(sizes[1:]) * w * e
        double = 2 if e != 8 else 1  # a gradient in float64 (a copy unless it is float64), its square
        t.alloc(grads)
        t.touch(saved, BACKWARD_BLOCKS * widest)
        t.touch(double * widest * 8 // e)  # the state's gradients, squared in float64
        t.touch(double * s.largest_weight() * 8)  # the weight gradients, squared in float64
        t.free(grads, s.weights() * e)


def _total_columns(X: Tensor) -> int:
    """The number of samples over all ranks (a collective in a data-parallel run) of this rank's columns X."""
    n = torch.tensor(X.shape[1], device=X.device)
    return int(all_reduce_sum_(n).item())


def first_nonfinite(blocks: list[tuple[str, list[Tensor]]]) -> str | None:
    """The name of the first (name, tensors) pair with a NaN or an infinity in a tensor; None if all are finite.

    Checks every tensor on its device and moves the flags to the host in one synchronisation.
    """
    if not blocks:
        return None
    names = [name for name, tensors in blocks for _ in tensors]
    finite = torch.stack([torch.isfinite(t).all() for _, tensors in blocks for t in tensors]).tolist()
    return next((name for name, ok in zip(names, finite, strict=True) if not ok), None)
