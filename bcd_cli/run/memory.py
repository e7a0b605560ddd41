"""The memory a run needs, estimated before anything is allocated, and checked against what the device has.

``estimate`` follows a run's allocations on paper: the state (W, b and the blocks V, U of every layer over
the samples; or the weights, gradients and optimizer state of the SGD/Adam baselines), the data, and every
temporary of one sweep and of the evaluation after it, in the order the engine makes and frees them (the
Cholesky factors in the solve dtype, the Woodbury m x m form, the column chunks of the wider right-hand
sides, the row chunks of the CPU's elementwise work, the column chunks of the objective and of the forward
passes, three-splitting's closed-form gradient or what autograd keeps for the gradient norm). ``estimate_for``
reads those inputs from a run's config and its loaded data. ``available`` says how much memory the device has
left and where that number comes from; ``check`` refuses (``ResourceError``, exit status 2) a run whose
estimated peak does not fit, in one line, and warns when it takes more than 80% of it.

The estimate counts tensor memory: on the CPU what PyTorch's allocator hands out (not the interpreter and
libraries, about 0.3-0.5 GiB resident on their own), on CUDA what ``torch.cuda.max_memory_allocated``
reports, plus ``CUDA_WORKSPACE`` for cuBLAS and cuSOLVER (the CUDA context is not in it: it is already
taken when ``available`` asks the driver).

Environment: ``BCD_MEMORY_LIMIT`` replaces the detected limit with the memory the whole run may use, its
peak with the loaded data included: a number of bytes, or with a binary suffix K, M, G or T (``2G`` is
2 GiB; ``512M``, ``1.5G``, ``64GiB`` are read as well). For tests, and for users who share a machine.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from bcd_cli.app import config_dir
from bcd_cli.engine.baselines import OPTIMIZERS
from bcd_cli.catalogue._memory import ActivationMemory, LossMemory, RegularizerMemory
from bcd_cli.catalogue.activations import Linear
from bcd_cli.engine.chunking import column_chunk_width, column_chunks, cpu_chunk_rows, wide_chunk_columns
from bcd_cli.engine.inner import sample_chunks
from bcd_cli.engine.linalg import woodbury_is_cheaper
from bcd_cli.engine.parallel import world_size
from bcd_cli.errors import ConfigError, ResourceError

log = logging.getLogger(__name__)

ENV_LIMIT = "BCD_MEMORY_LIMIT"
WARN_FRACTION = 0.8  # check() warns above this share of the available memory
SCHEMES = ("three", "two", "resnet")  # BCD splittings (the ``name`` of their classes)
BASELINES = OPTIMIZERS  # trainer.name of the gradient baselines
CUDA_WORKSPACE = 64 * 2**20  # cuBLAS and cuSOLVER workspaces, from PyTorch's caching allocator
MARGIN = 1.05  # the temporaries counted are scaled by this: allocator rounding, work the simulation leaves out
SMALL = 16 * 2**10  # and this is added for the scalars and other small tensors it does not follow

_UNLIMITED = 2**60  # a cgroup limit at or above this means none (v1 writes 2^63 - 4096)
_SUFFIXES = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


# ------------------------------------------------------------------------------------------------ the estimate


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a run needs on its device.

    ``state``: every block (W, b of each layer; V and U of every layer over the samples), or for the SGD/Adam
    baselines W, b, their gradients and the optimizer state. ``data``: the train and test X, one-hot Y and
    labels on the device. ``sweep_peak`` and ``eval_peak``: everything live at the highest point of one sweep
    (or SGD/Adam epoch) and of the evaluation after it, state, data and temporaries together; ``peak`` the
    larger, or ``build_peak`` (drawing the weights, in float64 on the CPU, and the first forward pass) in the
    rare run where that is higher. ``n_train`` and ``per_sample`` (how much the peak grows per training sample)
    let ``check`` suggest a sample count that fits; ``loaded``: bytes of the peak already allocated when the
    estimate was made (the data, for ``estimate_for``), which the memory ``available`` reports no longer holds;
    ``where``: what the run does at its peak (e.g. ``the W2 block, its 1025 x 1025 normal equations``).
    """

    state: int
    data: int
    sweep_peak: int
    eval_peak: int
    build_peak: int = 0
    n_train: int = 0
    per_sample: float = 0.0
    loaded: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    grad_norm: bool = True
    eval_peak_without_grad_norm: int | None = field(default=None, compare=False)
    where: str = ""

    @property
    def peak(self) -> int:
        return max(self.sweep_peak, self.eval_peak, self.build_peak)

    def parts(self) -> str:
        """The peak broken into its parts, e.g. ``state 40.0 GiB + data 180 MiB + sweep temporaries 17.3 GiB``."""
        phases = {"sweep": self.sweep_peak, "evaluation": self.eval_peak, "build": self.build_peak}
        phase = max(phases, key=lambda name: phases[name])
        temporaries = format_bytes(max(0, self.peak - self.state - self.data))
        at = f" at {self.where}" if self.where else ""
        return (
            f"state {format_bytes(self.state)} + data {format_bytes(self.data)} + {phase} temporaries {temporaries}{at}"
        )


# an entry without a ``memory`` of its kind (a _target_ of the user's own) is counted as the most any catalogue
# entry of its kind allocates: Softplus and Polynomial; Logistic with solver=exact; ElasticNet's prox
_ANY_ACT = ActivationMemory(prox=48, forward=3, saved=3)
_ANY_LOSS = LossMemory(output=15, value=6, saved=4)
_KINDS = {"act": "activation", "loss": "loss", "reg": "regularizer"}  # conf group -> what an entry of it is


@functools.cache
def _conf_entry(group: str, name: str) -> object:
    """The entry conf/``group``/``name``.yaml builds, as the CLI builds it; ValueError naming the files there
    when there is none."""
    folder = config_dir() / group
    names = sorted(path.stem for path in folder.glob("*.yaml"))
    if name not in names:
        raise ValueError(f"unknown {_KINDS[group]} {name!r}: one of {', '.join(names)}")
    entry: object = instantiate(OmegaConf.load(folder / f"{name}.yaml"))
    return entry


def _profile(group: str, entry: object) -> object:
    """The ``memory`` of ``entry``, a catalogue object or its conf name (relu, square, l2...); None when the
    object declares none."""
    if isinstance(entry, str):
        entry = _conf_entry(group, entry)
    return getattr(entry, "memory", None)


def _act_memory(act: object) -> ActivationMemory:
    profile = _profile("act", act)
    return profile if isinstance(profile, ActivationMemory) else _ANY_ACT


