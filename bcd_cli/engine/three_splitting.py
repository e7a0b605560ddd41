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

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bcd_cli.engine.blocks import (
    feasible,
    squared_distance,
    squared_distance_workspace,
    update_hidden_state,
    update_hidden_state_workspace,
    update_output_state,
    update_output_state_workspace,
    update_preactivation,
    update_preactivation_workspace,
    update_weights,
    update_weights_workspace,
)
from bcd_cli.engine.chunking import column_chunk_width, column_chunks
from bcd_cli.engine.network import MLP
from bcd_cli.engine.parallel import all_reduce_sum_
from bcd_cli.engine.scheme import BCDScheme
from bcd_cli.engine.trainer import Samples
from bcd_cli.engine.workspace import LINEAR, Shapes, Tally

# blocks of grad U = sigma'(U) ... and its square: sigma'(U) holds at most three, its result included, in any
# catalogue entry (Sigmoid: sigma(U), 1 - sigma(U) and their product; ReLU a byte mask and the result)
DERIVATIVE_BLOCKS = 3


class ThreeSplittingBCD(BCDScheme):
    """State (W, b, V, U) of three-splitting BCD and its sweep.

    U and V start from one forward pass of ``net`` (Remark 1), V projected onto the
    domain of ``reg_v``.
    """

    name = "three"
    splitting = "three"
    sample_kinds = 2  # V and U: the blocks with one column per sample
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

    def sweep_blocks(self) -> float:
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
                moments=self.data_moments if l == 0 else None,
            )  # fmt: skip
            D += squared_distance(W_new, W[l]) + squared_distance(b_new, b[l])
            W[l], b[l] = W_new, b_new
        return (D + all_reduce_sum_(D_states)).item()

    @classmethod
    def state_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The V_{l+1} block of ``sweep_blocks``: its target, the update, D's term; the new V replaces the old."""
        m, n = s.sizes[l + 1], s.n
        if l == s.depth - 1:
            update_output_state_workspace(t, s)
        else:
            cls.hidden_state_target_workspace(t, s, l)
            update_hidden_state_workspace(t, s, l)
        t.touch(squared_distance_workspace(s, m, n))
        t.free(m * n * s.e)  # the old V

    @classmethod
    def hidden_state_target_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """What ``hidden_state_target`` allocates: sigma(U_l) (+ V_l), which stays, and with a nonsmooth s the
        target with the proximal term in its place."""
        MLP.layer_output_workspace(t, s, l, s.n)
        if not s.reg_v.quadratic:
            t.touch(s.sizes[l + 1] * s.n * s.e)

    @staticmethod
    def preactivation_block_workspace(t: Tally, s: Shapes, l: int) -> None:
        """The U_l block of ``sweep_blocks``: W V + b, the prox into it, D's term; the new U replaces the old."""
        block = s.sizes[l + 1] * s.n * s.e
        t.alloc(block)
        update_preactivation_workspace(t, s, l)
        t.touch(squared_distance_workspace(s, s.sizes[l + 1], s.n))
        t.free(block)

    @classmethod
    def weights_block_workspace(cls, t: Tally, s: Shapes, l: int) -> None:
        """The W_l block of ``sweep_blocks``: the update (from ``data_moments`` for the first layer), D's term;
        the new W and b replace the old."""
        d, m = s.sizes[l], s.sizes[l + 1]
        b = update_weights_workspace(t, s, l, moments=l == 0 and cls.caches_moments(s))
        t.touch(squared_distance_workspace(s, m, d))
        t.free(m * d * s.e, b)

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

    def evaluate(self, data: Samples, *, grad_norm: bool = True) -> dict[str, float]:
        """The metrics of the current point in one pass over the training samples, the gradient in closed form.

        Over the column chunks of ``chunking.column_chunks``, each chunk goes once forward through the
        network (train loss and accuracy) and once down the layers of the objective, where
        Z_l = W_l V_{l-1} + b_l, E_l = U_l - Z_l and P_l = V_l - sigma(U_l) (minus V_{l-1} for a residual
        layer) give the penalties and, with ``grad_norm``, the gradient of every block (docs/math.md §5):

            grad U_l = rho E_l - gamma sigma'(U_l) P_l        grad W_l = -rho E_l V_{l-1}^T + ridge_w W_l
            grad b_l = -rho E_l 1                              grad V_N = grad R(V_N) + gamma P_N + ridge_v V_N
            grad V_l = gamma P_l - rho W_{l+1}^T E_{l+1} (- gamma P_{l+1} if layer l+1 is residual) + ridge_v V_l

        That is three products per layer (Z, E V^T, W^T E) and no autograd graph; the first layer's Z is the
        network's first pre-activation too. The gradient norm is NaN when a regularizer is not
        differentiable. ``objective(with_gradient=True)`` computes the same by autograd.
        """
        tally = _EvaluationSums.of(self, grad_norm and self.reg_w.quadratic and self.reg_v.quadratic)
        shared = data.X_train is self.X  # the trainer's own samples: the network's first pre-activation is Z_1
        for columns in column_chunks(self.X.shape[1]):
            self._evaluate_chunk(tally, columns, data.y_train[columns] if shared else None)
        if not shared:
            output = self.net(data.X_train)
            tally.sums["train_loss"] += self.loss(output, data.Y_train).double()
            tally.sums["train_correct"] += (output.argmax(dim=0) == data.y_train).sum()
        tally.sums["test_correct"] += (self.net(data.X_test).argmax(dim=0) == data.y_test).sum()
        row = tally.row(self, data.n_train, data.n_test)
        self._objective_here = row["objective"]  # what the safeguard of an extrapolated sweep starts from
        return row

    def _evaluate_chunk(self, tally: _EvaluationSums, columns: slice, labels: Tensor | None) -> None:
        """Adds the samples ``columns`` to ``tally`` (see ``evaluate``); ``labels``: also run the network on them."""
        net, N, gamma, rho, sums = self.net, self.net.depth, self.gamma, self.rho, tally.sums
        V, U = [v[:, columns] for v in self.V], [u[:, columns] for u in self.U]
        Y = self.Y[:, columns]
        share = (columns.stop - columns.start) / self.X.shape[1] if tally.mean_loss else 1.0
        Z_first = net.pre_activation(0, V[0])
        if labels is not None:
            H = V[0]
            for l in range(N):
                H = net.layer_output(l, H, Z_first if l == 0 else net.pre_activation(l, H))
            sums["train_loss"] += self.loss(H, Y).double() * share
            sums["train_correct"] += (H.argmax(dim=0) == labels).sum()
            del H
        sums["loss"] += self.loss(V[N], Y).double() * share
        sums["reg_v"] += sum(self.reg_v(v).double() for v in V[1:])
        E_next = P_next = None
        for l in reversed(range(N)):
            E = (Z_first if l == 0 else net.pre_activation(l, V[l])).neg_().add_(U[l])  # U_l - Z_l
            P = net.layer_output(l, V[l], U[l]).neg_().add_(V[l + 1])  # V_{l+1} - sigma(U_l) (- V_l)
            sums["penalty_u"] += E.square().sum().double() * (0.5 * rho)
            sums["penalty_v"] += P.square().sum().double() * (0.5 * gamma)
            if tally.gradient:
                if l == N - 1:
                    g = self.loss.grad(V[N], Y).mul_(share).add_(P, alpha=gamma)
                else:
                    assert E_next is not None and P_next is not None  # set by layer l + 1, visited before
                    g = torch.addmm(P, net.W[l + 1].T, E_next, beta=gamma, alpha=-rho)
                    if net.residual[l + 1]:
                        g.sub_(P_next, alpha=gamma)
                if self.reg_v.ridge:
                    g.add_(V[l + 1], alpha=self.reg_v.ridge)
                sums["state_squares"] += g.square().sum().double()
                del g
                g_U = net.acts[l].derivative(U[l]).mul_(P).mul_(-gamma).add_(E, alpha=rho)
                sums["state_squares"] += g_U.square().sum().double()
                del g_U
                tally.W_grads[l].addmm_(E, V[l].T, alpha=-rho)
                tally.b_grads[l].sub_(E.sum(dim=1), alpha=rho)
            E_next, P_next = E, P

    @classmethod
    def evaluation_workspace(cls, t: Tally, s: Shapes) -> None:
        """What ``evaluate`` allocates on ``s``: the W and b gradients (with the gradient norm), the widest column
        chunk's forward pass and objective terms, its closed-form gradient, then the test samples' forward pass
        and the squares of the W and b gradients. The chunks allocate alike: the widest one's work is followed.
        (Samples other than the trainer's own, which a run never passes, would add a forward pass over them.)"""
        sizes, e, N = s.sizes, s.e, s.depth
        w = column_chunk_width(s.n)
        gradient = s.grad_norm and s.reg_w.quadratic and s.reg_v.quadratic
        t.label = "the objective" + (" and its gradient" if gradient else "")
        if gradient:
            t.alloc(s.weights() * e)  # the W and b gradients
        blocks = [sizes[l + 1] * w * e for l in range(N)]  # one chunk of layer l's U, V (and E, P, gradients)
        t.alloc(blocks[0])  # Z_1 = W_1 X + b_1: the forward pass's first pre-activation, then E_1
        _chunk_forward_workspace(t, s, blocks, w)
        t.touch(s.loss.value * blocks[-1], max(blocks))  # R(V_N), r(V_l) (|V|, V^2 or a mask)
        for l in reversed(range(N)):
            _chunk_layer_workspace(t, s, l, blocks[l], gradient)
            if l < N - 1:
                t.free(2 * blocks[l + 1])  # E and P of layer l + 1
        t.free(2 * blocks[0])
        MLP.evaluate_workspace(t, s, s.n_test, loss=False)
        t.label = "the gradient norm"
        t.touch(s.largest_weight() * e)  # r(W): W^2 or |W|
        if gradient:  # the square of each W and b gradient in turn
            t.touch(s.largest_weight() * e)


