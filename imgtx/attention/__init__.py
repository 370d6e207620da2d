"""The shared attention core: patterns (what to attend to), backends (how), KV caches.

>>> from imgtx.attention import attend, Local1D
>>> out = attend(q, k, v, Local1D(block=256))          # (B, H, N, E)

Each pattern owns its dense mask, its blocked layout and its cache kind
(:mod:`imgtx.attention.patterns`); the backends (:mod:`imgtx.attention.backends`) only run kernels
on blocks; :func:`set_backend` picks the backend of a whole model at run time.
"""

from imgtx.attention.backends import (
    BACKENDS,
    BackendUnavailable,
    attend,
    available_backends,
    reference_attention,
    resolve_backend,
)
from imgtx.attention.cache import KVCache, make_cache
from imgtx.attention.layers import MultiHeadAttention, RelativePositionBias, set_backend
from imgtx.attention.patterns import (
    Causal,
    Full,
    Local1D,
    Local2D,
    Pattern,
    block_raster_to_raster,
    raster_to_block_raster,
)
from imgtx.attention.windows import Window, shifted_window

__all__ = [
    "BACKENDS",
    "BackendUnavailable",
    "Causal",
    "Full",
    "KVCache",
    "Local1D",
    "Local2D",
    "MultiHeadAttention",
    "Pattern",
    "RelativePositionBias",
    "Window",
    "attend",
    "available_backends",
    "block_raster_to_raster",
    "make_cache",
    "raster_to_block_raster",
    "reference_attention",
    "resolve_backend",
    "set_backend",
    "shifted_window",
]