def _loss_memory(loss: object) -> LossMemory:
    profile = _profile("loss", loss)
    return profile if isinstance(profile, LossMemory) else _ANY_LOSS


def _reg_memory(reg: object) -> RegularizerMemory:
    """A regularizer's ``memory``; without one, closed-form blocks if it says it is ``quadratic``, and the
    largest prox (ElasticNet's)."""
    profile = _profile("reg", reg)
    if isinstance(profile, RegularizerMemory):
        return profile
    return RegularizerMemory(quadratic=bool(getattr(reg, "quadratic", False)), prox=4, output=2, copies=True)


class _Tally:
    """Bytes live over a sequence of allocations and frees, and their highest point."""

    def __init__(self, live: float) -> None:
        self.start = self.live = self.peak = float(live)
        self.label = self.where = ""  # what is being done now; what was done at the highest point

    def alloc(self, *sizes: float) -> None:
        for size in sizes:
            self.live += size
            if self.live > self.peak:
                self.peak, self.where = self.live, self.label

    def free(self, *sizes: float) -> None:
        self.live -= sum(sizes)

    def touch(self, *sizes: float) -> None:
        """Allocated one after another, then all freed."""
        self.alloc(*sizes)
        self.free(*sizes)


def _size(dtype: torch.dtype | str | None) -> int:
    if dtype is None:
        return 0
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype.removeprefix("torch."))
    assert isinstance(dtype, torch.dtype)
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class _Run:
    """One run's shapes and settings, and the simulation of its allocations (bytes)."""

    sizes: list[int]
    residual: list[bool]
    n: int
    n_test: int
    e: int  # bytes per element: the run's dtype
    es: int  # the factorisations' (solve_dtype)
    er: int  # the V blocks' right-hand sides (state_solve_dtype)
    scheme: str
    cpu: bool
    grad_norm: bool
    act: ActivationMemory
    loss: LossMemory
    reg_w: RegularizerMemory
    reg_v: RegularizerMemory
    batch_size: int = 512
    momentum: bool = False
    weight_decay: bool = False
    nesterov: bool = False
    extrapolation: bool = False  # BCD's safeguarded extrapolation: a copy of the state, an objective per sweep

    # ---------------------------------------------------------------- sizes

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    @property
    def baseline(self) -> bool:
        return self.scheme in BASELINES

    def weights(self) -> int:
        """Elements of W and b."""
        s = self.sizes
        return sum(s[l + 1] * (s[l] + 1) for l in range(self.depth))

    def largest_weight(self) -> int:
        s = self.sizes
        return max(s[l + 1] * s[l] for l in range(self.depth))

    def widths(self) -> int:
        """Rows of all states V_1..V_N (one column per sample)."""
        return sum(self.sizes[1:])

    def state(self) -> int:
        if self.baseline:
            copies = 2 + (2 if self.scheme == "adam" else int(self.momentum))  # W and b, gradients, moments
            steps = 2 * self.depth * 4 if self.scheme == "adam" else 0  # Adam's step counts (float32 scalars)
            return copies * self.weights() * self.e + steps
        blocks = 1 if self.scheme == "two" else 2  # V, and U for three-splitting
        return (self.weights() + blocks * self.widths() * self.n) * self.e

    def data(self) -> int:
        d0, c = self.sizes[0], self.sizes[-1]
        return (d0 + c) * (self.n + self.n_test) * self.e + 8 * (self.n + self.n_test)  # X, Y, int64 labels

    def act_of(self, l: int) -> ActivationMemory:
        return _LINEAR if l == self.depth - 1 else self.act

    def chunk(self, rows: int, cols: int) -> int:
        """Elements of one chunk of elementwise work on a rows x cols block (``chunking.cpu_row_chunks``)."""
        return cpu_chunk_rows(rows, cols, cpu=self.cpu) * cols

    def solve_columns(self, rows: int, cols: int, G: int, wide: int) -> int:
        """Columns of one chunk of right-hand sides cast to a wider dtype (``chunking.wide_column_chunks``)."""
        return wide_chunk_columns(rows, cols, widened=G != wide)

    def wide_chunks(self, rows: int, cols: int, G: int, wide: int) -> int:
        """Bytes of the wide copies ``linalg._map_columns`` holds at once: two chunks (the next one is made
        before the loop variable lets the previous one go), or the only one."""
        width = self.solve_columns(rows, cols, G, wide)
        return min(2, -(-cols // width)) * rows * width * wide

    # ---------------------------------------------------------------- linear algebra

    def spd_solve(self, t: _Tally, k: int, cols: int, *, G: int, rhs: int, overwrite: bool) -> int:
        """``linalg.spd_solve`` of a k x k H (run dtype, already counted) for a k x cols G of element size G;
        returns the bytes of the solution it allocates (0 when it overwrites G)."""
        e, es = self.e, self.es
        cast = k * k * es if es != e else 0
        t.alloc(cast, k * k * es)  # H in the solve dtype, its factor L
        t.free(cast)
        t.touch(k * k * e, 2 * k * k)  # isfinite(H): |H| and two masks
        L_rhs = k * k * rhs if rhs != es else 0
        t.alloc(L_rhs)
        X = 0 if overwrite else k * cols * G
        t.alloc(X)
        if G != rhs:
            t.touch(self.wide_chunks(k, cols, G, rhs))
        t.free(k * k * es, L_rhs)
        return X

    def gram_solve(self, t: _Tally, m: int, p: int) -> None:
        """``linalg.shifted_gram_solve`` of a V block of width m behind a layer of width p, into G's memory."""
        e, er, n = self.e, self.er, self.n
        if not woodbury_is_cheaper(p, m):  # the m x m system
            t.alloc(m * m * e)  # W^T W (``linalg.gram``), scaled and shifted in place
            self.spd_solve(t, m, n, G=e, rhs=er, overwrite=True)
            t.free(m * m * e)
            return
        wide = p * m * er if er != e else 0  # Woodbury: K = shift I + scale W W^T (p x p), in place
        t.alloc(wide, p * p * e)
        width = self.solve_columns(m, n, e, er)
        t.alloc(p * n * er)  # W G (column chunks in the wider dtype)
        if er != e:
            t.touch(m * width * er)
        t.alloc(p * n * er)  # their torch.cat: WG
        t.free(p * n * er)
        self.spd_solve(t, p, n, G=er, rhs=er, overwrite=True)
        if er != e:
            t.touch(self.wide_chunks(m, n, e, er))  # G - scale W^T R, column chunk by column chunk
        t.free(p * n * er, p * p * e, wide)

    def largest_eigenvalue(self, t: _Tally, k: int) -> None:
        work = 4 * k * 8 if self.cpu else k * k * 8  # LAPACK's, cuSOLVER's
        t.touch(k * k * 8 if self.e != 8 else 0, k * k * 8, work)  # H.double(), eigvalsh's copy, workspace

    # ---------------------------------------------------------------- blocks

    def output_state(self, t: _Tally) -> None:
        """V_N: the loss's prox or prox-linear step; its result replaces the old V_N."""
        t.label = f"the V{self.depth} block"
        cb = self.sizes[-1] * self.n * self.e
        peak = self.loss.output + self.reg_v.output
        t.alloc(peak * cb)
        t.free((peak - 1) * cb)
        t.touch(self.chunk(self.sizes[-1], self.n) * self.e)  # squared distance
        t.free(cb)  # the old V_N

    def hidden_state(self, t: _Tally, l: int, target_allocated: bool = False) -> None:
        """V_{l+1} by its closed form (or FISTA for a nonsmooth s); ``target`` is allocated (by the caller,
        for two-splitting) and becomes G, then V. Frees the old V_{l+1}."""
        m, p, e, n = self.sizes[l + 1], self.sizes[l + 2], self.e, self.n
        block = m * n * e
        t.label = f"the V{l + 1} block"
        if not target_allocated:  # three-splitting, ResNet: sigma(U_l) (+ V_l for a residual layer)
            act = self.act
            if self.residual[l]:
                t.alloc(block)
                t.touch(act.forward * block)
                t.alloc(block)
                t.free(block)
            else:
                t.touch(act.forward * block)
                t.alloc(block)
            if self.residual[l + 1]:
                t.touch(block, act.forward * block)  # sigma(U_{l+1}) of the residual successor
            if not self.reg_v.quadratic:
                t.alloc(block)  # with the proximal term: a new target
                t.free(block)
        t.touch(m * e)  # W^T b
        if self.reg_v.quadratic:
            self.gram_solve(t, m, p)
        else:
            self.state_fista(t, m, p)
        t.touch(self.chunk(m, n) * e)  # squared distance
        t.free(block)  # the old V

    def state_fista(self, t: _Tally, m: int, p: int) -> None:
        """V block with a nonsmooth s: H (m x m), the solution without s, FISTA; the result replaces G."""
        e, n = self.e, self.n
        block = m * n * e
        t.alloc(m * m * e)  # rho W^T W (``linalg.gram``), shifted in place
        X = self.spd_solve(t, m, n, G=e, rhs=self.er, overwrite=False)
        self.largest_eigenvalue(t, m)
        t.alloc(self.reg_v.prox * block)  # the candidate and its prox's temporaries
        t.free((self.reg_v.prox - 1) * block)
        t.touch(FISTA_BLOCKS * block, self.reg_v.prox * block)  # iterates, their products with H, the prox
        t.alloc(block)  # the result
        t.free(X, block, block, m * m * e)  # the solution, the candidate, G, H

    def preactivation(self, t: _Tally, l: int) -> None:
        """U_l: W V + b, then the prox row chunk by row chunk into it; replaces the old U_l."""
        m, n, e = self.sizes[l + 1], self.n, self.e
        block = m * n * e
        chunk = self.chunk(m, n) * e
        t.label = f"the U{l + 1} block"
        t.alloc(block)
        t.touch(chunk if self.residual[l] else 0, self.act_of(l).prox * chunk)  # V - V_in, the prox
        t.touch(chunk)  # squared distance
        t.free(block)

    def weights_block(self, t: _Tally, l: int) -> None:
        """W_l, b_l: the (d+1) x (d+1) normal equations (FISTA for a nonsmooth r); for W_1 of three-splitting
        H starts as a copy of the data's moments (``cached_moments``). The old b's memory is the previous
        sweep's (d+1) x m solution (b is a view of it), counted in the state's live bytes."""
        d, m, e = self.sizes[l], self.sizes[l + 1], self.e
        k = d + 1
        t.label = f"the W{l + 1} block, its {k} x {k} normal equations"
        t.alloc(k * k * e)  # H: [V;1][V;1]^T, V V^T written into it (``linalg.gram``); or the data's, copied
        if not self.cached_moments(l):
            t.touch(d * e)  # V's row sums
        t.alloc(m * k * e)  # G
        t.touch(m * d * e, m * e, k * e)  # U V^T + alpha W, U's row sums, the diagonal
        if self.reg_w.quadratic:
            X = self.spd_solve(t, k, m, G=e, rhs=self.es, overwrite=False)
            t.alloc(m * d * e)  # W = Theta[:, :d].contiguous(); b stays a view of X
            t.free(k * k * e, m * k * e)  # H, G
            t.touch(self.chunk(m, d) * e)  # squared distance
            t.free(m * d * e, self._b_storage(l))  # the old W and b
            return
        self.largest_eigenvalue(t, k)
        X = self.spd_solve(t, k, m, G=e, rhs=self.es, overwrite=False)
        t.alloc(self.reg_w.prox * m * d * e, m * k * e)  # prox of the solution, the candidate (torch.cat)
        t.free(X, self.reg_w.prox * m * d * e)
        t.touch(FISTA_BLOCKS * m * k * e, self.reg_w.prox * m * d * e)
        t.alloc(m * d * e, m * e)  # W, b (copies)
        t.free(m * k * e, k * k * e, m * k * e)  # the candidate, H, G
        t.touch(self.chunk(m, d) * e)
        t.free(m * d * e, m * e)

    def cached_moments(self, l: int) -> bool:
        """Whether the W block of layer l starts from moments the scheme keeps (``BCDScheme.data_moments``,
        [X;1][X;1]^T): the first layer's, when its W block is solved from normal equations (always in
        three-splitting and ResNet; in two-splitting when the first layer's sigma is the identity)."""
        return l == 0 and (self.scheme != "two" or self.act_of(0) is _LINEAR)

    def _b_storage(self, l: int) -> int:
        """Bytes the b of layer l holds after a sweep: the (d+1) x m solution of its closed-form W block."""
        d, m = self.sizes[l], self.sizes[l + 1]
        closed = self.reg_w.quadratic and (self.scheme != "two" or self.act_of(l) is _LINEAR)
        return (d + 1) * m * self.e if closed and not self.baseline else m * self.e

    def sample_chunk(self, rows: int) -> int:
        """Samples per chunk of two-splitting's nonlinear blocks (``inner.sample_chunks``), ``rows`` the most
        rows of their temporaries."""
        first = sample_chunks(self.n, rows, cpu=self.cpu)[0]
        return first.stop - first.start

    def hidden_state_nonlinear(self, t: _Tally, l: int) -> None:
        """Two-splitting's V_{l+1} behind a nonlinear sigma_{l+2} (``inner.columnwise_prox_gradient``): one new
        block, the iterate (the new V), and one column chunk's temporaries at a time: the target's columns,
        the gradient there, a trial point and its terms. Frees the old V."""
        m, p, n, e = self.sizes[l + 1], self.sizes[l + 2], self.n, self.e
        w = self.sample_chunk(max(m, p))
        mc, pc = m * w * e, p * w * e
        forward, prox = self.act.forward, self.reg_v.prox
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
        t.touch(self.chunk(m, n) * e)  # squared distance
        t.free(m * n * e)  # the old V

    def weights_nonlinear(self, t: _Tally, l: int) -> None:
        """Two-splitting's W_l, b_l behind a nonlinear sigma: proximal gradient on Theta = [W b] (m x (d+1)),
        each trial evaluated with its gradient over column chunks (``inner.sample_chunks``): [W_old b_old], the
        iterate and its gradient, a trial point and its gradient, and one chunk's temporaries."""
        d, m, e = self.sizes[l], self.sizes[l + 1], self.e
        theta, W = m * (d + 1) * e, m * d * e
        mc = m * self.sample_chunk(max(d, m)) * e
        forward, prox = self.act.forward, self.reg_w.prox
        t.label = f"the W{l + 1} block"
        t.alloc(theta, theta, theta)  # [W_old b_old], an iterate after a step, its gradient
        t.alloc(theta, theta)  # a trial point: step g, Theta - step g, then its prox (and torch.cat)
        t.free(theta)
        t.alloc(prox * W, theta)
        t.free(prox * W, theta)
        t.touch(theta, prox * W)  # Z - Theta, the penalty
        t.alloc(theta)  # the trial's gradient, summed over the chunks
        t.touch(self.chunk(m, d + 1) * e)  # the proximal term
        t.alloc(mc, (1 + forward) * mc)  # a chunk: W V + b, sigma of it, the squared distance, the residual
        t.free(forward * mc)
        t.touch(mc)
        t.alloc(mc)
        t.touch(mc / e, (1 + forward) * mc)  # sigma'
        t.free(3 * mc)
        t.free(theta, theta, theta)  # accepted: the trial and its gradient replace the iterate's
        t.alloc(W, m * e)  # W, b (copies)
        t.free(theta, theta)  # the last iterate and its gradient
        t.touch(self.chunk(m, d) * e)
        t.free(W, m * e)

    # ---------------------------------------------------------------- phases

    def live_state(self) -> int:
        """The state's bytes once a sweep has run: b of a closed-form W block is a view of its solution, and
        a scheme keeps the data's moments (``cached_moments``, (d0 + 1) x (d0 + 1)) from its first sweep on."""
        if self.baseline:
            return self.state()
        s = self.sizes
        moments = (s[0] + 1) ** 2 * self.e if self.cached_moments(0) else 0
        previous = self.state() if self.extrapolation else 0  # the previous point, from the first sweep on
        return (
            self.state() + previous + moments + sum(self._b_storage(l) - s[l + 1] * self.e for l in range(self.depth))
        )

    def build_peak(self) -> _Tally:
        """Building the network (``MLP.init``: weights drawn in float64 on the CPU) and the state."""
        s, e = self.sizes, self.e
        t = _Tally(self.data())
        t.label = "drawing the weights"
        drawn = 0  # the previous layer's float64 draw: its variable lets it go at the next one's
        for l in range(self.depth):
            w = s[l + 1] * s[l]
            if self.cpu:  # drawn in float64 on the host: on another device only the result is there
                t.alloc(8 * w, 8 * w)  # randn, times init_std
                t.free(8 * w, drawn)
                if e != 8:  # .to(dtype): a copy (in float64 the draw itself is W)
                    drawn = 8 * w
                    t.alloc(e * w)
            else:
                t.alloc(e * w)
            t.alloc(s[l + 1] * e)
        t.free(drawn)
        weights = self.weights() * e
        if self.reg_w.copies:  # the weights made feasible: new tensors, and the prox's temporaries
            t.touch(weights, max(0, self.reg_w.prox - 1) * self.largest_weight() * e)
        if self.baseline:
            t.touch(weights)  # the trained copies, while the network's own are alive
            return t
        t.label = "the first forward pass"
        t.alloc(2 * self.widths() * self.n * e)  # the forward pass: U, V (two-splitting drops U after it)
        t.touch((self.act.forward + any(self.residual)) * max(s[1:]) * self.n * e)  # sigma's temporaries, + V
        if self.reg_v.copies:  # V made feasible: new tensors, all made before the old are freed
            t.touch(self.widths() * self.n * e, max(0, self.reg_v.prox - 1) * max(s[1:]) * self.n * e)
        return t

    def sweep_peak(self) -> _Tally:
        if self.baseline:
            return self.epoch_peak()
        t = _Tally(self.live_state() + self.data())
        N = self.depth
        if self.extrapolation:  # the safeguard's objective at the extrapolated point, without its gradient
            _replace_grad(self).objective_peak(t)
        if self.scheme == "two":
            for l in reversed(range(N)):
                block = self.sizes[l + 1] * self.n * self.e
                if l == N - 1:
                    t.alloc(block)  # the target W V + b
                    self.output_state(t)
                    t.free(block)
                elif self.act_of(l + 1) is _LINEAR:  # sigma_{l+2} = Id: the closed form, in the target's memory
                    chunk = self.sizes[l + 1] * self.sample_chunk(self.sizes[l + 1]) * self.e
                    t.alloc(block)  # the target, chunk by chunk: W V + b, sigma of it
                    t.touch(chunk, (1 + self.act.forward) * chunk)
                    self.hidden_state(t, l, target_allocated=True)
                else:  # the target's columns made chunk by chunk inside the block
                    self.hidden_state_nonlinear(t, l)
                if self.act_of(l) is _LINEAR:
                    self.weights_block(t, l)
                else:
                    self.weights_nonlinear(t, l)
            return t
        for l in reversed(range(N)):
            if l == N - 1:
                self.output_state(t)
            else:
                self.hidden_state(t, l)
            self.preactivation(t, l)
            self.weights_block(t, l)
        return t

    def epoch_peak(self) -> _Tally:
        """One epoch of SGD or Adam: the parameters before it, a permutation, each mini-batch's forward and
        backward pass, the optimizer step, the prox of r, D."""
        s, e = self.sizes, self.e
        B = min(self.batch_size, self.n)
        params = self.weights() * e
        largest = (self.largest_weight() + max(s[1:])) * e
        t = _Tally(self.state() + self.data())
        t.label = "a mini-batch step"
        t.alloc(params, 8 * self.n)  # the parameters before the epoch, the permutation
        t.alloc((s[0] + s[-1]) * B * e)  # the mini-batch's X and Y
        saved = sum((1 + self.act.saved + self.residual[l]) * s[l + 1] for l in range(self.depth - 1)) * B * e
        widest = max(s) * B * e
        t.touch(saved + self.loss.saved * s[-1] * B * e, BACKWARD_BLOCKS * widest, self.act.forward * widest)
        # the optimizer step: on the CPU one parameter at a time (Adam: the sqrt of its second moments, their
        # scaling, and the previous parameter's, which its loop variable keeps), on CUDA all at once
        # (torch._foreach_*); the gradient plus weight decay; Nesterov's gradient
        adam = (3 if self.cpu else 2) if self.scheme == "adam" else 0
        copies = adam + int(self.nesterov and self.scheme == "sgd") + int(self.weight_decay)
        t.touch(copies * (largest if self.cpu else params))
        t.touch(self.reg_w.prox * self.largest_weight() * e)  # the prox of r
        t.touch(2 * largest)  # D: the change of each parameter, squared
        return t

    def objective_peak(self, t: _Tally) -> None:
        """Two-splitting's ``BCDScheme.objective`` over column chunks: the largest chunk's terms, and with the
        gradient norm what autograd keeps of them, the gradients of the state's chunk and of every W and b."""
        s, e, N = self.sizes, self.e, self.depth
        w = column_chunk_width(self.n)
        differentiable = self.grad_norm and self.reg_w.quadratic and self.reg_v.quadratic
        c = s[-1]
        t.label = "the objective" + (" and its gradient" if differentiable else "")
        if not differentiable:
            t.touch(self.loss.value * c * w * e)
            for l in range(N):
                m, act = s[l + 1], self.act_of(l)
                out = (1 + act.forward + int(self.residual[l])) * m * w * e
                t.touch(out, self.chunk(m, w) * e)  # sigma(U) (+ V), squared distance
            return
        t.alloc(self.weights() * e)  # the W and b gradients, summed over the chunks
        saved = self.loss.saved * c * w * e
        for l in range(N):
            m, act = s[l + 1], self.act_of(l)
            saved += (1 + act.saved + int(self.residual[l])) * m * w * e  # sigma(W V + b) (+ V)
        grads = self.widths() * w * e  # of the state's chunk
        widest = max(s[1:]) * w * e
        double = 2 if e != 8 else 1  # a gradient in float64 (a copy unless it is float64), its square
        t.alloc(grads)  # (the last chunk's stay referenced until the objective returns)
        t.touch(saved, BACKWARD_BLOCKS * widest)
        t.touch(double * widest * 8 // e)  # the state's gradients, squared in float64
        t.touch(double * self.largest_weight() * 8)  # the weight gradients, squared in float64
        t.free(grads, self.weights() * e)

    def baseline_objective_peak(self, t: _Tally) -> None:
        """``GradientBaseline.objective``: the network over all samples at once, with autograd for the norm."""
        s, e, n, N = self.sizes, self.e, self.n, self.depth
        c = s[-1]
        differentiable = self.grad_norm and self.reg_w.quadratic
        t.label = "the objective over all samples" + (" and its gradient" if differentiable else "")
        if differentiable:
            saved = sum((1 + self.act.saved + self.residual[l]) * s[l + 1] for l in range(N - 1)) * n * e
            widest = max(s[1:]) * n * e
            t.touch(saved, self.loss.saved * c * n * e, self.weights() * e, BACKWARD_BLOCKS * widest)
            return
        for l in range(N):
            out = 2 + self.act_of(l).forward + self.residual[l]  # W V + b, sigma of it (+ V)
            t.touch((s[l] if l else 0) * n * e, out * s[l + 1] * n * e)
        t.touch(self.loss.value * c * n * e)

    def forward_peak(self, t: _Tally, cols: int, *, loss: bool) -> None:
        """``MLP.__call__`` on ``cols`` samples, over column chunks, then (with ``loss``) R of its output, and
        its accuracy; the output (classes x cols) stays."""
        if cols < 1:
            return
        s, e, N = self.sizes, self.e, self.depth
        w = column_chunk_width(cols)
        c = s[-1]
        t.label = f"the forward pass on the {'training' if loss else 'test'} samples"
        chunk = max(
            ((s[l] if l else 0) + (2 + self.act_of(l).forward + int(self.residual[l])) * s[l + 1]) * w * e
            for l in range(N)
        )
        t.alloc(c * cols * e)  # the chunks' outputs
        t.touch(chunk)
        if len(column_chunks(cols)) > 1:
            t.touch(c * cols * e)  # torch.cat of them
        t.touch(self.loss.value * c * cols * e if loss else 0, 17 * cols)  # R, argmax == labels (and as float64)

    def closed_form_peak(self, t: _Tally) -> None:
        """``ThreeSplittingBCD.evaluate``: one pass over the column chunks of the training samples, the
        network's forward pass and the objective's terms of each, with the gradient norm its gradient in closed
        form, the W and b gradients summed over the chunks; then the test samples' forward pass and the squares
        of the W and b gradients. The chunks allocate alike: the widest one's work is followed. (Samples other
        than the trainer's own, which a run never passes, would add a forward pass over them.)"""
        s, e, N = self.sizes, self.e, self.depth
        w = column_chunk_width(self.n)
        gradient = self.grad_norm and self.reg_w.quadratic and self.reg_v.quadratic
        weights = self.weights() * e
        t.label = "the objective" + (" and its gradient" if gradient else "")
        if gradient:
            t.alloc(weights)  # the W and b gradients
        blocks = [s[l + 1] * w * e for l in range(N)]  # one chunk of layer l's U, V (and E, P, gradients)
        t.alloc(blocks[0])  # Z_1 = W_1 X + b_1: the forward pass's first pre-activation, then E_1
        self.chunk_forward(t, blocks, w)
        t.touch(self.loss.value * blocks[-1], max(blocks))  # R(V_N), r(V_l) (|V|, V^2 or a mask)
        for l in reversed(range(N)):
            block, act = blocks[l], self.act_of(l)
            if l:
                t.alloc(block)  # E_l = U_l - (W_l V_{l-1} + b_l), in place
            t.alloc(block)  # P_l = V_l - sigma(U_l) (- V_{l-1}): sigma's result (or sigma(U) + V), written into
            t.touch(act.forward * block)  # sigma's temporaries
            t.touch(block if self.residual[l] else 0)  # sigma(U) while sigma(U) + V is made
            t.touch(block)  # E^2, then P^2
            if gradient:
                if l == N - 1:  # grad R(V_N) + gamma P_N: at most the loss's V_N block (``LossMemory.output``)
                    t.alloc(self.loss.output * block)
                    t.free((self.loss.output - 1) * block)
                else:
                    t.alloc(block)  # gamma P_l - rho W_{l+1}^T E_{l+1}
                t.touch(block)  # its square
                t.free(block)
                # grad U_l: sigma'(U_l) (ones for sigma = Id), then scaled in place, and its square
                t.touch((2 if act is _LINEAR else DERIVATIVE_BLOCKS) * block)
            if l < N - 1:
                t.free(2 * blocks[l + 1])  # E and P of layer l + 1
        t.free(2 * blocks[0])
        self.forward_peak(t, self.n_test, loss=False)
        t.label = "the gradient norm"
        t.touch(self.largest_weight() * e)  # r(W): W^2 or |W|
        if gradient:  # the square of each W and b gradient in turn
            t.touch(self.largest_weight() * e)

    def chunk_forward(self, t: _Tally, blocks: list[int], w: int) -> None:
        """The network's forward pass on one chunk of the training samples in ``closed_form_peak``: Z_1 is
        allocated; each layer's pre-activation and output, R of the output, its accuracy."""
        H = 0  # the previous layer's output (the chunk of X itself before the first)
        for l, block in enumerate(blocks):
            Z = 0 if l == 0 else block  # Z_1 is shared
            t.alloc(Z, block)  # W V + b, sigma of it (or sigma of it + V)
            t.touch(self.act_of(l).forward * block)  # sigma's temporaries
            t.touch(block if self.residual[l] else 0)  # sigma(U) while sigma(U) + V is made
            t.free(Z, H)
            H = block
        t.touch(self.loss.value * blocks[-1], 9 * w)  # R, argmax == labels
        t.free(H)

    def eval_peak(self) -> _Tally:
        """The evaluation after a sweep: three-splitting's in one pass (``closed_form_peak``); the objective by
        autograd and the network on the training and test samples for two-splitting and the baselines."""
        t = _Tally(self.live_state() + self.data())
        if self.scheme in ("three", "resnet"):
            self.closed_form_peak(t)
            return t
        if self.baseline:
            self.baseline_objective_peak(t)
        else:
            self.objective_peak(t)
        self.forward_peak(t, self.n, loss=True)
        self.forward_peak(t, self.n_test, loss=False)
        return t


# blocks of live iterates (x, H x, y, H y, z, H z, moved, previous x, H x) in monotone FISTA (inner.fista)
FISTA_BLOCKS = 10
# transient blocks of the widest layer during a backward pass (gradients flowing, ReLU's, the sums of two)
BACKWARD_BLOCKS = 2
# blocks of grad U = sigma'(U) ... and its square: sigma'(U) holds at most three, its result included, in any
# catalogue entry (Sigmoid: sigma(U), 1 - sigma(U) and their product; ReLU a byte mask and the result)
DERIVATIVE_BLOCKS = 3
_LINEAR = Linear.memory  # sigma = Id: the last layer's, and act=linear


def estimate(
    sizes: Sequence[int],
    n_train: int,
    n_test: int,
    *,
    dtype: torch.dtype | str = torch.float32,
    scheme: str = "three",
    residual: Sequence[bool] | None = None,
    solve_dtype: torch.dtype | str | None = torch.float64,
    state_solve_dtype: torch.dtype | str | None = None,
    grad_norm: bool = True,
    device: torch.device | str = "cpu",
    act: Any = "relu",
    loss: Any = "square",
    reg_w: Any = "none",
    reg_v: Any = "none",
    batch_size: int = 512,
    momentum: float = 0.0,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    extrapolation: bool = False,
) -> MemoryEstimate:
    """The memory of a run on the network of layer ``sizes`` (input, hidden..., classes) with ``n_train``
    training and ``n_test`` test samples on this process's ``device``.

    ``scheme``: a BCD splitting (three, two, resnet; ``residual`` flags its layers as
    ``config.architecture`` does, by default every layer but the first and the last for resnet) or a
    baseline (sgd, adam, with ``batch_size``, ``momentum``, ``nesterov``, ``weight_decay``).
    ``solve_dtype``: the factorisations' dtype (trainer.solve_dtype; None: ``dtype``);
    ``state_solve_dtype``: that of the V blocks' right-hand sides (None: ``dtype``). ``extrapolation``: a BCD
    scheme's safeguarded extrapolation (``trainer.extrapolation`` > 0), which keeps a copy of the state.
    ``act``, ``loss``, ``reg_w``, ``reg_v``: catalogue objects or the names of their files in conf/act,
    conf/loss, conf/reg (relu, square, none, ...; ValueError for another name). Each entry's ``memory`` says
    what it allocates (a smooth activation's prox holds some 45 tensors of its chunk's size); an object
    without one (a ``_target_`` of the user's own) is counted as the most any catalogue entry of its kind
    allocates.
    """
    if scheme not in SCHEMES + BASELINES:
        raise ValueError(f"scheme={scheme!r}: one of {', '.join(SCHEMES + BASELINES)}")
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1 or n_train < 1 or n_test < 0:
        raise ValueError(f"sizes {sizes}, n_train {n_train}, n_test {n_test}: need two sizes >= 1 and n_train >= 1")
    N = len(sizes) - 1
    if residual is None:
        residual = [0 < l < N - 1 for l in range(N)] if scheme == "resnet" else [False] * N
    device = torch.device(device)
    e = _size(dtype)
    run = _Run(
        sizes=sizes, residual=[bool(r) for r in residual], n=int(n_train), n_test=int(n_test), e=e,
        es=_size(solve_dtype) or e, er=_size(state_solve_dtype) or e, scheme=scheme,
        cpu=device.type == "cpu", grad_norm=bool(grad_norm),
        act=_act_memory(act), loss=_loss_memory(loss), reg_w=_reg_memory(reg_w), reg_v=_reg_memory(reg_v),
        batch_size=int(batch_size), momentum=bool(momentum), nesterov=bool(nesterov),
        weight_decay=bool(weight_decay), extrapolation=bool(extrapolation) and scheme not in BASELINES,
    )  # fmt: skip
    return _estimate_of(run, dtype=str(dtype).removeprefix("torch."), device=str(device))


def _estimate_of(run: _Run, *, dtype: str, device: str) -> MemoryEstimate:
    """The estimate of ``run``: its peaks, where the highest is reached, how much they grow per sample (the
    peaks again at twice the samples) and the evaluation's peak without the gradient norm."""
    build, sweep, evaluation, where = _peaks(run)
    more = _peaks(_replace_n(run, 2 * run.n))
    per_sample = max(0.0, (max(more[:3]) - max(build, sweep, evaluation)) / run.n)
    no_grad = _peaks(_replace_grad(run))[2] if run.grad_norm else evaluation
    phase = max(("sweep", sweep), ("evaluation", evaluation), ("build", build), key=lambda x: x[1])[0]
    return MemoryEstimate(
        state=run.state(), data=run.data(), sweep_peak=sweep, eval_peak=evaluation, build_peak=build,
        n_train=run.n, per_sample=per_sample, dtype=dtype, device=device,
        grad_norm=run.grad_norm, eval_peak_without_grad_norm=no_grad, where=where[phase],
    )  # fmt: skip


def _replace_n(run: _Run, n: int) -> _Run:
    return _Run(**{**run.__dict__, "n": n})


def _replace_grad(run: _Run) -> _Run:
    return _Run(**{**run.__dict__, "grad_norm": False})


def _peaks(run: _Run) -> tuple[int, int, int, dict[str, str]]:
    """(build, sweep, evaluation) peaks of ``run``, what each phase starts with plus its temporaries scaled by
    MARGIN, and where each is reached."""
    extra = SMALL + (CUDA_WORKSPACE if not run.cpu else 0)
    tallies = {"build": run.build_peak(), "sweep": run.sweep_peak(), "evaluation": run.eval_peak()}
    build, sweep, evaluation = (int(t.start + MARGIN * (t.peak - t.start)) + extra for t in tallies.values())
    return build, sweep, evaluation, {phase: t.where for phase, t in tallies.items()}


def estimate_for(cfg: Any, data: Any) -> MemoryEstimate:
    """The estimate of the run ``cfg`` (the composed run config, as ``train.build_trainer`` reads it) on
    the loaded ``data`` (a ``bcd_cli.data.loaders.Dataset``, this process's shard in a data-parallel run).

    The data is already on its device: ``loaded`` is its size, which ``check`` does not ask for again."""
    from bcd_cli.run.spec import DTYPES, architecture, bcd_scheme, build

    sizes, residual = architecture(cfg.model, data.n_features, data.n_classes)
    trainer = cfg.trainer
    if trainer.name in BASELINES:
        scheme = str(trainer.name)
        solve = state_solve = None
    else:
        scheme = bcd_scheme(cfg).splitting
        solve = DTYPES[trainer.solve_dtype]
        state_solve = DTYPES[trainer.state_solve_dtype] if trainer.get("state_solve_dtype") else None
    n_local, n_test_local = data.X_train.shape[1], data.X_test.shape[1]
    result = estimate(
        sizes, n_local, n_test_local,
        dtype=DTYPES[cfg.dtype], scheme=scheme, residual=residual, solve_dtype=solve,
        state_solve_dtype=state_solve, grad_norm=bool(cfg.get("grad_norm", True)), device=data.X_train.device,
        act=build(cfg, "act"), loss=build(cfg, "loss"), reg_w=build(cfg, "reg_w"), reg_v=build(cfg, "reg_v"),
        batch_size=trainer.get("batch_size", 512), momentum=trainer.get("momentum", 0.0),
        nesterov=trainer.get("nesterov", False), weight_decay=trainer.get("weight_decay", 0.0),
        extrapolation=bool(trainer.get("extrapolation", 0.0)),
    )  # fmt: skip
    ranks = world_size()  # a data-parallel run: each rank holds its share of the samples
    loaded = sum(t.numel() * t.element_size() for t in (data.X_train, data.Y_train, data.y_train, data.X_test,
                                                         data.Y_test, data.y_test))  # fmt: skip
    return MemoryEstimate(
        **{**result.__dict__, "n_train": data.n_train, "per_sample": result.per_sample / ranks, "loaded": loaded}
    )


def measured_peaks(phases: dict[str, Callable[[], object]]) -> dict[str, int]:
    """The most bytes PyTorch's CPU allocator holds during each of ``phases`` (run in order, in one
    ``torch.profiler`` session with ``profile_memory=True``), counting only what the phases allocate: every
    allocation is followed by its address until it is freed. Exact, and independent of the machine's malloc,
    page size, thread count or load. For tests and ``scripts/bench_sweep.py``; a run does not call it."""
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for name, run in phases.items():
            with record_function(f"phase:{name}"):
                run()
    events: list[tuple[int, int, int, int, str]] = []

    def walk(nodes: Any, phase: str) -> None:
        for node in nodes:
            if node.name.startswith("phase:"):
                phase = node.name.removeprefix("phase:")
            fields = node.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation" and str(fields.device) == "cpu":
                events.append((node.start_time_ns, len(events), fields.ptr, fields.alloc_size, phase))
            walk(node.children, phase)

    walk(prof.profiler.kineto_results.experimental_event_tree(), "")
    live: dict[int, int] = {}
    total, peaks = 0, dict.fromkeys(phases, 0)
    for _, _, ptr, size, label in sorted(events):
        if size > 0:
            live[ptr] = size
            total += size
        else:
            total -= live.pop(ptr, 0)  # memory allocated before the session is not followed
        if label in peaks:
            peaks[label] = max(peaks[label], total)
    return peaks


# ------------------------------------------------------------------------------------------------ the device


def format_bytes(n: float) -> str:
    """``57.5 GiB``, ``180 MiB``, ``512 B``: three significant digits, binary units."""
    for unit, size in (("PiB", 2**50), ("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            value = n / size
            return f"{value:.3g} {unit}" if value < 1000 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def parse_bytes(text: str) -> int:
    """``BCD_MEMORY_LIMIT``'s value in bytes: ``17179869184``, ``16G``, ``512M``, ``1.5GiB`` (binary
    suffixes K, M, G, T, with an optional B or iB). Raises ConfigError naming the variable otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    value = float(match.group(1)) * _SUFFIXES[match.group(2).upper()] if match else math.nan
    if not (match and math.isfinite(value) and value >= 1):
        raise ConfigError(
            ENV_LIMIT, text, "a size in bytes, optionally with a binary suffix K, M, G or T (e.g. 2G or 512M)"
        )
    return int(value)


def available(device: torch.device | str) -> tuple[int, str]:
    """(bytes a run on ``device`` can still allocate, where that number comes from).

    ``BCD_MEMORY_LIMIT`` when set. On CUDA the free memory the driver reports (``torch.cuda.mem_get_info``),
    with the blocks PyTorch's caching allocator holds free for this process.
    On the CPU the smallest of MemAvailable of /proc/meminfo and, for this process's cgroup and each
    above it, its limit minus its usage (v2: memory.max minus memory.current; v1: memory.limit_in_bytes minus
    memory.usage_in_bytes; page cache the kernel can drop, inactive_file, not counted as used); elsewhere
    the free physical memory (os.sysconf). (0, reason) when nothing can be read.
    """
    override = os.environ.get(ENV_LIMIT)
    if override is not None and override.strip():
        return parse_bytes(override), f"{ENV_LIMIT}={override.strip()}"
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        free, _ = torch.cuda.mem_get_info(index)
        cached = torch.cuda.memory_reserved(index) - torch.cuda.memory_allocated(index)  # ours to reuse
        if cached > 0:
            return int(free + cached), f"free memory of cuda:{index} (torch.cuda.mem_get_info) and its cached blocks"
        return int(free), f"free memory of cuda:{index} (torch.cuda.mem_get_info)"
    if device.type != "cpu":
        return 0, f"no way to read the free memory of {device}"
    found = [x for x in (_meminfo_available(), *_cgroup_headroom()) if x is not None]
    if found:
        return min(found, key=lambda x: x[0])
    return _sysconf_available()


def _meminfo_available() -> tuple[int, str] | None:
    try:
        text = Path("/proc/meminfo").read_text()
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return (int(match.group(1)) * 1024, "MemAvailable of /proc/meminfo") if match else None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(path: Path, key: str) -> int:
    try:
        text = path.read_text()
    except OSError:
        return 0
    match = re.search(rf"^{key} (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


def _cgroup_dirs(root: Path, relative: str) -> list[Path]:
    """``root``/``relative`` and each cgroup above it, the deepest first; ``root`` alone when the process's
    cgroup is not visible there (a cgroup namespace mounts its own cgroup as the root)."""
    leaf = root / relative.lstrip("/")
    if not leaf.is_dir():
        return [root]
    dirs = [leaf]
    while dirs[-1] != root and root in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _cgroup_headroom(
    proc: Path = Path("/proc/self/cgroup"), mount: Path = Path("/sys/fs/cgroup")
) -> list[tuple[int, str]]:
    """(limit minus usage, description) of every cgroup above this process with a memory limit."""
    try:
        lines = proc.read_text().splitlines()
    except OSError:
        return []
    found = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":  # cgroup v2 (unified)
            root = next((r for r in (mount, mount / "unified") if (r / "cgroup.controllers").exists()), None)
            if root is None:
                continue
            for d in _cgroup_dirs(root, relative):
                limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
                if limit is not None and usage is not None and limit < _UNLIMITED:
                    used = usage - _inactive_file(d / "memory.stat", "inactive_file")
                    found.append((max(0, limit - used), f"cgroup memory.max minus usage ({d})"))
        elif "memory" in controllers.split(","):  # cgroup v1
            root = mount / "memory"
            for d in _cgroup_dirs(root, relative):
                limit, usage = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
                if limit is not None and usage is not None and limit < _UNLIMITED:
                    used = usage - _inactive_file(d / "memory.stat", "total_inactive_file")
                    found.append((max(0, limit - used), f"cgroup v1 memory.limit_in_bytes minus usage ({d})"))
    return found


def _sysconf_available() -> tuple[int, str]:
    for name, what in (("SC_AVPHYS_PAGES", "free physical memory"), ("SC_PHYS_PAGES", "physical memory")):
        try:
            pages, size = os.sysconf(name), os.sysconf("SC_PAGE_SIZE")
        except (AttributeError, ValueError, OSError):
            continue
        if pages > 0 and size > 0:
            return pages * size, f"{what} (os.sysconf {name})"
    return 0, "the free memory of this machine could not be read"


def check(estimate: MemoryEstimate, device: torch.device | str, *, what: str) -> None:
    """Refuses ``what`` (e.g. ``bcd-train``, ``job 3``) when ``estimate.peak`` does not fit ``device``.

    Raises ResourceError (exit status 2) with one line: the estimate in its parts, the limit and where it
    comes from, what to change. Logs a warning when the peak takes more than 80% of the limit. With
    ``BCD_MEMORY_LIMIT`` the whole peak is compared with it; otherwise the peak less ``estimate.loaded``
    (already allocated, so no longer in the free memory) with what ``available`` reports.
    """
    limit, source = available(device)
    if limit <= 0:
        log.debug("memory check skipped: %s", source)
        return
    overridden = source.startswith(ENV_LIMIT)
    need = estimate.peak if overridden else max(0, estimate.peak - estimate.loaded)
    beyond = ""
    if not overridden and estimate.loaded >= 0.05 * estimate.peak:
        beyond = f", {format_bytes(need)} beyond the data already loaded"
    needs = f"{what} needs about {format_bytes(estimate.peak)} at its peak ({estimate.parts()}{beyond})"
    if need > limit:
        raise ResourceError(
            f"{needs}, but {format_bytes(limit)} is available ({source}); {_hints(estimate, limit, overridden)}"
        )
    if need > WARN_FRACTION * limit:
        log.warning("%s: %.0f%% of the %s available (%s)", needs, 100 * need / limit, format_bytes(limit), source)


def _hints(estimate: MemoryEstimate, limit: int, overridden: bool) -> str:
    hints = []
    fixed = estimate.peak - estimate.per_sample * estimate.n_train  # what no sample count changes
    room = limit + (0 if overridden else estimate.loaded) - fixed
    if room > 0:  # fewer samples can help
        fits = int(0.95 * room / estimate.per_sample) if estimate.per_sample > 0 else 0
        hints.append(f"fewer samples (data.n_train={f'{fits} or less' if 1 <= fits < estimate.n_train else '...'})")
    hints.append("a smaller network (model.widths, or model.width and model.depth)")
    if estimate.dtype == "float64":
        hints.append("dtype=float32")
    no_grad = estimate.eval_peak_without_grad_norm
    without = max(estimate.sweep_peak, estimate.build_peak, no_grad or 0)
    if estimate.grad_norm and no_grad is not None and estimate.eval_peak > without:
        hints.append(f"grad_norm=false (peak {format_bytes(without)})")
    hints.append("a GPU with more memory" if estimate.device.startswith("cuda") else "a machine with more memory")
    return "try " + ", ".join(hints[:-1]) + " or " + hints[-1]