def _chunk_forward_workspace(t: Tally, s: Shapes, blocks: list[int], w: int) -> None:
    """The network's forward pass on one chunk in ``_evaluate_chunk`` (Z_1 allocated): each layer's
    pre-activation and output, R of the output, its accuracy."""
    H = 0  # the previous layer's output (the chunk of X itself before the first)
    for l, block in enumerate(blocks):
        Z = 0 if l == 0 else block  # Z_1 is shared
        t.alloc(Z, block)  # W V + b, sigma of it (or sigma of it + V)
        t.touch(s.act_of(l).forward * block)  # sigma's temporaries
        t.touch(block if s.residual[l] else 0)  # sigma(U) while sigma(U) + V is made
        t.free(Z, H)
        H = block
    t.touch(s.loss.value * blocks[-1], 9 * w)  # R, argmax == labels
    t.free(H)


def _chunk_layer_workspace(t: Tally, s: Shapes, l: int, block: int, gradient: bool) -> None:
    """Layer l of ``_evaluate_chunk``'s pass down the layers: E_l and P_l, which stay for layer l - 1, their
    squares, and with the gradient norm grad V_l and grad U_l and their squares."""
    act = s.act_of(l)
    if l:
        t.alloc(block)  # E_l = U_l - (W_l V_{l-1} + b_l), in place
    t.alloc(block)  # P_l = V_l - sigma(U_l) (- V_{l-1}): sigma's result (or sigma(U) + V), written into
    t.touch(act.forward * block)  # sigma's temporaries
    t.touch(block if s.residual[l] else 0)  # sigma(U) while sigma(U) + V is made
    t.touch(block)  # E^2, then P^2
    if not gradient:
        return
    if l == s.depth - 1:  # grad R(V_N) + gamma P_N: at most the loss's V_N block (``LossMemory.output``)
        t.alloc(s.loss.output * block)
        t.free((s.loss.output - 1) * block)
    else:
        t.alloc(block)  # gamma P_l - rho W_{l+1}^T E_{l+1}
    t.touch(block)  # its square
    t.free(block)
    t.touch((2 if act is LINEAR else DERIVATIVE_BLOCKS) * block)  # grad U_l: sigma'(U_l), scaled, its square


