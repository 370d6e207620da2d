"""Random draws for the global batch, of which each process keeps its share.

With N processes each holding B images, a per-image random number drawn with ``torch.rand(B)``
on every process gives the processes the same numbers (they share the seed), where one process
with N x B images would have drawn N x B different ones. Drawing for the global batch from the
shared random stream and keeping this process's slice makes N processes x B see exactly what one
process x N B sees, and keeps every process's random stream in step. :meth:`Run.this_process`
does this for tensors a step makes itself; these functions do it where no run is at hand (a
loss, an augmentation, a layer), from ``torch.distributed``'s world size and rank (one process
when it is not initialised).
"""

from __future__ import annotations

import torch

__all__ = ["process_share", "rand_for_batch", "randn_for_batch", "randint_for_batch"]


def process_share() -> tuple[int, int]:
    """``(number of processes, this process's index)``: ``(1, 0)`` outside a process group."""
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        return distributed.get_world_size(), distributed.get_rank()
    return 1, 0


def _share(draw, batch: int, shape: tuple[int, ...]) -> torch.Tensor:
    processes, index = process_share()
    values = draw((batch * processes, *shape))  # (N B, *shape): the global batch's draws
    return values[index * batch : (index + 1) * batch]  # (B, *shape)


def rand_for_batch(batch: int, *shape: int, **kwargs) -> torch.Tensor:
    """``torch.rand(batch, *shape, **kwargs)`` as this process's share of the global batch."""
    return _share(lambda size: torch.rand(size, **kwargs), batch, shape)


def randn_for_batch(batch: int, *shape: int, **kwargs) -> torch.Tensor:
    """``torch.randn(batch, *shape, **kwargs)`` as this process's share of the global batch."""
    return _share(lambda size: torch.randn(size, **kwargs), batch, shape)


def randint_for_batch(low: int, high: int, batch: int, *shape: int, **kwargs) -> torch.Tensor:
    """``torch.randint(low, high, (batch, *shape), **kwargs)`` as this process's share."""
    return _share(lambda size: torch.randint(low, high, size, **kwargs), batch, shape)
