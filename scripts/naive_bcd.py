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
both accuracies. ``scripts/bench_sweep.py`` starts it from a BCD trainer's state, checks that it
ends where the engine ends (``relative_differences``) and times both side by side.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


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

    def sweep(self) -> None:
        """One sweep of Algorithm 2: the output layer's V, U, W, then each hidden layer's from the top."""
        W, b, V, U, Y = self.W, self.b, self.V, self.U, self.Y
        gamma, rho, alpha = self.gamma, self.rho, self.alpha
        N, n = len(W), Y.shape[1]
        V[N] = (Y + gamma * U[N - 1] + alpha * V[N]) / (1 + gamma + alpha)
        U[N - 1] = (gamma * V[N] + rho * (W[N - 1] @ V[N - 1] + self.repeated(b[N - 1], n))) / (gamma + rho)
        W[N - 1], b[N - 1] = self.weights(U[N - 1], V[N - 1], W[N - 1], b[N - 1])
        for i in range(N - 1, 0, -1):  # the paper's hidden layer i is list index i - 1 of W, b, U
            W_next = W[i]
            H = gamma * torch.eye(W_next.shape[1], dtype=Y.dtype, device=Y.device) + rho * W_next.T @ W_next
            G = gamma * torch.relu(U[i - 1]) + rho * W_next.T @ (U[i] - self.repeated(b[i], n))
            V[i] = self.inverse(H).to(G.dtype) @ G
            B = (rho * (W[i - 1] @ V[i - 1] + self.repeated(b[i - 1], n)) + alpha * U[i - 1]) / (rho + alpha)
            U[i - 1] = relu_prox(V[i], B, (rho + alpha) / gamma)
            W[i - 1], b[i - 1] = self.weights(U[i - 1], V[i - 1], W[i - 1], b[i - 1])

    def weights(self, U: Tensor, V_in: Tensor, W_old: Tensor, b_old: Tensor) -> tuple[Tensor, Tensor]:
        """[W b] = (rho U A^T + alpha [W_old b_old]) inv(rho A A^T + alpha I), A = [V_in; 1^T] built in full."""
        rho, alpha = self.rho, self.alpha
        A = torch.cat([V_in, torch.ones(1, V_in.shape[1], dtype=V_in.dtype, device=V_in.device)])
        eye = torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
        G = rho * U @ A.T + alpha * torch.cat([W_old, b_old.unsqueeze(1)], dim=1)
        Theta = (G.to(self.solve_dtype) @ self.inverse(rho * A @ A.T + alpha * eye)).to(U.dtype)
        return Theta[:, :-1], Theta[:, -1]

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


def compare(trainer: Any, sweeps: int) -> dict[str, float]:
    """``relative_differences`` after ``sweeps`` sweeps of ``trainer`` and of the naive implementation started
    from its current state (the trainer is left ``sweeps`` sweeps on)."""
    naive = NaiveThreeSplitting.from_trainer(trainer)
    for _ in range(sweeps):
        trainer.sweep()
        naive.sweep()
    return relative_differences(naive.state_dict(), trainer.state_dict())


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