@dataclass
class _EvaluationSums:
    """What ``ThreeSplittingBCD.evaluate`` adds up over the chunks: float64 sums, and the W and b gradients."""

    gradient: bool
    mean_loss: bool
    sums: dict[str, Tensor]
    W_grads: list[Tensor] = field(default_factory=list)
    b_grads: list[Tensor] = field(default_factory=list)

    KEYS = ("loss", "penalty_v", "penalty_u", "reg_v", "state_squares", "train_loss", "train_correct", "test_correct")

    @classmethod
    def of(cls, scheme: ThreeSplittingBCD, gradient: bool) -> _EvaluationSums:
        zero = scheme.X.new_zeros((), dtype=torch.float64)
        W, b = scheme.net.W, scheme.net.b
        return cls(
            gradient,
            scheme.mean_loss,
            {key: zero.clone() for key in cls.KEYS},
            [torch.zeros_like(w) for w in W] if gradient else [],
            [torch.zeros_like(v) for v in b] if gradient else [],
        )

    def row(self, scheme: ThreeSplittingBCD, n_train: int, n_test: int) -> dict[str, float]:
        """The metrics row: every sum and gradient added up over the ranks, then r(W) (the same on every rank)
        and its gradient added once."""
        sums = dict(zip(self.KEYS, all_reduce_sum_(torch.stack(list(self.sums.values()))).tolist(), strict=True))
        W = scheme.net.W
        reg_w = float(sum(scheme.reg_w(w).double() for w in W))
        row = {"loss": sums["loss"], "penalty_v": sums["penalty_v"], "penalty_u": sums["penalty_u"], "reg_w": reg_w,
               "reg_v": sums["reg_v"]}  # fmt: skip
        row["objective"] = sum(row.values())
        row["grad_norm"] = math.nan
        if self.gradient:
            for g in [*self.W_grads, *self.b_grads]:
                all_reduce_sum_(g)
            if scheme.reg_w.ridge:  # grad r(W) = ridge W, the same on every rank
                for g, w in zip(self.W_grads, W, strict=True):
                    g.add_(w, alpha=scheme.reg_w.ridge)
            weights = sum(float(g.square().sum()) for g in [*self.W_grads, *self.b_grads])  # one W's temporary
            row["grad_norm"] = math.sqrt(weights + sums["state_squares"])
        row["train_loss"] = sums["train_loss"]
        row["train_acc"] = sums["train_correct"] / n_train
        row["test_acc"] = sums["test_correct"] / n_test
        return row
