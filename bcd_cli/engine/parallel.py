"""Data-parallel BCD (Remark 3 of Zeng et al. 2019) on torch.distributed.

Under ``torchrun`` the samples (columns) are split across the ranks in contiguous
shards: every rank holds its own columns of V and U and solves their blocks alone
(they are separable over samples), while every rank holds the same W and b. The W-block
needs sums over all samples, [V;1][V;1]^T and U [V;1]^T, which are all-reduced before
the same small system is solved on every rank; sums of the objective and of D_k are
all-reduced as well. Without an initialised process group (one process) every function
here is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    """The number of ranks (1 without torch.distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without torch.distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_reduce_sum_(t: Tensor) -> Tensor:
    """Sums ``t`` over the ranks, in place; returns it."""
    if world_size() > 1:
        dist.all_reduce(t)
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """Whether ``flag`` holds on any rank (every rank gets the same answer)."""
    if world_size() == 1:
        return flag
    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def shard_bounds(n: int) -> list[tuple[int, int]]:
    """The [start, stop) columns of each rank's shard of n samples: contiguous, sizes differing by at most one."""
    size, extra = divmod(n, world_size())
    bounds, start = [], 0
    for r in range(world_size()):
        stop = start + size + (r < extra)
        bounds.append((start, stop))
        start = stop
    return bounds


def local_columns(t: Tensor, n: int | None = None) -> Tensor:
    """This rank's shard of the columns of ``t`` (of ``n`` columns in all); ``t`` itself in one process."""
    if world_size() == 1:
        return t
    start, stop = shard_bounds(t.shape[-1] if n is None else n)[rank()]
    return t[..., start:stop].contiguous()


def gather_columns(t: Tensor, n: int) -> Tensor:
    """The full d x n matrix whose shards (this rank's: ``t``) the ranks hold, on every rank."""
    if world_size() == 1:
        return t
    bounds = shard_bounds(n)
    width = max(stop - start for start, stop in bounds)
    padded = t.new_zeros(*t.shape[:-1], width)
    padded[..., : t.shape[-1]] = t
    pieces = [torch.empty_like(padded) for _ in bounds]
    dist.all_gather(pieces, padded)
    return torch.cat([p[..., : stop - start] for p, (start, stop) in zip(pieces, bounds, strict=True)], dim=-1)


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (CUDA), so that a timer read next measures it; nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
