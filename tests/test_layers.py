"""Spec for imgtx.transformer.TransformerLayer: its defaults are the old layer exactly, old
checkpoints load, and each option (norms, activations, residuals, trunk norm, bias, ratios) does
what its docstring says, in forward and in the KV-cached step."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from imgtx.attention import Causal, Full, Local1D, MultiHeadAttention, RelativePositionBias, Window
from imgtx.attention.backends import reference_attention
from imgtx.transformer import ConditionalNorm, PixelNorm, TransformerLayer, make_norm

torch.set_num_threads(1)

D, HEADS, FFN, DC, C = 16, 2, 24, 12, 6


# --------------------------------------------------------------------------------------------
# A frozen copy of the layer as it was at commit bab5406 (norms as an index list, fixed ReLU).
# --------------------------------------------------------------------------------------------


class OldFeedForward(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(0.0),
                                 nn.Linear(hidden, dim))

    def forward(self, x):
        return self.net(x)


class OldTransformerLayer(nn.Module):
    def __init__(self, dim, heads, ffn_size, pattern, *, context_dim=None, norm="post",
                 eps=1e-6):
        super().__init__()
        self.pre_norm = norm == "pre"
        self.self_attn = MultiHeadAttention(dim, heads, pattern)
        self.cross_attn = None
        if context_dim is not None:
            self.cross_attn = MultiHeadAttention(dim, heads, Full(), context_dim=context_dim)
        self.ffn = OldFeedForward(dim, ffn_size)
        count = 3 if context_dim is not None else 2
        self.norms = nn.ModuleList(nn.LayerNorm(dim, eps=eps) for _ in range(count))
        self.dropout = nn.Dropout(0.0)

    def _sublayer(self, x, index, fn):
        norm = self.norms[index]
        if self.pre_norm:
            return x + self.dropout(fn(norm(x)))
        return norm(x + self.dropout(fn(x)))

    def _tail(self, x, context_kv):
        if self.cross_attn is not None:
            x = self._sublayer(x, 1, lambda h: self.cross_attn(h, context_kv=context_kv))
        return self._sublayer(x, len(self.norms) - 1, self.ffn)

    def forward(self, x, context_kv=None):
        return self._tail(self._sublayer(x, 0, self.self_attn), context_kv)

    def step(self, x, cache, context_kv=None):
        return self._tail(self._sublayer(x, 0, lambda h: self.self_attn.step(h, cache)),
                          context_kv)


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values in every parameter (norm gains and biases too), so nothing is trivially 1/0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    return module.eval()


def inputs(batch=2, n=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, n, D, generator=g), torch.randn(batch, 5, DC, generator=g),
            torch.randn(batch, C, generator=g))


# --------------------------------------------------------------------------------------------
# defaults == the old layer; old checkpoints load
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("with_context", [False, True])
def test_defaults_reproduce_the_old_layer_and_load_its_checkpoints(norm, with_context):
    context_dim = DC if with_context else None
    old = randomise(OldTransformerLayer(D, HEADS, FFN, Local1D(4), context_dim=context_dim,
                                        norm=norm))
    new = TransformerLayer(D, HEADS, FFN, Local1D(4), context_dim=context_dim, norm=norm).eval()
    old_state = old.state_dict()
    assert any(k.startswith("norms.") for k in old_state)
    new.load_state_dict(old_state, strict=True)  # legacy keys renamed on load
    assert not any(k.startswith(("norms.", "self_attn.")) for k in new.state_dict())
    x, context, _ = inputs()
    with torch.no_grad():
        kv_old = old.cross_attn.context_kv(context) if with_context else None
        kv_new = new.context_kv(context) if with_context else None
        assert torch.equal(new(x, kv_new), old(x, kv_old))
        cache_old, cache_new = (layer.new_cache(2, x.shape[1]) for layer in
                                (old.self_attn, new.attn))
        for t in range(x.shape[1]):
            step_old = old.step(x[:, t : t + 1], cache_old, kv_old)
            step_new = new.step(x[:, t : t + 1], cache_new, kv_new)
            assert torch.equal(step_new, step_old)


def test_upgrade_state_dict_names_every_old_key():
    old = OldTransformerLayer(D, HEADS, FFN, Causal(), context_dim=DC)
    new = TransformerLayer(D, HEADS, FFN, Causal(), context_dim=DC)
    state = {f"layers.3.{k}": v for k, v in old.state_dict().items()}
    state["head.weight"] = torch.zeros(1)
    new.upgrade_state_dict(state, "layers.3.")
    assert set(state) == {f"layers.3.{k}" for k in new.state_dict()} | {"head.weight"}
    assert torch.equal(state["layers.3.cross_norm.weight"], old.norms[1].weight)
    assert torch.equal(state["layers.3.ffn_norm.weight"], old.norms[2].weight)
    assert torch.equal(state["layers.3.ffn.fc2.weight"], old.ffn.net[3].weight)


def test_submodules_have_names():
    layer = TransformerLayer(D, HEADS, FFN, Causal(), context_dim=DC, residual="projection",
                             trunk_norm="conditional", cond_dim=C)
    names = dict(layer.named_children())
    for name in ("attn_norm", "attn", "attn_skip", "cross_norm", "cross_attn", "cross_skip",
                 "ffn_norm", "ffn", "ffn_skip", "attn_trunk_norm", "ffn_trunk_norm", "dropout"):
        assert name in names, name
    assert isinstance(layer.attn_skip, nn.Linear)
    plain = TransformerLayer(D, HEADS, FFN, Causal())
    assert isinstance(plain.attn_skip, nn.Identity) and plain.cross_attn is None
    assert plain.attn_trunk_norm is None


# --------------------------------------------------------------------------------------------
# each option against a hand-written reference
# --------------------------------------------------------------------------------------------


def reference_layer(layer: TransformerLayer, x, cond, *, norm_fn, act, branch_act, skip, trunk,
                    bias=None):
    """The layer's maths written out for the no-context case, attention in float64."""

    def attention(h):
        mha = layer.attn
        q = mha._split(mha.to_q(h))
        k, v = (mha._split(t) for t in mha.to_kv(h).chunk(2, dim=-1))
        return mha._merge(reference_attention(q, k, v, mha.pattern, bias).float())

    def ffn(h):
        return layer.ffn.fc2(act(layer.ffn.fc1(h)))

    for name, fn in (("attn", attention), ("ffn", ffn)):
        norm = getattr(layer, f"{name}_norm")
        if layer.pre_norm:
            x = skip(name, x) + branch_act(fn(norm_fn(norm, x, cond)))
        else:
            x = norm_fn(norm, skip(name, x) + branch_act(fn(x)), cond)
        x = trunk(name, x, cond)
    return x


