"""How work over many samples (columns) or many rows is cut into pieces, and why each piece has its size.

Three kinds of work are cut, each for its own reason (docs/math.md §2.7):

- evaluations over all samples (the network's forward pass, the objective and its gradient): in
  ``EVALUATION_CHUNKS`` column chunks of at least ``EVALUATION_CHUNK_MIN_COLUMNS`` samples, so that
  the hidden layers' outputs, and what autograd keeps of them, exist for one chunk at a time
  (``column_chunks``);
- elementwise work on the CPU (an activation's prox, a squared distance): in row chunks of about
  ``CPU_CHUNK_ELEMENTS`` entries, so that temporaries stay in cache and no block-sized one is
  allocated, fresh memory costing a page fault per 4 KiB there (``cpu_row_chunks``);
- right-hand sides of a solve copied into a wider dtype (float64 for float32 states): in column
  chunks of ``SOLVE_CHUNK_ELEMENTS`` entries, so that the wide copy never holds all of them
  (``wide_column_chunks``).

Each kind has a function of the tensor the engine calls and a function of the shape alone, which the
workspace declarations of the memory estimate (``engine.workspace``) call to count the same pieces.
The constants are read when a function is called, so that a test may shrink them.
"""

from __future__ import annotations

import torch
from torch import Tensor

# evaluations over all samples: this many column chunks, each at least this many samples wide
EVALUATION_CHUNKS = 16
EVALUATION_CHUNK_MIN_COLUMNS = 512
# entries per chunk of elementwise work on the CPU: 1 MiB in float32, well inside a core's L2 cache
CPU_CHUNK_ELEMENTS = 2**18
# entries of right-hand sides copied into a wider dtype at a time: 16 MiB in float64
SOLVE_CHUNK_ELEMENTS = 2**21


def spans(total: int, width: int) -> list[slice]:
    """Contiguous slices of ``range(total)``, ``width`` long but the last: ``[slice(0, 0)]`` when total is 0."""
    return [slice(start, min(start + width, total)) for start in range(0, total, max(1, width))] or [slice(0, 0)]


def column_chunk_width(n: int) -> int:
    """Samples per chunk of an evaluation over n samples (n itself when they fit one chunk)."""
    return min(n, max(EVALUATION_CHUNK_MIN_COLUMNS, -(-n // EVALUATION_CHUNKS)))


def column_chunks(n: int) -> list[slice]:
    """Slices of n samples into at most ``EVALUATION_CHUNKS`` contiguous chunks, each at least
    ``EVALUATION_CHUNK_MIN_COLUMNS`` wide (one chunk for a small n)."""
    return spans(n, column_chunk_width(n))


def cpu_chunk_rows(rows: int, cols: int, *, cpu: bool = True) -> int:
    """Rows per chunk of elementwise work on a rows x cols matrix: all of them off the CPU (CUDA's caching
    allocator has no page-fault cost) and for a matrix of at most ``CPU_CHUNK_ELEMENTS`` entries."""
    if not cpu or rows * cols <= CPU_CHUNK_ELEMENTS:
        return rows
    return min(rows, max(1, CPU_CHUNK_ELEMENTS // cols))


def cpu_row_chunks(A: Tensor) -> list[slice]:
    """Row slices of A for elementwise work (``cpu_chunk_rows``); the whole of A for a vector or a scalar."""
    if A.dim() != 2:
        return [slice(0, A.shape[0] if A.dim() else 1)]
    rows = A.shape[0]
    return spans(rows, cpu_chunk_rows(rows, A.shape[1], cpu=A.device.type == "cpu"))


def wide_chunk_columns(rows: int, cols: int, *, widened: bool) -> int:
    """Columns of a rows x cols matrix of right-hand sides worked on at a time: all of them in their own
    dtype; ``widened`` (copied into a wider one) ``SOLVE_CHUNK_ELEMENTS`` entries' worth, at least one."""
    if not widened:
        return cols
    return min(cols, max(1, SOLVE_CHUNK_ELEMENTS // max(1, rows)))


def wide_column_chunks(G: Tensor, dtype: torch.dtype) -> list[slice]:
    """Column slices of G (k x n) for work in ``dtype`` (``wide_chunk_columns``)."""
    rows, cols = G.shape
    return spans(cols, wide_chunk_columns(rows, cols, widened=dtype != G.dtype))
