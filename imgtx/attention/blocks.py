"""The blocked layout every fast backend computes: a pattern rewritten as many small dense
attention problems, each query block against only its own memory, so that the cost is linear in
the sequence length. Each pattern builds its own :class:`Blocks` (``Pattern.blocks``).

Shapes: B batch, H heads, N sequence length, E head dim, G = B*H folded, nb number of blocks,
Q queries per block, M keys per block.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["Blocks", "fold_bias", "one_block", "causal_mask"]


@dataclass
class Blocks:
    """A pattern rewritten as dense attention over small blocks.

    q ``(G, nb, Q, E)``, k/v ``(G, nb, M, E)``; ``mask`` bool broadcastable to
    ``(G, nb, Q, M)`` or None; ``bias`` float broadcastable likewise or None; ``causal`` means
    plain lower-triangular (each (G, nb) problem a whole sequence, Q=M). ``head``, if set, is a
    leading block computed separately by the same kernel (Local1D's first block, which has no
    previous block); its output is prepended along the block dim. ``restore`` maps the
    ``(G, nb, Q, E)`` output (head included) back to ``(B, H, N, E)``.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    mask: torch.Tensor | None
    bias: torch.Tensor | None
    causal: bool
    restore: Callable[[torch.Tensor], torch.Tensor]
    head: Blocks | None = None


def causal_mask(num_queries: int, num_keys: int, device: torch.device | str = "cpu"
                ) -> torch.Tensor:
    """``(Nq, Nk)`` bool, True where key j <= query i."""
    return torch.ones(num_queries, num_keys, dtype=torch.bool, device=device).tril()


def fold_bias(bias_blocks: torch.Tensor, batch: int, heads: int) -> torch.Tensor:
    """A per-block bias ``(..., nb, Q, M)`` whose leading dims broadcast to ``(B, H)`` ->
    ``(G, nb, Q, M)``."""
    lead = bias_blocks.shape[:-3]
    full = bias_blocks.reshape((1,) * (2 - len(lead)) + tuple(lead) + bias_blocks.shape[-3:])
    return full.expand(batch, heads, *full.shape[-3:]).reshape(batch * heads,
                                                                *full.shape[-3:])


def one_block(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None, *,
              causal: bool) -> Blocks:
    """The whole sequence as one block: full attention, or causal (j <= i) attention.

    Nothing is copied: the heads play the part of the block dim (G = B, nb = H), so q/k/v stay
    the ``(B, H, N, E)`` views the caller split them into, and the bias stays a broadcastable
    view (a per-head ``(H, Nq, Nk)`` bias is not repeated for every sample).
    A causal block with a bias gets an explicit mask: the kernels take ``is_causal`` or an
    additive mask, not both.
    """
    b, h, nq, e = q.shape
    bias4 = None if bias is None else bias.reshape((1,) * (4 - bias.dim()) + bias.shape)
    mask = None
    if causal and bias is not None:
        mask, causal = causal_mask(nq, k.shape[-2], q.device), False
    return Blocks(q, k.expand(b, h, -1, -1), v.expand(b, h, -1, -1), mask, bias4, causal,
                  lambda out: out)