def layer_norm(norm, x, cond):
    return nn.functional.layer_norm(x, x.shape[-1:], norm.weight, norm.bias, 1e-6)


def test_pixel_norm_is_x_over_its_rms_and_has_no_parameters():
    x = torch.randn(3, 4, D)
    rms = x.pow(2).mean(-1, keepdim=True).add(1e-8).sqrt()
    assert torch.allclose(PixelNorm()(x), x / rms, atol=1e-6)
    assert not list(PixelNorm().parameters())


def test_conditional_norm_starts_as_the_affine_free_norm_and_then_scales_and_shifts():
    norm = ConditionalNorm(D, C)
    x, _, cond = inputs()
    plain = nn.functional.layer_norm(x, (D,), eps=1e-6)
    assert torch.allclose(norm(x, cond), plain, atol=1e-6)
    with torch.no_grad():
        norm.to_scale_shift.weight.normal_()
        norm.to_scale_shift.bias.normal_()
    gamma, beta = (cond @ norm.to_scale_shift.weight.T + norm.to_scale_shift.bias).chunk(2, -1)
    expected = plain * (1 + gamma[:, None]) + beta[:, None]
    assert torch.allclose(norm(x, cond), expected, atol=1e-5)


def test_make_norm_choices_and_errors():
    assert isinstance(make_norm("layer", D), nn.LayerNorm)
    assert isinstance(make_norm("none", D), nn.Identity)
    with pytest.raises(ValueError, match="cond_dim"):
        make_norm("conditional", D)
    with pytest.raises(ValueError, match="norm_type"):
        make_norm("batch", D)


@pytest.mark.parametrize("norm", ["post", "pre"])
@pytest.mark.parametrize("option", ["gelu", "leaky", "pixel", "none-norm", "projection",
                                    "branch", "conditional", "trunk", "strans-d"])
