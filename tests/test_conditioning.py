"""Class conditioning: conditioning vector, AdaNorm-T placements, conditional norm, projection
head."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from imgtx.attention import Full
from imgtx.errors import UserError
from imgtx.gan.conditioning import (
    ClassCondition,
    ProjectionHead,
    adanorm_layer_kwargs,
    check_labels,
)
from imgtx.transformer import ConditionalNorm, TransformerLayer

torch.manual_seed(0)


def test_conditional_norm_with_zero_scale_and_shift_is_affine_free_layer_norm():
    norm = ConditionalNorm(16, 8, eps=1e-6)
    x, cond = torch.randn(3, 5, 16), torch.randn(3, 8)
    for p in norm.parameters():  # make it non-trivial first: the output must now depend on cond
        torch.nn.init.normal_(p)
    assert not torch.allclose(norm(x, cond), F.layer_norm(x, (16,), eps=1e-6), atol=1e-3)
    with torch.no_grad():
        for p in norm.parameters():  # zero scale and shift predictors
            p.zero_()
    torch.testing.assert_close(norm(x, cond), F.layer_norm(x, (16,), eps=1e-6))


def test_conditional_norm_starts_as_plain_norm():
    # zero-initialised predictors: a freshly built conditional layer behaves like an
    # unconditional one until training moves it
    norm = ConditionalNorm(16, 8, eps=1e-6)
    x, cond = torch.randn(2, 4, 16), torch.randn(2, 8)
    torch.testing.assert_close(norm(x, cond), F.layer_norm(x, (16,), eps=1e-6))


@pytest.mark.parametrize("placement, branch, trunk", [
    ("branch", "conditional", "none"), ("trunk", "layer", "conditional"),
    ("both", "conditional", "conditional")])
def test_adanorm_placement_kwargs(placement, branch, trunk):
    kwargs = adanorm_layer_kwargs(placement, cond_dim=12)
    assert (kwargs["norm_type"], kwargs["trunk_norm"], kwargs["cond_dim"]) == (branch, trunk, 12)
    layer = TransformerLayer(16, 2, 32, Full(), norm="pre", **kwargs)
    assert isinstance(layer.attn_norm, ConditionalNorm) == (branch == "conditional")
    assert isinstance(layer.ffn_trunk_norm, ConditionalNorm) == (trunk == "conditional")
    # every placement must let the condition reach the output
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 6, 16)
    out_a, out_b = layer(x, cond=torch.randn(2, 12)), layer(x, cond=torch.randn(2, 12))
    assert (out_a - out_b).abs().max() > 1e-3


def test_adanorm_unconditional_and_unknown_placement():
    assert adanorm_layer_kwargs("both", None) == {"norm_type": "layer", "trunk_norm": "none"}
    with pytest.raises(UserError, match="placement"):
        adanorm_layer_kwargs("middle", 8)


def test_class_condition_concatenates_embedding_and_latent():
    cond = ClassCondition(num_classes=5, embed_dim=3, latent_dim=4)
    z, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    c = cond(z, y)
    assert c.shape == (6, cond.cond_dim) == (6, 7)
    torch.testing.assert_close(c, torch.cat([cond.embed.weight[y], z], dim=1))


def test_class_condition_mlp_width():
    cond = ClassCondition(num_classes=5, embed_dim=3, latent_dim=4, hidden=10)
    c = cond(torch.randn(2, 4), torch.tensor([1, 2]))
    assert c.shape == (2, 10) and cond.cond_dim == 10
    assert not torch.allclose(c[0], cond(torch.randn(2, 4), torch.tensor([3, 2]))[0])


@pytest.mark.parametrize("labels, match", [(None, "pass labels"), (torch.tensor([0, 5]), "in \\[0"),
                                           (torch.tensor([0]), "1 labels for a batch of 2")])
def test_bad_labels_are_user_errors(labels, match):
    with pytest.raises(UserError, match=match):
        check_labels(labels, num_classes=5, batch=2)


def test_unconditional_model_rejects_labels():
    with pytest.raises(UserError, match="unconditional"):
        ProjectionHead(8, num_classes=0)(torch.randn(2, 8), torch.tensor([0, 1]))


def test_projection_head_matches_formula_and_depends_on_label():
    head = ProjectionHead(8, num_classes=4)
    h, y = torch.randn(3, 8), torch.tensor([0, 3, 1])
    expected = h @ head.linear.weight[0] + head.linear.bias + (head.embed.weight[y] * h).sum(1)
    out = head(h, y)
    assert out.shape == (3,)
    torch.testing.assert_close(out, expected)
    other = head(h, torch.tensor([1, 0, 2]))
    assert (out - other).abs().min() > 1e-4
