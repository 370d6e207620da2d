"""Transformer building blocks shared by every imgtx model: the Image Transformer, the
super-resolution encoder-decoder and the GAN generators and discriminators.

Shapes: B batch, N positions, D model width, Nc context (encoder) positions, C conditioning width.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from imgtx.attention import Full, KVCache, MultiHeadAttention, Pattern

__all__ = [
    "ConditionalNorm",
    "FeedForward",
    "LearnedPositions2D",
    "NORM_TYPES",
    "PixelNorm",
    "TransformerLayer",
    "make_norm",
    "sinusoid_positions_2d",
]

NORM_PLACEMENTS = ("post", "pre")
NORM_TYPES = ("layer", "pixel", "none", "conditional")
ACTIVATIONS = ("relu", "gelu", "leaky_relu")
RESIDUALS = ("identity", "projection")
BRANCH_ACTIVATIONS = (None, "leaky_relu")
TRUNK_NORMS = ("none", "conditional")
LEAKY_SLOPE = 0.2  # TransGAN's and STrans' LeakyReLU slope


def _check_choice(name: str, value, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r}; expected one of {allowed}")


# --------------------------------------------------------------------------------------------
# Positions
# --------------------------------------------------------------------------------------------


def sinusoid_positions_2d(rows: int, cols: int, dim: int) -> torch.Tensor:
    """T2T ``add_timing_signal_nd`` for a 2D grid: half the channels encode the row, half the
    column, each with sin/cos at timescales 1..1e4. Returns ``(rows*cols, dim)`` in raster order."""
    quarter = dim // 4
    log_increment = math.log(1e4) / max(quarter - 1, 1)
    inv_timescales = torch.exp(-log_increment * torch.arange(quarter, dtype=torch.float64))

    def signal(length: int) -> torch.Tensor:
        scaled = torch.arange(length, dtype=torch.float64)[:, None] * inv_timescales[None, :]
        return torch.cat([scaled.sin(), scaled.cos()], dim=1)  # (length, dim/2)

    row = signal(rows)[:, None, :].expand(rows, cols, 2 * quarter)
    col = signal(cols)[None, :, :].expand(rows, cols, 2 * quarter)
    out = torch.cat([row, col], dim=-1).reshape(rows * cols, 4 * quarter)
    return nn.functional.pad(out, (0, dim - 4 * quarter)).float()


class LearnedPositions2D(nn.Module):
    """Per-axis learned position tables, summed (T2T ``add_positional_embedding_nd``)."""

    def __init__(self, rows: int, cols: int, dim: int) -> None:
        super().__init__()
        self.rows = nn.Parameter(torch.randn(rows, 1, dim) * dim**-0.5)
        self.cols = nn.Parameter(torch.randn(1, cols, dim) * dim**-0.5)

    def forward(self) -> torch.Tensor:
        return (self.rows + self.cols).flatten(0, 1)  # (rows*cols, D) raster order


# --------------------------------------------------------------------------------------------
# Norms
# --------------------------------------------------------------------------------------------


class PixelNorm(nn.Module):
    """``x / sqrt(mean(x^2 over D) + 1e-8)``, no parameters: ProGAN's pixelwise feature
    normalisation (Karras et al. 2018, Sec. 4.2), TransGAN's "modified normalisation"."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(..., D)``."""
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-8)