def test_each_option_matches_its_reference(norm, option):
    kwargs = {
        "gelu": dict(activation="gelu"),
        "leaky": dict(activation="leaky_relu"),
        "pixel": dict(norm_type="pixel"),
        "none-norm": dict(norm_type="none"),
        "projection": dict(residual="projection"),
        "branch": dict(branch_activation="leaky_relu"),
        "conditional": dict(norm_type="conditional", cond_dim=C),
        "trunk": dict(trunk_norm="conditional", cond_dim=C),
        "strans-d": dict(residual="projection", branch_activation="leaky_relu",
                         activation="gelu"),
    }[option]
    layer = randomise(TransformerLayer(D, HEADS, FFN, Causal(), norm=norm, **kwargs), seed=2)
    x, _, cond = inputs()
    act = {"relu": torch.relu, "gelu": nn.functional.gelu,
           "leaky_relu": lambda h: nn.functional.leaky_relu(h, 0.2)}[kwargs.get("activation",
                                                                               "relu")]
    norm_type = kwargs.get("norm_type", "layer")

    def norm_fn(module, h, c):
        if norm_type == "pixel":
            return h * h.pow(2).mean(-1, keepdim=True).add(1e-8).rsqrt()
        if norm_type == "none":
            return h
        if norm_type == "conditional":
            gamma, beta = module.to_scale_shift(c)[:, None].chunk(2, -1)
            return nn.functional.layer_norm(h, (D,), eps=1e-6) * (1 + gamma) + beta
        return layer_norm(module, h, c)

    def skip(name, h):
        return getattr(layer, f"{name}_skip")(h) if kwargs.get("residual") else h

    def trunk(name, h, c):
        if not kwargs.get("trunk_norm"):
            return h
        module = getattr(layer, f"{name}_trunk_norm")
        gamma, beta = module.to_scale_shift(c)[:, None].chunk(2, -1)
        return nn.functional.layer_norm(h, (D,), eps=1e-6) * (1 + gamma) + beta

    def branch_act(h):
        return nn.functional.leaky_relu(h, 0.2) if kwargs.get("branch_activation") else h

    with torch.no_grad():
        out = layer(x, cond=cond)
        expected = reference_layer(layer, x, cond, norm_fn=norm_fn, act=act,
                                   branch_act=branch_act, skip=skip, trunk=trunk)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(norm="pre", norm_type="conditional", cond_dim=C, residual="projection"),
    dict(norm="post", trunk_norm="conditional", cond_dim=C, branch_activation="leaky_relu",
         activation="gelu", context_dim=DC),
    dict(norm="pre", norm_type="pixel", activation="leaky_relu", context_dim=DC),
])
def test_step_equals_forward_for_every_option(kwargs):
    layer = randomise(TransformerLayer(D, HEADS, FFN, Local1D(3), **kwargs), seed=3)
    x, context, cond = inputs(n=10)
    with torch.no_grad():
        kv = layer.context_kv(context) if "context_dim" in kwargs else None
        full = layer(x, kv, cond=cond)
        cache = layer.attn.new_cache(2, 10)
        steps = torch.cat([layer.step(x[:, t : t + 1], cache, kv, cond=cond)
                           for t in range(10)], dim=1)
    assert torch.allclose(steps, full, rtol=1e-5, atol=1e-5)


def test_a_window_bias_reaches_the_attention():
    window = Window(4, 4, 2)
    layer = randomise(TransformerLayer(D, HEADS, FFN, window, norm="pre"), seed=4)
    bias = RelativePositionBias(2, HEADS)
    with torch.no_grad():
        bias.table.normal_()
    x = torch.randn(2, 16, D)
    with torch.no_grad():
        out = layer(x, bias=bias())
        expected = reference_layer(
            layer, x, None, norm_fn=layer_norm, act=torch.relu, branch_act=lambda h: h,
            skip=lambda name, h: h, trunk=lambda name, h, c: h, bias=bias())
        without = layer(x)
    assert (out - expected).abs().max() <= 1e-5
    assert (out - without).abs().max() > 1e-3


def test_conditional_layers_need_cond():
    layer = TransformerLayer(D, HEADS, FFN, Causal(), trunk_norm="conditional", cond_dim=C)
    x, _, cond = inputs()
    with pytest.raises(ValueError, match="pass cond"):
        layer(x)
    assert layer(x, cond=cond).shape == x.shape
    with pytest.raises(ValueError, match="cond_dim"):
        TransformerLayer(D, HEADS, FFN, Causal(), norm_type="conditional")
    for bad in (dict(activation="swish"), dict(residual="dense"), dict(norm="sandwich"),
                dict(branch_activation="relu"), dict(trunk_norm="layer")):
        with pytest.raises(ValueError, match="expected one of"):
            TransformerLayer(D, HEADS, FFN, Causal(), **bad)


def test_record_ratios_stores_branch_over_shortcut_norms():
    layer = randomise(TransformerLayer(D, HEADS, FFN, Causal(), context_dim=DC, norm="pre"))
    x, context, _ = inputs()
    kv = layer.context_kv(context)
    with torch.no_grad():
        layer(x, kv)
        assert layer.last_ratios == {}
        layer.record_ratios = True
        layer(x, kv)
        attn_branch = layer.attn(layer.attn_norm(x))
    assert set(layer.last_ratios) == {"attn", "cross", "ffn"}
    assert all(isinstance(v, float) for v in layer.last_ratios.values())
    expected = (attn_branch.norm() / x.norm()).item()
    assert layer.last_ratios["attn"] == pytest.approx(expected, rel=1e-5)
