"""A plain reference implementation of three-splitting BCD, for the benchmark to time the engine against.

Algorithm 2 of Zeng, Lau, Lin and Yao (ICML 2019) for the square loss R(V; Y) = 1/2 ||V - Y||_F^2 summed
over the samples, ReLU hidden layers, a linear output layer and no regularizers, written straight from
the paper's block formulas (docs/math.md §2): every bias repeated as a d x n matrix, every row of ones
built, every linear system solved through an explicit inverse (``torch.linalg.inv``), every block a new
tensor. One sweep visits V_N, U_N, W_N (with b_N), then for each hidden layer from the top V_i, U_i, W_i:

    V_N = (Y + gamma U_N + alpha V_N^old) / (1 + gamma + alpha)
    U_N = (gamma V_N + rho (W_N V_{N-1} + b_N 1^T)) / (gamma + rho)
    [W_i b_i] = (rho U_i [V_{i-1}; 1]^T + alpha [W_i^old b_i^old]) inv(rho [V_{i-1}; 1][V_{i-1}; 1]^T + alpha I)
    V_i = inv(gamma I + rho W_{i+1}^T W_{i+1}) (gamma relu(U_i) + rho W_{i+1}^T (U_{i+1} - b_{i+1} 1^T))
    U_i = argmin_u 1/2 (relu(u) - V_i)^2 + c/2 (u - B)^2 elementwise (``relu_prox``),
          B = (rho (W_i V_{i-1} + b_i 1^T) + alpha U_i^old) / (rho + alpha),  c = (rho + alpha) / gamma

The inverses are computed in the trainer's ``solve_dtype`` (float64 by default, the dtype the engine
factorises in), the n columns of each V block multiplied by its inverse in the run's dtype. Its
evaluation is the network's forward pass on the training and the test samples: the training loss and
both accuracies. ``scripts/bench_sweep.py`` starts it from a BCD trainer's state, times both side by
side, and checks it block by block against the engine (``compare_blocks``).

**The check.** Two correct implementations of a sweep differ by rounding, and a block's rounding is
amplified by the blocks after it: through the W blocks' normal equations, whose condition numbers
reach 1e9 on a fresh deep network (its hidden states hardly vary over the samples), a difference of
one ulp early in a sweep ends several orders of magnitude larger, by an amount that depends on how
each machine's kernels round. So the naive is compared one block at a time, from identical inputs:
the engine sweeps, then the naive computes each block from the engine's values of the blocks before
it (``sweep(reference=...)``), and each of its blocks must be within the rounding bound of that
block's own computation (``BlockCheck``), derived from eps and the block's matrices:

- an elementwise block (V_N, U_N, the U_i) is a few roundings of terms summed over at most d + 1
  products: ||naive - engine||_F <= ``ROUNDING_FACTOR`` eps (d + k) ||sum of |terms|||_F, with d the
  length of the longest sum and k the roundings after it (the ReLU prox is 1-Lipschitz in its
  arguments everywhere but on the tie of its case table, a set of measure zero);
- a linear system X H = G or H X = G (the W and the V blocks) is formed from sums of n_form terms,
  |dH| <= n_form eps |H|_abs and |dG| <= n_form eps |G|_abs elementwise (|H|_abs, |G|_abs: the same sums
  of the terms' absolute values), and solved backward stably (Cholesky, or the explicit inverse with its
  small residual, each a backward error of about k eps ||H|| for a k x k system): to first order
  dX = H^-1 (dG - dH X), so ||dX||_F <= ``ROUNDING_FACTOR`` eps (n_form + 3 k) (||G_abs||_F + ||H_abs||_F
  ||X||_F) / lambda_min(H). Each H is a shift plus a positive semidefinite Gram matrix (alpha I + rho A A^T,
  gamma I + rho W^T W), so lambda_min(H) >= the shift, with equality when the Gram matrix is singular
  (n <= d, a W_{i+1} with fewer rows than columns): the bound takes the shift, which spares an
  eigendecomposition per block. It is eps times the condition number of H (times ||H_abs|| / ||H||, which
  cancellation in H can make large) where G is dominated by H X, from the actual matrices of the sweep.

``ROUNDING_FACTOR`` (4, as in tests/tolerances.py) covers the two implementations' own roundings
(twice one's) and second-order terms. These are worst-case bounds: measured differences stay far below
them, and a wrong formula moves a block by far more (a relative change of 1e-6 in one weight of the
objective is many times its bound on the tests' networks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

# roundings per term (a product, a sum, a subtraction), the two implementations' roundings and second-order terms
ROUNDING_FACTOR = 4.0


def relu_prox(v: Tensor, b: Tensor, c: float) -> Tensor:
    """argmin_u 1/2 (relu(u) - v)^2 + c/2 (u - b)^2, elementwise, by cases (the paper's Lemma 13).

    On u <= 0 the objective is v^2/2 + c/2 (u - b)^2, least at min(b, 0); on u >= 0 it is the strictly
    convex 1/2 (u - v)^2 + c/2 (u - b)^2, least at p = (v + c b)/(1 + c) or at 0 when p < 0. The two
    pieces meet at u = 0 with the value v^2/2 + c b^2/2. Hence:

    - b >= 0: the u <= 0 piece is least at 0, where the other piece starts: u = max(p, 0);
    - b < 0 and p <= 0: the u >= 0 piece is least at 0, above the value v^2/2 at u = b: u = b;
    - b < 0 and p > 0: u = p where its value c (v - b)^2 / (2 (1 + c)) is at most v^2/2, else u = b
      (at a tie both are minimisers; p is taken).
    """
    p = (v + c * b) / (1 + c)
    p_wins = c * (v - b) ** 2 <= (1 + c) * v**2
    negative_b = torch.where(p > 0, torch.where(p_wins, p, b), b)
    return torch.where(b >= 0, torch.clamp(p, min=0), negative_b)


class NaiveThreeSplitting:
    """The state W, b, V (V[0] = X), U of Algorithm 2 and its sweep, each block as the paper writes it. The
    blocks of ``state`` (a trainer's ``state_dict``) are copied; X and Y are shared."""

    def __init__(
        self,
        state: dict[str, list[Tensor]],
        X: Tensor,
        Y: Tensor,
        *,
        gamma: float,
        rho: float,
        alpha: float,
        solve_dtype: torch.dtype | None = None,
    ):
        self.W = [w.clone() for w in state["W"]]
        self.b = [b.clone() for b in state["b"]]
        self.V = [X] + [v.clone() for v in state["V"]]
        self.U = [u.clone() for u in state["U"]]
        self.Y = Y
        self.gamma, self.rho, self.alpha = gamma, rho, alpha
        self.solve_dtype = solve_dtype or X.dtype
        self.reference: dict[str, Tensor] | None = None  # the engine's blocks while a checked sweep runs
        self.checks: list[BlockCheck] = []

    @classmethod
    def from_trainer(cls, trainer: Any) -> NaiveThreeSplitting:
        """A copy of the state of a three-splitting trainer (``state_dict``), with its gamma, rho, alpha, X and Y."""
        return cls(
            trainer.state_dict(), trainer.X, trainer.Y,
            gamma=trainer.gamma, rho=trainer.rho, alpha=trainer.alpha, solve_dtype=trainer.solve_dtype,
        )  # fmt: skip

    def state_dict(self) -> dict[str, list[Tensor]]:
        """The blocks as a trainer's ``state_dict`` holds them: W, b, V_1..V_N, U."""
        return {"W": self.W, "b": self.b, "V": self.V[1:], "U": self.U}

    @staticmethod
    def repeated(b: Tensor, n: int) -> Tensor:
        """b 1^T: the bias as a d x n matrix."""
        return b.unsqueeze(1).repeat(1, n)

    def sweep(self, reference: dict[str, Tensor] | None = None) -> list[BlockCheck]:
        """One sweep of Algorithm 2: the output layer's V, U, W, then each hidden layer's from the top.

        With ``reference`` (``named_blocks`` of the engine's state after its own sweep from this same state),
        each block, once computed, is compared with the engine's (``BlockCheck``, its rounding bound derived
        from the block's own inputs and matrices) and replaced by it, so that every block is computed from
        the engine's inputs; returns the checks (none without ``reference``, and no bound is computed)."""
        W, b, V, U = self.W, self.b, self.V, self.U
        N = len(W)
        self.reference, self.checks = reference, []
        V[N] = self.output_state()
        U[N - 1] = self.output_preactivation()
        W[N - 1], b[N - 1] = self.weights(U[N - 1], V[N - 1], W[N - 1], b[N - 1], name=f"W{N}")
        for i in range(N - 1, 0, -1):  # the paper's hidden layer i is list index i - 1 of W, b, U
            V[i] = self.hidden_state(i)
            U[i - 1] = self.preactivation(i)
            W[i - 1], b[i - 1] = self.weights(U[i - 1], V[i - 1], W[i - 1], b[i - 1], name=f"W{i}")
        return self.checks

    def output_state(self) -> Tensor:
        """V_N = (Y + gamma U_N + alpha V_N^old) / (1 + gamma + alpha)."""
        N, Y, U_N, V_N = len(self.W), self.Y, self.U[-1], self.V[-1]
        gamma, alpha = self.gamma, self.alpha
        value = (Y + gamma * U_N + alpha * V_N) / (1 + gamma + alpha)
        if self.reference is None:
            return value
        terms = (Y.abs() + gamma * U_N.abs() + alpha * V_N.abs()) / (1 + gamma + alpha)
        return self.settle(f"V{N}", value, self.elementwise_bound(6, terms))  # the engine merges the two weights

    def output_preactivation(self) -> Tensor:
        """U_N = (gamma V_N + rho (W_N V_{N-1} + b_N 1^T)) / (gamma + rho)."""
        N, n = len(self.W), self.Y.shape[1]
        W, b, V_in, V = self.W[-1], self.b[-1], self.V[-2], self.V[-1]
        gamma, rho = self.gamma, self.rho
        value = (gamma * V + rho * (W @ V_in + self.repeated(b, n))) / (gamma + rho)
        if self.reference is None:
            return value
        terms = (gamma * V.abs() + rho * self.magnitude(W, b, V_in)) / (gamma + rho)
        return self.settle(f"U{N}", value, self.elementwise_bound(W.shape[1] + 4, terms))

    def hidden_state(self, i: int) -> Tensor:
        """V_i = inv(gamma I + rho W_{i+1}^T W_{i+1}) (gamma relu(U_i) + rho W_{i+1}^T (U_{i+1} - b_{i+1} 1^T))."""
        gamma, rho, n = self.gamma, self.rho, self.Y.shape[1]
        W_next, b_next, U, U_next = self.W[i], self.b[i], self.U[i - 1], self.U[i]
        eye = torch.eye(W_next.shape[1], dtype=U.dtype, device=U.device)
        H = gamma * eye + rho * W_next.T @ W_next
        G = gamma * torch.relu(U) + rho * W_next.T @ (U_next - self.repeated(b_next, n))
        value = self.inverse(H).to(G.dtype) @ G
        if self.reference is None:
            return value
        H_abs = gamma * eye + rho * W_next.T.abs() @ W_next.abs()
        G_abs = gamma * torch.relu(U) + rho * W_next.T.abs() @ (U_next.abs() + b_next.abs().unsqueeze(1))
        # G's sums have m terms (W_next is m x d); the engine solves the d x d system, or for m^2 + 2 m d < d^2 the
        # m x m one of the Woodbury form with two m-term products: k = m + d covers either
        bound = self.solve_bound(
            H_abs, G_abs, self.reference[f"V{i}"], shift=gamma, n_form=W_next.shape[0] + 3, k=sum(W_next.shape)
        )
        return self.settle(f"V{i}", value, bound)

    def preactivation(self, i: int) -> Tensor:
        """U_i = relu_prox(V_i, B, c), B = (rho (W_i V_{i-1} + b_i 1^T) + alpha U_i^old) / (rho + alpha)."""
        gamma, rho, alpha, n = self.gamma, self.rho, self.alpha, self.Y.shape[1]
        W, b, V_in, V, U_old = self.W[i - 1], self.b[i - 1], self.V[i - 1], self.V[i], self.U[i - 1]
        B = (rho * (W @ V_in + self.repeated(b, n)) + alpha * U_old) / (rho + alpha)
        c = (rho + alpha) / gamma
        value = relu_prox(V, B, c)
        if self.reference is None:
            return value
        # B's terms, then p = (v + c B) / (1 + c) and its few roundings (the prox is 1-Lipschitz in v and B off its tie)
        terms = (rho * self.magnitude(W, b, V_in) + alpha * U_old.abs()) / (rho + alpha) + (V.abs() + c * B.abs()) / (
            1 + c
        )
        return self.settle(f"U{i}", value, self.elementwise_bound(W.shape[1] + 8, terms))

    def weights(
        self, U: Tensor, V_in: Tensor, W_old: Tensor, b_old: Tensor, *, name: str = "W"
    ) -> tuple[Tensor, Tensor]:
        """[W b] = (rho U A^T + alpha [W_old b_old]) inv(rho A A^T + alpha I), A = [V_in; 1^T] built in full."""
        rho, alpha = self.rho, self.alpha
        A = torch.cat([V_in, torch.ones(1, V_in.shape[1], dtype=V_in.dtype, device=V_in.device)])
        eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        H = rho * A @ A.T + alpha * eye
        old = torch.cat([W_old, b_old.unsqueeze(1)], dim=1)
        G = rho * U @ A.T + alpha * old
        Theta = (G.to(self.solve_dtype) @ self.inverse(H)).to(U.dtype)
        if self.reference is not None:
            H_abs = rho * A.abs() @ A.abs().T + alpha * eye
            G_abs = rho * U.abs() @ A.abs().T + alpha * old.abs()
            bound = self.solve_bound(
                H_abs, G_abs, self.reference[name], shift=alpha, n_form=A.shape[1] + 1, k=A.shape[0]
            )
            Theta = self.settle(name, Theta, bound)
        return Theta[:, :-1], Theta[:, -1]

    def settle(self, name: str, value: Tensor, bound: float) -> Tensor:
        """Records the check of block ``name``'s ``value`` against the reference's block, ``bound`` the derived bound
        on ||value - reference||_F, and returns the reference's block, from which the sweep goes on."""
        assert self.reference is not None
        engine = self.reference[name]
        size = float(torch.linalg.norm(engine.double()))
        difference = float(torch.linalg.norm(value.double() - engine.double()))
        self.checks.append(BlockCheck(name, difference / size, bound / size))
        return engine

    def elementwise_bound(self, roundings: int, terms: Tensor) -> float:
        """The bound on ||naive - engine||_F of an elementwise block: ``ROUNDING_FACTOR`` eps ``roundings``
        ||terms||_F, ``terms`` the sum of the absolute values of the terms rounded (see the module docstring)."""
        return ROUNDING_FACTOR * torch.finfo(self.Y.dtype).eps * roundings * float(torch.linalg.norm(terms.double()))

    def solve_bound(self, H_abs: Tensor, G_abs: Tensor, X: Tensor, *, shift: float, n_form: int, k: int) -> float:
        """The bound on ||naive - engine||_F of a block X solving a k x k system H = shift I + a Gram matrix, formed
        from sums of ``n_form`` terms: ``ROUNDING_FACTOR`` eps (n_form + 3 k) (||G_abs||_F + ||H_abs||_F ||X||_F) /
        shift (see the module docstring; lambda_min(H) >= shift, with equality when the Gram matrix is singular)."""
        unit = ROUNDING_FACTOR * torch.finfo(self.Y.dtype).eps * (n_form + 3 * k)
        G_size, H_size, X_size = (float(torch.linalg.norm(t.double())) for t in (G_abs, H_abs, X))
        return unit * (G_size + H_size * X_size) / shift

    @staticmethod
    def magnitude(W: Tensor, b: Tensor, V: Tensor) -> Tensor:
        """|W| |V| + |b| 1^T: the sum of the absolute values of the terms of W V + b 1^T."""
        return W.abs() @ V.abs() + b.abs().unsqueeze(1)

    def inverse(self, H: Tensor) -> Tensor:
        """inv(H), computed in the trainer's ``solve_dtype`` (float64 by default, as the engine factorises)."""
        return torch.linalg.inv(H.to(self.solve_dtype))

    def output(self, X: Tensor) -> Tensor:
        """The network's output on the columns of X: W_N relu(... relu(W_1 X + b_1 1^T) ...) + b_N 1^T."""
        for i, (W, b) in enumerate(zip(self.W, self.b, strict=True)):
            X = W @ X + self.repeated(b, X.shape[1])
            if i < len(self.W) - 1:
                X = torch.relu(X)
        return X

    def evaluate(self, data: Any) -> dict[str, float]:
        """The training loss 1/2 ||output - Y||^2 and the accuracies on the training and the test samples."""
        train = self.output(data.X_train)
        test = self.output(data.X_test)
        return {
            "train_loss": 0.5 * (train - data.Y_train).square().sum().item(),
            "train_acc": (train.argmax(dim=0) == data.y_train).double().mean().item(),
            "test_acc": (test.argmax(dim=0) == data.y_test).double().mean().item(),
        }


def relative_differences(naive: dict[str, list[Tensor]], engine: dict[str, list[Tensor]]) -> dict[str, float]:
    """||naive - engine||_F / ||engine||_F of every block, named as the paper does (W1, b1, V1, U1, ...)."""
    result = {}
    for kind in ("W", "b", "V", "U"):
        for i, (a, e) in enumerate(zip(naive[kind], engine[kind], strict=True)):
            a, e = a.double(), e.double()
            result[f"{kind}{i + 1}"] = (torch.linalg.norm(a - e) / torch.linalg.norm(e).clamp(min=1e-300)).item()
    return result


@dataclass(frozen=True)
class BlockCheck:
    """One block of a sweep computed by the naive from the engine's inputs: ||naive - engine||_F / ||engine||_F
    (``difference``) and the bound on it derived from the block's rounding (``tolerance``, the module docstring)."""

    block: str
    difference: float
    tolerance: float

    @property
    def ratio(self) -> float:
        """difference / tolerance: at most 1 when the block passes."""
        return self.difference / self.tolerance

    @property
    def passed(self) -> bool:
        return self.difference <= self.tolerance


def named_blocks(state: dict[str, list[Tensor]]) -> dict[str, Tensor]:
    """A trainer's ``state_dict`` by block name, as a sweep visits them: V1.., U1.., W1.. (W_i with b_i as its last
    column, [W_i b_i], one block of the sweep)."""
    blocks = {}
    for i, (W, b) in enumerate(zip(state["W"], state["b"], strict=True)):
        blocks[f"W{i + 1}"] = torch.cat([W, b.unsqueeze(1)], dim=1)
        blocks[f"V{i + 1}"], blocks[f"U{i + 1}"] = state["V"][i], state["U"][i]
    return blocks


def compare_blocks(trainer: Any) -> list[BlockCheck]:
    """One sweep of ``trainer``, and every block of it computed by the naive implementation from the same inputs
    (its state copied before the sweep, each block's inputs the engine's values of the blocks before it), in the
    order of the sweep; the trainer is left one sweep on."""
    naive = NaiveThreeSplitting.from_trainer(trainer)
    trainer.sweep()
    return naive.sweep(reference=named_blocks(trainer.state_dict()))


def applies(cfg: Any) -> str | None:
    """None when the naive implementation runs the run config ``cfg``'s problem, else why it does not."""
    checks = {
        "splitting": (cfg.splitting._target_.rsplit(".", 1)[-1], "ThreeSplittingBCD"),
        "trainer": (cfg.trainer.name, "bcd"),
        "model": (cfg.model.name, "mlp"),
        "act": (cfg.act._target_.rsplit(".", 1)[-1], "ReLU"),
        "loss": (cfg.loss._target_.rsplit(".", 1)[-1], "Square"),
        "loss.reduction": (cfg.loss.get("reduction", "sum"), "sum"),
        "reg_w": (cfg.reg_w._target_.rsplit(".", 1)[-1], "NoReg"),
        "reg_v": (cfg.reg_v._target_.rsplit(".", 1)[-1], "NoReg"),
    }
    for key, (value, needed) in checks.items():
        if value != needed:
            return f"{key} is {value}, the naive implementation runs {needed} only"
    return None
