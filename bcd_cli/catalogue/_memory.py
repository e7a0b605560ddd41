"""What a catalogue entry's value and solver allocate, for the memory estimate (``bcd_cli.run.memory``).

Every entry declares one of these as ``memory`` (a class attribute, or a property when it depends on a
field, as a loss's ``solver`` does). The numbers are counts of tensors the size of the block the entry
works on, besides the ones the engine allocates around it; the engine's workspace declarations
(``bcd_cli.engine.workspace``) multiply them by the block's bytes. They are measured on the entry itself
(``torch.profiler`` with ``profile_memory=True``), and ``tests/test_memory.py`` checks the estimates built
from them against measured peaks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ActivationMemory:
    """What an activation allocates, in blocks of its layer's size: ``prox`` temporaries of the U block's
    prox (a row chunk on the CPU, the block on CUDA), ``forward`` temporaries of sigma(U) beside its result,
    ``saved`` tensors autograd keeps beside it (measured with torch.profiler on each catalogue entry)."""

    prox: float
    forward: float
    saved: float


@dataclass(frozen=True)
class LossMemory:
    """What a loss allocates, in blocks of the output's size (classes x samples): ``output`` at the peak of
    the V_N block (its result included), ``value`` while R is evaluated, ``saved`` what autograd keeps of it."""

    output: float
    value: float
    saved: float


@dataclass(frozen=True)
class RegularizerMemory:
    """A regularizer: ``quadratic`` (closed-form blocks; the entry's own ``quadratic``), ``prox`` temporaries
    of its prox in blocks of its argument (result included), ``output`` extra blocks of the V_N block with it,
    ``copies``: ``prox(X, 0)`` returns a new tensor (the starting point made feasible)."""

    quadratic: bool
    prox: float
    output: float
    copies: bool
