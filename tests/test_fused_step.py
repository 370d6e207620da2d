"""The fused decoding step is derived from the layer: for every combination of
:class:`~imgtx.transformer.TransformerLayer` options, either the layer declines to fuse (and
:class:`~imgtx.fused_step.FusedStep` refuses it) or the fused step equals ``TransformerLayer.step``
position by position."""

from __future__ import annotations

import itertools

import pytest
import torch

import imgtx.transformer as transformer
from imgtx.attention import Causal, Local1D
from imgtx.fused_step import FusedStep
from imgtx.transformer import (
    ACTIVATIONS,
    BRANCH_ACTIVATIONS,
    NORM_PLACEMENTS,
    NORM_TYPES,
    RESIDUALS,
    TRUNK_NORMS,
    TransformerLayer,
)

DIM, COND, LENGTH, BATCH = 8, 4, 5, 2
CHOICES = list(itertools.product(NORM_PLACEMENTS, ACTIVATIONS, RESIDUALS, BRANCH_ACTIVATIONS,
                                 TRUNK_NORMS, (False, True)))


def build(norm_type: str, cross: bool, norm: str, activation: str, residual: str,
          branch_activation: str | None, trunk_norm: str, qkv_bias: bool) -> TransformerLayer:
    torch.manual_seed(0)
    layer = TransformerLayer(DIM, 2, 12, Local1D(2), norm=norm, norm_type=norm_type,
                             activation=activation, residual=residual,
                             branch_activation=branch_activation, trunk_norm=trunk_norm,
                             cond_dim=COND, qkv_bias=qkv_bias, dropout=0.1,
                             context_dim=6 if cross else None).eval()
    with torch.no_grad():  # conditional norms start at zero: make them do something
        for module in layer.modules():
            if isinstance(module, transformer.ConditionalNorm):
                module.to_scale_shift.weight.normal_()
    return layer


def expected_fusable(norm_type: str, residual: str, branch_activation, trunk_norm: str) -> bool:
    """What the fused step reproduces, written out independently of FUSABLE_OPTIONS."""
    return (norm_type == "layer" and residual == "identity" and branch_activation is None
            and trunk_norm == "none")


@pytest.mark.parametrize("cross", [False, True], ids=["self", "cross"])
@pytest.mark.parametrize("norm_type", NORM_TYPES)
def test_every_option_combination_fuses_exactly_or_declines(norm_type, cross):
    fused_count = 0
    for norm, activation, residual, branch, trunk, bias in CHOICES:
        layer = build(norm_type, cross, norm, activation, residual, branch, trunk, bias)
        assert layer.fusable == expected_fusable(norm_type, residual, branch, trunk)
        if not layer.fusable:
            assert not FusedStep.supports(layer)
            with pytest.raises(ValueError, match="TransformerLayer.step"):
                FusedStep(layer)
            continue
        fused_count += 1
        x = torch.randn(BATCH, LENGTH, DIM)
        cond = torch.randn(BATCH, COND) if layer.needs_cond else None
        with torch.no_grad():
            kv = tuple(t.contiguous() for t in layer.context_kv(torch.randn(BATCH, 3, 6))) \
                if cross else None
            step = FusedStep(layer)
            fused_cache = layer.attn.new_cache(BATCH, LENGTH)
            plain_cache = layer.attn.new_cache(BATCH, LENGTH)
            for t in range(LENGTH):
                got = step(x[:, t], fused_cache, kv)  # (B, D)
                want = layer.step(x[:, t : t + 1], plain_cache, kv, cond=cond)[:, 0]
                assert (got - want).abs().max().item() <= 1e-5, (norm, activation, bias, t)
    # the combinations that fuse: both placements, every activation, with and without biases
    assert fused_count == (12 if norm_type == "layer" else 0)


def test_an_option_missing_from_the_list_is_not_fused(monkeypatch):
    assert TransformerLayer(DIM, 2, 12, Causal()).fusable
    options = dict(transformer.FUSABLE_OPTIONS)
    del options["qkv_bias"]  # as if qkv_bias were a new option nobody listed
    monkeypatch.setattr(transformer, "FUSABLE_OPTIONS", options)
    layer = TransformerLayer(DIM, 2, 12, Causal())
    assert not layer.fusable and not FusedStep.supports(layer)


def test_a_layer_recording_branch_ratios_is_decoded_by_its_own_step():
    layer = TransformerLayer(DIM, 2, 12, Causal())
    layer.record_ratios = True
    assert layer.fusable and not FusedStep.supports(layer)
