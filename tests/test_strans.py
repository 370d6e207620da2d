"""STrans-G / STrans-D: Swin blocks against a hand-written reference, skip projections, class
conditioning, Hub round trips, parameter counts and the norm-ratio diagnostics."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

from imgtx.attention import Window
from imgtx.gan.diagnostics import RatioHistory, collect_ratios, recording_ratios
from imgtx.gan.strans import STransDiscriminator, STransGenerator, SwinBlock, Upsample
from imgtx.gan.strans_configs import STRANS_CONFIGS
from imgtx.hub import CheckpointMismatchError, parameter_count
from imgtx.transformer import TransformerLayer


def tiny_g(**overrides):
    return dataclasses.replace(STRANS_CONFIGS["strans-tiny"].config, **overrides)


def tiny_d(**overrides):
    return dataclasses.replace(STRANS_CONFIGS["strans-tiny"].discriminator, **overrides)


def randomise(module: torch.nn.Module, std: float = 0.2) -> None:
    """Non-trivial weights everywhere (zero-initialised conditional norms included)."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, std)


# --------------------------------------------------------------------------------------------
# Swin block == roll + window partition + Swin mask + dense attention, written out by hand
# --------------------------------------------------------------------------------------------


def swin_mask_reference(side: int, window: int, shift: int) -> torch.Tensor:
    """Swin's attention mask, built as in the paper's code: label the three slices of the rolled
    image along each axis, partition into windows, mask pairs with different labels.
    Returns ``(num_windows, w*w, w*w)`` bool, True = visible."""
    labels = torch.zeros(side, side, dtype=torch.long)
    count = 0
    slices = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    for rows in slices:
        for cols in slices:
            labels[rows, cols] = count
            count += 1
    windows = labels.view(side // window, window, side // window, window).permute(0, 2, 1, 3)
    windows = windows.reshape(-1, window * window)
    return windows[:, :, None] == windows[:, None, :]


def swin_block_reference(block: SwinBlock, x: torch.Tensor, side: int, window: int,
                         shift: int) -> torch.Tensor:
    """Pre-norm Swin block: ``x + W-MSA(LN(x))``, then ``+ MLP(LN(.))`` in float64."""
    layer = block.layer
    b, n, d = x.shape
    heads = layer.attn.heads
    e = d // heads
    h = layer.attn_norm(x).view(b, side, side, d)
    h = torch.roll(h, shifts=(-shift, -shift), dims=(1, 2))  # cyclic shift
    h = h.view(b, side // window, window, side // window, window, d).permute(0, 1, 3, 2, 4, 5)
    h = h.reshape(b, -1, window * window, d)  # (B, nw, w*w, D)
    q = layer.attn.to_q(h)
    k, v = layer.attn.to_kv(h).chunk(2, dim=-1)
    q, k, v = (t.view(*t.shape[:-1], heads, e).transpose(-2, -3) for t in (q, k, v))
    # q, k, v: (B, nw, H, w*w, E)
    scores = q @ k.transpose(-1, -2) * e**-0.5 + block.position_bias()  # (B, nw, H, Q, K)
    if shift:
        mask = swin_mask_reference(side, window, shift)[None, :, None]
        scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(-2, -3).reshape(b, -1, window * window, d)
    out = out.view(b, side // window, side // window, window, window, d).permute(0, 1, 3, 2, 4, 5)
    out = torch.roll(out.reshape(b, side, side, d), shifts=(shift, shift), dims=(1, 2))
    x = x + layer.attn.proj(out.reshape(b, n, d))
    return x + layer.ffn(layer.ffn_norm(x))


@pytest.mark.parametrize("side, window, shifted", [(8, 4, False), (8, 4, True), (12, 4, True),
                                                    (16, 8, True)])
def test_swin_block_equals_dense_reference(side, window, shifted):
    block = SwinBlock(16, 2, side, window, shifted, 32, activation="gelu").double()
    randomise(block)
    assert block.shifted == shifted
    x = torch.randn(2, side * side, 16, dtype=torch.float64)
    expected = swin_block_reference(block, x, side, window, window // 2 if shifted else 0)
    torch.testing.assert_close(block(x), expected, rtol=1e-9, atol=1e-9)


def test_shifted_window_mask_matches_swin_slices():
    pattern = Window(12, 12, 4, shift=2)
    torch.testing.assert_close(pattern.window_mask(), swin_mask_reference(12, 4, 2))


def test_window_as_large_as_grid_is_global_and_unshifted():
    block = SwinBlock(16, 2, 4, 8, True, 32)
    assert not block.shifted and block.layer.attn.pattern == Window(4, 4, 4)


# --------------------------------------------------------------------------------------------
# Skip projection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("branch_activation", [None, "leaky_relu"])
def test_identity_skip_projection_equals_plain_residual(branch_activation):
    kwargs = dict(norm="pre", activation="gelu", branch_activation=branch_activation)
    pattern = Window(8, 8, 4, shift=2)
    projected = TransformerLayer(16, 2, 32, pattern, residual="projection", **kwargs).double()
    plain = TransformerLayer(16, 2, 32, pattern, residual="identity", **kwargs).double()
    randomise(projected)
    missing, unexpected = plain.load_state_dict(projected.state_dict(), strict=False)
    assert not missing and all("skip" in name for name in unexpected) and unexpected
    x = torch.randn(2, 64, 16, dtype=torch.float64)
    assert not torch.allclose(projected(x), plain(x))  # random skip weights: different
    with torch.no_grad():
        for skip in (projected.attn_skip, projected.ffn_skip):
            skip.weight.copy_(torch.eye(16))
            skip.bias.zero_()
    torch.testing.assert_close(projected(x), plain(x), rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Generator / discriminator behaviour
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("upsample, noise", [("bilinear", False), ("pixelshuffle", False),
                                             ("norm_bilinear", True)])
def test_generator_shapes_and_gradients(upsample, noise):
    g = STransGenerator(tiny_g(upsample=upsample, noise=noise))
    images = g(torch.randn(3, 16))
    assert images.shape == (3, 3, 16, 16)
    images.square().mean().backward()
    no_grad = [n for n, p in g.named_parameters() if p.grad is None]
    assert not no_grad


def test_norm_bilinear_upsample_interpolates_projected_tokens():
    """``norm_bilinear`` == LayerNorm and Linear per token, then bilinear x2 written out by hand
    (float64): each output token is 9/16, 3/16, 3/16, 1/16 of its four nearest input tokens
    (edge-clamped), so a ramp between tokens stays a ramp. It holds the same parameters as
    ``bilinear``, whose result differs (it renormalises each interpolated token)."""
    torch.manual_seed(0)
    late = Upsample(8, 4, side=3, mode="norm_bilinear").double()
    early = Upsample(8, 4, side=3, mode="bilinear").double()
    assert [n for n, _ in late.named_parameters()] == [n for n, _ in early.named_parameters()]
    early.load_state_dict(late.state_dict())
    x = torch.randn(2, 9, 8, dtype=torch.float64)
    with torch.no_grad():
        late.norm.weight.normal_(1, 0.3)
        late.norm.bias.normal_(0, 0.3)
        late.position_gate.fill_(0.5)
        y = late.proj(late.norm(x)).view(2, 3, 3, 4)  # (B, row, col, out)
    expected = torch.zeros(2, 6, 6, 4, dtype=torch.float64)
    for i in range(6):
        for j in range(6):
            # align_corners=False: output i sits at input coordinate (i + 0.5) / 2 - 0.5
            u, v = (i + 0.5) / 2 - 0.5, (j + 0.5) / 2 - 0.5
            r0, c0 = int(torch.floor(torch.tensor(u))), int(torch.floor(torch.tensor(v)))
            fr, fc = u - r0, v - c0
            for dr, wr in ((0, 1 - fr), (1, fr)):
                for dc, wc in ((0, 1 - fc), (1, fc)):
                    r, c = min(max(r0 + dr, 0), 2), min(max(c0 + dc, 0), 2)
                    expected[:, i, j] += wr * wc * y[:, r, c]
    expected = expected.view(2, 36, 4) + 0.5 * late.sinusoid
    with torch.no_grad():
        torch.testing.assert_close(late(x), expected, rtol=1e-12, atol=1e-12)
        early.load_state_dict(late.state_dict())
        assert (early(x) - expected).abs().max() > 1e-3


def test_noise_inputs_start_silent_and_are_seeded():
    """Noise inputs start at zero strength (the generator equals the noiseless one with the same
    weights); with a strength they change samples, reproducibly for ``generate``'s seed."""
    torch.manual_seed(0)
    plain = STransGenerator(tiny_g()).eval()
    noisy = STransGenerator(tiny_g(noise=True)).eval()
    missing, unexpected = noisy.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(name.startswith("noise.") for name in missing)
    z = torch.randn(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(noisy(z), plain(z))
        for layer in noisy.noise:
            layer.strength.fill_(0.5)
        assert (noisy(z) - plain(z)).abs().max() > 1e-3
        assert (noisy(z) - noisy(z)).abs().max() > 1e-3  # fresh noise each call
    assert torch.equal(noisy.generate(4, seed=3), noisy.generate(4, seed=3))
    assert not torch.equal(noisy.generate(4, seed=3), noisy.generate(4, seed=4))


@pytest.mark.parametrize("placement", ["branch", "trunk", "both"])
def test_conditional_generator_depends_on_label_and_latent(placement):
    g = STransGenerator(tiny_g(num_classes=4, adanorm=placement)).eval()
    randomise(g, 0.1)
    z = torch.randn(2, 16)
    base = g(z, torch.tensor([0, 1]))
    other_label = g(z, torch.tensor([2, 3]))
    other_latent = g(torch.randn(2, 16), torch.tensor([0, 1]))
    assert (base - other_label).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    assert (base - other_latent).abs().amax(dim=(1, 2, 3)).min() > 1e-4


@pytest.mark.parametrize("downsample, residual", [("merge", "projection"), ("avgpool", "identity")])
def test_discriminator_shapes_and_gradients(downsample, residual):
    d = STransDiscriminator(tiny_d(downsample=downsample, residual=residual))
    images = torch.randn(3, 3, 16, 16, requires_grad=True)
    out = d(images)
    assert out.shape == (3,)
    out.sum().backward()
    assert images.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_projection_discriminator_depends_on_label():
    d = STransDiscriminator(tiny_d(num_classes=5)).eval()
    images = torch.randn(2, 3, 16, 16)
    out_a, out_b = d(images, torch.tensor([0, 1])), d(images, torch.tensor([4, 2]))
    assert (out_a - out_b).abs().min() > 1e-5


def test_checkpointing_gives_same_output_and_gradients():
    torch.manual_seed(0)
    g = STransGenerator(tiny_g())
    g_ckpt = STransGenerator(tiny_g(checkpoint_blocks=True))
    g_ckpt.load_state_dict(g.state_dict())
    z = torch.randn(2, 16)
    out, out_ckpt = g(z), g_ckpt(z)
    torch.testing.assert_close(out, out_ckpt)
    out.sum().backward()
    out_ckpt.sum().backward()
    torch.testing.assert_close(g.to_tokens.weight.grad, g_ckpt.to_tokens.weight.grad)


def test_generate_is_deterministic_uint8():
    g = STransGenerator(tiny_g(num_classes=3))
    randomise(g, 0.1)  # fresh conditional norms are zero-initialised: label-blind until trained
    a = g.generate(5, seed=3, batch_size=2)
    assert a.shape == (5, 3, 16, 16) and a.dtype == torch.uint8
    assert torch.equal(a, g.generate(5, seed=3))
    assert not torch.equal(a, g.generate(5, seed=4))
    assert not torch.equal(g.generate(5, labels=0), g.generate(5, labels=1))


# --------------------------------------------------------------------------------------------
# Hub round trips and parameter counts
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, config", [
    (STransGenerator, tiny_g(num_classes=3, cond_hidden=12)),
    (STransDiscriminator, tiny_d(num_classes=3, residual="projection"))])
def test_save_from_pretrained_round_trip_is_strict(tmp_path, cls, config):
    model = cls(config)
    randomise(model)
    model.save_pretrained(tmp_path / "m")
    loaded = cls.from_pretrained(tmp_path / "m")
    assert loaded.config == config
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    other = dataclasses.replace(config, num_classes=0)
    with pytest.raises(CheckpointMismatchError):
        cls.from_pretrained(tmp_path / "m", config=other)


def documented_counts() -> dict[str, tuple[int, int, int]]:
    """``{config: (G params, D params, classes)}`` from the table "Configurations and parameter
    counts" of docs/strans.md (written from ``imgtx gan info --config NAME --json``)."""
    text = (Path(__file__).parents[1] / "docs" / "strans.md").read_text()
    section = text.split("## Configurations and parameter counts", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([\w-]+)` \| [^|]+ \| ([\d,]+) \| ([\d,]+) \| ([\d-]+) \|", section,
                      flags=re.MULTILINE)
    return {name: (int(g.replace(",", "")), int(d.replace(",", "")),
                   0 if classes == "-" else int(classes)) for name, g, d, classes in rows}


def test_the_documented_table_lists_every_config():
    assert sorted(documented_counts()) == sorted(STRANS_CONFIGS)


@pytest.mark.parametrize("name", list(STRANS_CONFIGS))
def test_every_config_has_its_documented_parameter_counts(name):
    """Regression pins: the counts in docs/strans.md (the paper publishes none; these are of
    imgtx's configs, so a change of architecture must update the table)."""
    entry = STRANS_CONFIGS[name]
    with torch.device("meta"):
        g, d = STransGenerator(entry.config), STransDiscriminator(entry.discriminator)
    assert (parameter_count(g), parameter_count(d), entry.config.num_classes) == \
        documented_counts()[name]
    assert entry.config.num_classes == entry.discriminator.num_classes
    assert entry.config.image_size == entry.discriminator.image_size


# --------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------


def test_norm_ratios_are_collected_and_plotted(tmp_path):
    d = STransDiscriminator(tiny_d())
    images = torch.randn(2, 3, 16, 16)
    history = RatioHistory()
    for step in range(3):
        with recording_ratios(d):
            d(images)
        ratios = collect_ratios(d)
        history.record(step, ratios)
    layers = sum(len(stage) for stage in d.stages)
    assert len(ratios) == 2 * layers
    assert set(ratios) == {f"stages.{i}.{j}.{kind}" for i, stage in enumerate(d.stages)
                           for j in range(len(stage)) for kind in ("attn", "ffn")}
    assert all(value > 0 for value in ratios.values())
    # check one ratio by hand: ||attn branch|| / ||input|| of the first block
    block, layer = d.stages[0][0], d.stages[0][0].layer
    with torch.no_grad():
        x = d.stem(images).flatten(2).transpose(1, 2)  # (B, N, D) input of the first block
        attn = layer.attn(layer.attn_norm(x), bias=block.position_bias())
        expected = torch.nn.functional.leaky_relu(attn, 0.2).norm() / layer.attn_skip(x).norm()
    assert ratios["stages.0.0.attn"] == pytest.approx(float(expected), rel=1e-4)
    path = history.plot(tmp_path / "ratios.png", title="tiny D")
    assert path.stat().st_size > 1000
    history.save(tmp_path / "ratios.json")
    assert RatioHistory.load(tmp_path / "ratios.json").curves == history.curves