class ConditionalNorm(nn.Module):
    """Affine-free LayerNorm, then ``x_hat * (1 + gamma(c)) + beta(c)``.

    ``gamma, beta`` come from one ``Linear(cond_dim, 2 * dim)`` initialised to zero, so a fresh
    norm equals the affine-free LayerNorm (AdaLN-Zero style; STrans-G's AdaNorm, Xu et al. 2021).
    """

    def __init__(self, dim: int, cond_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.to_scale_shift = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.to_scale_shift.weight)
        nn.init.zeros_(self.to_scale_shift.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, N, D)``, ``cond`` ``(B, C)`` -> ``(B, N, D)``."""
        gamma, beta = self.to_scale_shift(cond)[:, None, :].chunk(2, dim=-1)  # (B, 1, D) each
        return self.norm(x) * (1 + gamma) + beta


def make_norm(norm_type: str, dim: int, eps: float = 1e-6,
              cond_dim: int | None = None) -> nn.Module:
    """A norm over the last dim: ``layer`` (LayerNorm), ``pixel`` (:class:`PixelNorm`), ``none``
    (identity) or ``conditional`` (:class:`ConditionalNorm`, needs ``cond_dim``)."""
    _check_choice("norm_type", norm_type, NORM_TYPES)
    if norm_type == "layer":
        return nn.LayerNorm(dim, eps=eps)
    if norm_type == "pixel":
        return PixelNorm()
    if norm_type == "none":
        return nn.Identity()
    if cond_dim is None:
        raise ValueError("a conditional norm needs cond_dim, the width of the conditioning vector")
    return ConditionalNorm(dim, cond_dim, eps)


def _apply_norm(norm: nn.Module, x: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
    return norm(x, cond) if isinstance(norm, ConditionalNorm) else norm(x)


# --------------------------------------------------------------------------------------------
# Feed-forward and the layer
# --------------------------------------------------------------------------------------------


def _activation(name: str) -> nn.Module:
    _check_choice("activation", name, ACTIVATIONS)
    return {"relu": nn.ReLU, "gelu": nn.GELU,
            "leaky_relu": lambda: nn.LeakyReLU(LEAKY_SLOPE)}[name]()


class FeedForward(nn.Module):
    """Position-wise ``fc1: Linear(D, F) -> activation -> dropout -> fc2: Linear(F, D)``."""

    def __init__(self, dim: int, hidden: int, activation: str = "relu",
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = _activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., D)`` -> ``(..., D)``."""
        return self.fc2(self.dropout(self.act(self.fc1(x))))


def _skip(residual: str, dim: int) -> nn.Module:
    _check_choice("residual", residual, RESIDUALS)
    return nn.Identity() if residual == "identity" else nn.Linear(dim, dim)


#: Every option of :class:`TransformerLayer` that its fused decoding step
#: (:class:`imgtx.fused_step.FusedStep`) reproduces, with the values it reproduces (None: any).
#: A layer built with an option missing here, or with a value not listed, declines to fuse
#: (``layer.fusable`` is False) and decodes with :meth:`TransformerLayer.step`; so a new option
#: is never fused until it is added here, and tests/test_fused_step.py checks every combination.
#: Dropout is listed as any value: the fused step runs only in eval mode, where it is identity.
FUSABLE_OPTIONS: dict[str, tuple | None] = {
    "dim": None, "heads": None, "ffn_size": None, "pattern": None, "attention_size": None,
    "context_dim": None, "dropout": None, "attention_dropout": None, "norm": NORM_PLACEMENTS,
    "norm_type": ("layer",), "eps": None, "activation": ACTIVATIONS, "residual": ("identity",),
    "branch_activation": (None,), "trunk_norm": ("none",), "cond_dim": None, "qkv_bias": None,
    "backend": None,
}


def _fusable(options: dict) -> bool:
    """Whether every option (name -> value) is one :data:`FUSABLE_OPTIONS` allows."""
    return all(name in FUSABLE_OPTIONS and (FUSABLE_OPTIONS[name] is None
                                            or value in FUSABLE_OPTIONS[name])
               for name, value in options.items())


# Key names of checkpoints saved before the sub-layers had names (imgtx <= 0.1.0).
_LEGACY_PREFIXES = {"self_attn.": "attn.", "ffn.net.0.": "ffn.fc1.", "ffn.net.3.": "ffn.fc2."}


