"""What the engine's work allocates, declared beside the code that allocates it, for the memory estimate.

Every block update (``blocks.update_*``), solve (``linalg``), inner solver (``inner``), evaluation and forward
pass has a sibling ``*_workspace`` function that records on a ``Tally`` the bytes it allocates beyond the
live state, in the order it makes and frees them, as plain arithmetic on the run's ``Shapes`` (no tensor is
made). A scheme or trainer composes its own: ``memory_footprint`` (a classmethod of ``BCDScheme`` and
``GradientBaseline``) gives its state, the workspace of each block of a sweep, of the evaluation and of the
build. ``bcd_cli.run.memory`` adds the data and the device's side, and takes the largest workspace of each
phase, so a new block or scheme brings its own declaration and nothing in ``bcd_cli.run`` follows its order.
The one rule between them: a block of a sweep leaves the live bytes as it found them (its new value replaces
the old one), which ``Workspace.left`` records and ``tests/test_memory.py`` checks.

The catalogue entries' own allocations are their ``memory`` profiles (``bcd_cli.catalogue._memory``), which
``Shapes`` carries; a ``*_workspace`` multiplies them by the block's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcd_cli.catalogue._memory import ActivationMemory, LossMemory, RegularizerMemory
from bcd_cli.catalogue.activations import Linear
from bcd_cli.engine.chunking import cpu_chunk_rows

LINEAR = Linear.memory  # sigma = Id: the last layer's, and act=linear
# transient blocks of the widest layer during a backward pass (gradients flowing, ReLU's, the sums of two)
BACKWARD_BLOCKS = 2


@dataclass(frozen=True)
class Shapes:
    """A run's shapes and dtypes, all a workspace declaration reads: layer ``sizes`` (input, hidden...,
    classes), ``residual`` flags, ``n`` training and ``n_test`` test samples (this process's), bytes per
    element of the run's dtype ``e``, of the factorisations ``es`` (solve_dtype) and of the V blocks'
    right-hand sides ``er`` (state_solve_dtype), whether the device is the CPU, whether evaluations compute
    the gradient norm, and the memory profiles of the catalogue entries."""

    sizes: tuple[int, ...]
    residual: tuple[bool, ...]
    n: int
    n_test: int
    e: int
    es: int
    er: int
    cpu: bool
    grad_norm: bool
    act: ActivationMemory
    loss: LossMemory
    reg_w: RegularizerMemory
    reg_v: RegularizerMemory

    @property
    def depth(self) -> int:
        return len(self.sizes) - 1

    def weights(self) -> int:
        """Elements of all W and b."""
        s = self.sizes
        return sum(s[l + 1] * (s[l] + 1) for l in range(self.depth))

    def largest_weight(self) -> int:
        s = self.sizes
        return max(s[l + 1] * s[l] for l in range(self.depth))

    def widths(self) -> int:
        """Rows of all states V_1..V_N (one column per sample)."""
        return sum(self.sizes[1:])

    def act_of(self, l: int) -> ActivationMemory:
        """The profile of layer l's sigma: the output layer's is the identity."""
        return LINEAR if l == self.depth - 1 else self.act

    def chunk(self, rows: int, cols: int) -> int:
        """Elements of one chunk of elementwise work on a rows x cols block (``chunking.cpu_row_chunks``)."""
        return cpu_chunk_rows(rows, cols, cpu=self.cpu) * cols


@dataclass(frozen=True)
class Workspace:
    """Bytes allocated beyond the live state at the highest point of some work, what it is doing there (e.g.
    ``the W2 block, its 1025 x 1025 normal equations``), and the bytes it ``left`` allocated when done (0 for a
    block of a sweep, whose new value replaces the old)."""

    bytes: int
    where: str
    left: int = 0


@dataclass(frozen=True)
class Footprint:
    """A trainer's memory on ``Shapes``: ``state`` (what a checkpoint holds: W, b, V, U, or a baseline's
    weights, gradients and optimizer state), ``live`` (what stays allocated between sweeps once one has run,
    the state included), and the workspaces of building it (beyond the data, before the state exists), of each
    block of a sweep and of the evaluation (each beyond ``live``)."""

    state: int
    live: int
    build: Workspace
    sweep: tuple[Workspace, ...]
    evaluation: Workspace


class Tally:
    """Bytes allocated over a sequence of allocations and frees, and their highest point above the start."""

    def __init__(self) -> None:
        self.live = self.peak = 0.0
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

    def workspace(self) -> Workspace:
        return Workspace(int(self.peak), self.where, int(self.live))


def workspace_of(label: str, declare, *args) -> Workspace:
    """The workspace ``declare(tally, *args)`` records, reached while doing ``label``."""
    t = Tally()
    t.label = label
    declare(t, *args)
    return t.workspace()
