"""The network that BCD trains: weights W_i, biases b_i, optional residual layers, and its forward pass.

Layers are indexed l = 0..N-1 (the paper's i = l + 1). Layer l maps
``V[l]`` (d_l x n, ``V[0] = X``) to ``U[l] = W[l] V[l] + b[l]`` and
``V[l+1] = sigma_l(U[l])``, or ``V[l+1] = V[l] + sigma_l(U[l])`` for a residual
layer (the paper's (3.4); it needs d_{l+1} = d_l). The output layer's sigma is
the identity and the output layer is never residual.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from bcd_cli.catalogue.activations import Linear
from bcd_cli.engine.chunking import column_chunk_width, column_chunks
from bcd_cli.engine.workspace import Shapes, Tally


@dataclass
class MLP:
    """Parameters and activations of a fully connected network, plain or with residual layers."""

    W: list[Tensor]
    b: list[Tensor]
    acts: list  # one callable per layer; the last is Linear
    residual: list[bool] = field(default_factory=list)  # per layer; empty means no residual layer

    def __post_init__(self) -> None:
        if not self.residual:
            self.residual = [False] * len(self.W)
        for l, res in enumerate(self.residual):
            if res and self.W[l].shape[0] != self.W[l].shape[1]:
                raise ValueError(f"residual layer {l + 1} must keep its width, not map {self.W[l].shape[1]} to "
                                 f"{self.W[l].shape[0]}")  # fmt: skip

    @classmethod
    def init(
        cls,
        sizes: Sequence[int],
        act,
        *,
        init_std: float,
        init_bias: float,
        seed: int,
        dtype: torch.dtype,
        device: torch.device,
        residual: Sequence[bool] | None = None,
        init: str = "normal",
        init_scale: float = 1.0,
    ) -> MLP:
        """The starting point of docs/math.md §1: b_i = init_bias, and W_i drawn as ``init`` says.

        ``normal`` (the paper's Remark 1): W_i ~ N(0, init_std^2). ``scaled`` (``init_std`` unused):
        W_i ~ N(0, (init_scale g_i)^2 / fan_in_i), g_i the layer's ``init_gain()`` (the output layer's identity: 1;
        ``init_scale`` 1 is the variance-preserving draw),
        and a residual layer's draw further divided by L, the number of residual layers, so that V's mean square
        grows by at most a constant factor over the L layers, whatever L (the bound is in docs/math.md §1).

        Both draw randn(d_out, d_in) in float64 on the CPU from one generator seeded with ``seed``, layer by
        layer, times the layer's standard deviation: every device starts from the same weights, and
        ``normal`` gives the same weights for a seed whatever the version that wrote the run.
        """
        residual = list(residual) if residual is not None else []
        acts = [act] * (len(sizes) - 2) + [Linear()]
        stds = _weight_stds(init, sizes, acts, residual, init_std, init_scale)
        gen = torch.Generator().manual_seed(seed)
        W, b = [], []
        for d_in, d_out, std in zip(sizes[:-1], sizes[1:], stds, strict=True):
            w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64) * std
            W.append(w.to(dtype=dtype, device=device))
            b.append(torch.full((d_out,), float(init_bias), dtype=dtype, device=device))
        return cls(W, b, acts, residual)

    @staticmethod
    def init_workspace(t: Tally, s: Shapes) -> None:
        """What ``init`` allocates on ``s``: each layer's float64 draw and its scaling on the CPU, the previous
        layer's draw kept until the next one's replaces it, and W and b in the run's dtype (the draw itself in
        float64; elsewhere than the CPU only the result is on the device). W and b stay."""
        sizes, e = s.sizes, s.e
        t.label = "drawing the weights"
        drawn = 0  # the previous layer's float64 draw: its variable lets it go at the next one's
        for l in range(s.depth):
            w = sizes[l + 1] * sizes[l]
            if s.cpu:
                t.alloc(8 * w, 8 * w)  # randn, times the std
                t.free(8 * w, drawn)
                if e != 8:  # .to(dtype): a copy
                    drawn = 8 * w
                    t.alloc(e * w)
            else:
                t.alloc(e * w)
            t.alloc(sizes[l + 1] * e)
        t.free(drawn)

    @property
    def depth(self) -> int:
        return len(self.W)

    @property
    def sizes(self) -> list[int]:
        return [self.W[0].shape[1]] + [w.shape[0] for w in self.W]

    def n_parameters(self) -> int:
        return sum(w.numel() + b.numel() for w, b in zip(self.W, self.b, strict=True))

    def pre_activation(self, l: int, V: Tensor) -> Tensor:
        """W_l V + b_l, the bias broadcast over columns (never materialised as a matrix)."""
        return torch.addmm(self.b[l].unsqueeze(1), self.W[l], V)

    def layer_output(self, l: int, V: Tensor, U: Tensor) -> Tensor:
        """What layer l makes of its input V and pre-activation U: sigma_l(U), plus V when the layer is residual.

        Always a new tensor (sigma = Id returns U itself, so it is copied): callers may write into it.
        """
        out = self.acts[l](U)
        if self.residual[l]:
            return out + V
        return out.clone() if out is U else out

    @staticmethod
    def layer_output_workspace(t: Tally, s: Shapes, l: int, cols: int) -> None:
        """What ``layer_output`` of layer l on ``cols`` samples allocates: sigma's temporaries and its result, which
        stays (for a residual layer sigma(U) while sigma(U) + V is made)."""
        block = s.sizes[l + 1] * cols * s.e
        forward = s.act_of(l).forward
        if s.residual[l]:
            t.alloc(block)
            t.touch(forward * block)
            t.alloc(block)
            t.free(block)
        else:
            t.touch(forward * block)
            t.alloc(block)

    def forward_states(self, X: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """U and V of one forward pass: ``V[0] = X``, ``U[l] = W_l V[l] + b_l``, ``V[l+1]`` = layer l's output."""
        V, U = [X], []
        for l in range(self.depth):
            U.append(self.pre_activation(l, V[l]))
            V.append(self.layer_output(l, V[l], U[l]))
        return U, V

    @staticmethod
    def forward_states_workspace(t: Tally, s: Shapes) -> None:
        """What ``forward_states`` on the n training samples allocates: U and V of every layer, which stay, and
        sigma's temporaries (and sigma(U) + V's) on the widest layer."""
        t.label = "the first forward pass"
        t.alloc(2 * s.widths() * s.n * s.e)
        t.touch((s.act.forward + any(s.residual)) * max(s.sizes[1:]) * s.n * s.e)

    @torch.no_grad()
    def __call__(self, X: Tensor) -> Tensor:
        """The network's output sigma_N(W_N ... sigma_1(W_1 X + b_1) ... + b_N), residual layers included.

        Computed over the column chunks of ``chunking.column_chunks``: the hidden layers' outputs exist
        for one chunk of samples at a time.
        """
        chunks = column_chunks(X.shape[1])
        if len(chunks) > 1:
            return torch.cat([self(X[:, columns]) for columns in chunks], dim=1)
        for l in range(self.depth):
            X = self.layer_output(l, X, self.pre_activation(l, X))
        return X

    @staticmethod
    def call_workspace(t: Tally, s: Shapes, cols: int) -> None:
        """What ``__call__`` on ``cols`` samples allocates: the output (classes x cols, which stays), one column
        chunk's layers at their widest, and the ``torch.cat`` of the chunks' outputs."""
        sizes, e, c = s.sizes, s.e, s.sizes[-1]
        w = column_chunk_width(cols)
        chunk = max(
            ((sizes[l] if l else 0) + (2 + s.act_of(l).forward + int(s.residual[l])) * sizes[l + 1]) * w * e
            for l in range(s.depth)
        )
        t.alloc(c * cols * e)  # the chunks' outputs
        t.touch(chunk)
        if len(column_chunks(cols)) > 1:
            t.touch(c * cols * e)

    @classmethod
    def evaluate_workspace(cls, t: Tally, s: Shapes, cols: int, *, loss: bool) -> None:
        """What ``Trainer.evaluate`` allocates for the network on ``cols`` samples: ``__call__``, then (with
        ``loss``) R of its output, and its accuracy (argmax == labels, as float64); the output stays."""
        if cols < 1:
            return
        t.label = f"the forward pass on the {'training' if loss else 'test'} samples"
        cls.call_workspace(t, s, cols)
        t.touch(s.loss.value * s.sizes[-1] * cols * s.e if loss else 0, 17 * cols)

    def accuracy(self, X: Tensor, labels: Tensor) -> float:
        """Fraction of columns of X whose largest output is the label."""
        return (self(X).argmax(dim=0) == labels).double().mean().item()


INITS = ("normal", "scaled")  # the values of model.init


def _weight_stds(
    init: str, sizes: Sequence[int], acts: Sequence, residual: Sequence[bool], init_std: float, init_scale: float = 1.0
) -> list:
    """The standard deviation of each layer's weights under ``init`` (see ``MLP.init``)."""
    if init == "normal":
        return [init_std] * (len(sizes) - 1)
    if init != "scaled":
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {init!r}")
    branch = 1 / max(1, sum(residual))  # L residual layers: the growth of V is bounded whatever L (docs/math.md §1)
    return [
        init_scale * act.init_gain() / math.sqrt(d_in) * (branch if residual and residual[l] else 1.0)
        for l, (d_in, act) in enumerate(zip(sizes[:-1], acts, strict=True))
    ]