class TransformerLayer(nn.Module):
    """Self-attention over a pattern, optional cross-attention to a context, then an FFN.

    Each sub-layer ``f`` (``attn``, ``cross``, ``ffn``) is wrapped as

    * ``norm="post"``: ``x = norm(skip(x) + dropout(act_b(f(x))))`` - T2T's "dan"
      post-processing (dropout, add, LayerNorm eps 1e-6; ``common_layers.layer_postprocess``);
    * ``norm="pre"``: ``x = skip(x) + dropout(act_b(f(norm(x))))``;

    then, with ``trunk_norm="conditional"``, ``x = trunk_norm(x, cond)``. Defaults reproduce the
    Image Transformer's layer. Every sub-layer is position-wise apart from attention, so
    :meth:`step` (one new position, KV-cached) equals :meth:`forward`.

    Args:
        dim, heads, ffn_size: model width D, attention heads, FFN hidden width.
        pattern: the self-attention pattern (:mod:`imgtx.attention.patterns`).
        attention_size: total q/k/v width over heads (default D).
        context_dim: adds cross-attention (pattern Full) to a context of this width.
        dropout: on each sub-layer's branch; attention_dropout: on the attention weights.
        norm: placement, ``"post"`` | ``"pre"``.
        norm_type: ``"layer"`` | ``"pixel"`` | ``"none"`` | ``"conditional"`` (see
            :func:`make_norm`).
        eps: LayerNorm epsilon.
        activation: FFN activation, ``"relu"`` | ``"gelu"`` | ``"leaky_relu"`` (slope 0.2).
        residual: ``"identity"`` | ``"projection"``: a learned ``Linear(D, D)`` on each shortcut
            (STrans-D's skip projection, Xu et al. 2021).
        branch_activation: None | ``"leaky_relu"`` on each branch before the add (STrans-D).
        trunk_norm: ``"none"`` | ``"conditional"``: a :class:`ConditionalNorm` on the trunk
            after each residual add (STrans-G's AdaNorm-T).
        cond_dim: width C of ``cond`` when any conditional norm is used.
        qkv_bias: biases in the q/k/v projections.
        backend: attention backend (see :func:`imgtx.attention.attend`).

    ``fusable``: whether :class:`imgtx.fused_step.FusedStep` reproduces this layer's decoding
    step (decided in ``__init__`` from :data:`FUSABLE_OPTIONS`).

    Set ``record_ratios = True`` to store ``||branch|| / ||shortcut||`` (Frobenius over the
    batch) of each sub-layer in ``last_ratios`` (keys ``attn``, ``cross``, ``ffn``) on every
    :meth:`forward`: STrans' diagnostic of how much each residual branch contributes.
    """

    def __init__(self, dim: int, heads: int, ffn_size: int, pattern: Pattern, *,
                 attention_size: int | None = None, context_dim: int | None = None,
                 dropout: float = 0.0, attention_dropout: float = 0.0, norm: str = "post",
                 norm_type: str = "layer", eps: float = 1e-6, activation: str = "relu",
                 residual: str = "identity", branch_activation: str | None = None,
                 trunk_norm: str = "none", cond_dim: int | None = None, qkv_bias: bool = False,
                 backend: str = "auto") -> None:
        options = {name: value for name, value in locals().items()
                   if name not in ("self", "__class__")}  # every argument, by name
        super().__init__()
        self.fusable = _fusable(options)
        _check_choice("norm", norm, NORM_PLACEMENTS)
        _check_choice("branch_activation", branch_activation, BRANCH_ACTIVATIONS)
        _check_choice("trunk_norm", trunk_norm, TRUNK_NORMS)
        self.pre_norm = norm == "pre"
        self.needs_cond = "conditional" in (norm_type, trunk_norm)
        attention = dict(attn_dim=attention_size, dropout=attention_dropout, qkv_bias=qkv_bias,
                         backend=backend)
        # Registration order (attn, cross_attn, ffn) fixes which random numbers each Linear
        # draws at construction.
        self.attn_norm = make_norm(norm_type, dim, eps, cond_dim)
        self.attn = MultiHeadAttention(dim, heads, pattern, **attention)
        self.attn_skip = _skip(residual, dim)
        self.cross_norm = self.cross_attn = self.cross_skip = None
        if context_dim is not None:
            self.cross_norm = make_norm(norm_type, dim, eps, cond_dim)
            self.cross_attn = MultiHeadAttention(dim, heads, Full(), context_dim=context_dim,
                                                 **attention)
            self.cross_skip = _skip(residual, dim)
        self.ffn_norm = make_norm(norm_type, dim, eps, cond_dim)
        self.ffn = FeedForward(dim, ffn_size, activation)
        self.ffn_skip = _skip(residual, dim)
        self.attn_trunk_norm = self.cross_trunk_norm = self.ffn_trunk_norm = None
        if trunk_norm == "conditional":
            self.attn_trunk_norm = make_norm("conditional", dim, eps, cond_dim)
            if context_dim is not None:
                self.cross_trunk_norm = make_norm("conditional", dim, eps, cond_dim)
            self.ffn_trunk_norm = make_norm("conditional", dim, eps, cond_dim)
        self.branch_activation = (nn.LeakyReLU(LEAKY_SLOPE) if branch_activation == "leaky_relu"
                                  else None)
        self.dropout = nn.Dropout(dropout)
        self.record_ratios = False
        self.last_ratios: dict[str, float] = {}

    # -- sub-layers ----------------------------------------------------------------------------

    def _sublayer(self, name: str, x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor],
                  cond: torch.Tensor | None) -> torch.Tensor:
        norm = getattr(self, f"{name}_norm")
        branch = fn(_apply_norm(norm, x, cond) if self.pre_norm else x)
        if self.branch_activation is not None:
            branch = self.branch_activation(branch)
        branch = self.dropout(branch)
        shortcut = getattr(self, f"{name}_skip")(x)
        if self.record_ratios:
            ratio = branch.detach().norm() / shortcut.detach().norm()
            self.last_ratios[name] = float(ratio)
        x = shortcut + branch
        if not self.pre_norm:
            x = _apply_norm(norm, x, cond)
        trunk = getattr(self, f"{name}_trunk_norm")
        return x if trunk is None else trunk(x, cond)

    def _check_cond(self, cond: torch.Tensor | None) -> None:
        if self.needs_cond and cond is None:
            raise ValueError("this layer has a conditional norm: pass cond (B, cond_dim)")

    def _tail(self, x: torch.Tensor, context_kv, cond: torch.Tensor | None) -> torch.Tensor:
        if self.cross_attn is not None:
            if context_kv is None:
                raise ValueError("this layer has cross-attention: pass the context's keys/values")
            x = self._sublayer("cross", x, lambda h: self.cross_attn(h, context_kv=context_kv),
                               cond)
        return self._sublayer("ffn", x, self.ffn, cond)

    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention keys/values for ``context`` ``(B, Nc, Dc)``, computed once."""
        return self.cross_attn.context_kv(context)

    def forward(self, x: torch.Tensor, context_kv=None, *, bias: torch.Tensor | None = None,
                cond: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, N, D)`` -> ``(B, N, D)``.

        ``context_kv``: :meth:`context_kv` of the context, for layers with cross-attention.
        ``bias``: additive self-attention bias, see :func:`imgtx.attention.attend` (for Window
        patterns window-local, e.g. ``RelativePositionBias()`` ``(H, w*w, w*w)``).
        ``cond``: ``(B, cond_dim)`` for layers with a conditional norm.
        """
        self._check_cond(cond)
        x = self._sublayer("attn", x, lambda h: self.attn(h, bias=bias), cond)
        return self._tail(x, context_kv, cond)

    def step(self, x: torch.Tensor, cache: KVCache, context_kv=None, *,
             cond: torch.Tensor | None = None) -> torch.Tensor:
        """The next position only: ``x`` ``(B, 1, D)`` -> ``(B, 1, D)``."""
        self._check_cond(cond)
        x = self._sublayer("attn", x, lambda h: self.attn.step(h, cache), cond)
        return self._tail(x, context_kv, cond)

    # -- checkpoints saved before the sub-layers had names -------------------------------------

    def upgrade_state_dict(self, state_dict: dict, prefix: str = "") -> None:
        """Rename, in place, this layer's keys of an old checkpoint (``self_attn``,
        ``norms.0/1/2``, ``ffn.net.0/3``) to today's (``attn``, ``attn_norm`` / ``cross_norm`` /
        ``ffn_norm``, ``ffn.fc1/fc2``). ``prefix`` is this layer's name in the model plus a dot.
        """
        norms = ["attn_norm"] + (["cross_norm"] if self.cross_attn is not None else []) + \
            ["ffn_norm"]
        renames = dict(_LEGACY_PREFIXES)
        renames.update({f"norms.{i}.": f"{name}." for i, name in enumerate(norms)})
        for key in [k for k in state_dict if k.startswith(prefix)]:
            rest = key[len(prefix):]
            for old, new in renames.items():
                if rest.startswith(old):
                    state_dict[prefix + new + rest[len(old):]] = state_dict.pop(key)
                    break

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        self.upgrade_state_dict(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
