"""Spec for DMOL super-resolution decoders (``SuperResolutionConfig.likelihood="dmol"``): exact
bits/dim, causality, the KV cache and fixed-point decoding against slow paths, the
temperature-0 rule against a brute-force search over all 256 values, the 3x3 anchor inputs, and
a warm start that is exactly the unconditional model."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

import math

import pytest
import torch

from imgtx import ImageTransformer
from imgtx.likelihood import discretized_logistic_log_prob, dmol_nll_per_pixel, dmol_split_params
from imgtx.sr import SuperResolutionTransformer, get_config
from imgtx.sr.anchor import AnchoredPixelDecoder, StayNearAnchor
from imgtx.sr.model import make_low_res
from imgtx.sr.train import init_decoder_from, pair_loss
from imgtx.sr.upscale import upscale_batch

torch.set_num_threads(1)

DMOL = dict(likelihood="dmol", neighbour_inputs=True, predictor="med", block_length=8)


def dmol_model(seed: int = 0, input_size: int = 4, noise: float = 0.0,
               **overrides) -> SuperResolutionTransformer:
    """A tiny anchored DMOL model (``input_size`` -> 4x). ``noise`` perturbs every weight, the
    zero-initialised anchor map included, so that outputs depend on everything they may see."""
    torch.manual_seed(seed)
    config = get_config("tiny", anchor="bicubic", input_size=input_size, **{**DMOL, **overrides})
    model = SuperResolutionTransformer(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).to(torch.uint8)


def smooth_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    """Gradients: inputs where a trained-looking model is confident and the rule has work."""
    g = torch.Generator().manual_seed(seed)
    ramp = torch.linspace(0, 1, size)
    base = torch.rand(batch, 3, 1, 1, generator=g) * 120 + 40
    slope = (torch.rand(batch, 3, 1, 1, generator=g) - 0.5) * 120
    return (base + slope * (ramp[None, None, :, None] + ramp[None, None, None, :]) / 2).round(
        ).clamp(0, 255).to(torch.uint8)


def test_the_decoder_is_an_anchored_pixel_decoder_and_bits_per_dim_count_subpixels():
    model = dmol_model(noise=0.05)
    assert isinstance(model.decoder, AnchoredPixelDecoder)
    high = random_images(2, 16)
    low = make_low_res(high, model.config)
    with torch.no_grad():
        params = model(low, high)  # (B, 256 pixels, 10K)
        assert params.shape == (2, 256, 10 * model.decoder.config.num_mixtures)
        nats = dmol_nll_per_pixel(params, high.long().permute(0, 2, 3, 1).flatten(1, 2))
        expected = nats.sum(dim=1) / (3 * 16 * 16 * math.log(2))
        assert torch.allclose(model.bits_per_dim(low, high), expected)
        assert torch.allclose(pair_loss(model, {"image": high}, model.config), expected.mean())


@pytest.mark.parametrize("attention", ["local1d", "local2d"])
def test_anchor_inputs_are_the_3x3_anchors_around_each_pixel_own_first(attention):
    overrides = {"attention": attention, "query_shape": (4, 4), "memory_flange": (2, 2)}
    decoder = dmol_model(**overrides).decoder
    anchors = random_images(1, 16, seed=1)
    side = decoder.side_values(anchors, 1)  # (1, N, 9, 3) model order
    raster = decoder.to_sequence(torch.arange(256)[None])[0]  # raster index of each position
    for t in [0, 5, 17, 100, 255]:
        r, c = divmod(int(raster[t]), 16)
        assert torch.equal(side[0, t, 0], anchors[0, :, r, c].long())
        window = [(min(max(r + dr, 0), 15), min(max(c + dc, 0), 15))
                  for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        for j, (rr, cc) in enumerate(window, start=1):
            assert torch.equal(side[0, t, j], anchors[0, :, rr, cc].long())


def test_decoder_is_causal_over_pixels_and_sees_later_anchors():
    """Changing pixel t (decoding order) changes no output <= t and changes later ones; the
    anchors of the pixel to the right (not yet decoded) already change position t's output."""
    model = dmol_model(noise=0.3)
    low, high = random_images(1, 4), random_images(1, 16, seed=2)
    order = model.decoder.to_sequence(torch.arange(256)[None])[0]
    with torch.no_grad():
        base = model(low, high)
        for t in [0, 7, 8, 100, 254]:
            changed = high.clone()
            r, c = divmod(int(order[t]), 16)
            changed[0, :, r, c] = (changed[0, :, r, c].long() + 100).remainder(256).byte()
            out = model(low, changed)
            assert torch.equal(out[0, : t + 1], base[0, : t + 1]), f"pixel {t} leaks back"
            assert (out[0, t + 1 :] - base[0, t + 1 :]).abs().max() > 1e-6
        anchors = model.anchors(low)
        moved = anchors.clone()
        moved[0, :, 0, 1] = (moved[0, :, 0, 1].long() + 100).remainder(256).byte()
        first = model.decoder(high, context=model.encode(low), side=moved)[0, 0]
        assert (first - base[0, 0]).abs().max() > 1e-6


def test_cached_sampling_equals_full_recompute():
    model = dmol_model(noise=0.1, input_size=2)
    low = random_images(3, 2)
    high, steps = upscale_batch(model, low, temperature=1.0, return_logits=True,
                                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model.decoder.to_sequence(model(low, high))
    assert (steps - full).abs().max() <= 1e-4


def brute_force_rule(params: torch.Tensor, anchors: torch.Tensor, min_prob: float,
                     margin: float, lo: torch.Tensor | None = None,
                     hi: torch.Tensor | None = None) -> torch.Tensor:
    """The rule from the whole 256-value pmf of each channel (float64), one pixel at a time;
    with bounds, the pmf truncated to lo..hi and renormalised, the anchor clamped into it."""
    if lo is not None:
        anchors = torch.minimum(torch.maximum(anchors, lo), hi)
    p = dmol_split_params(params.double())
    values = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0
    out = torch.empty_like(anchors)
    for m in range(len(params)):
        log_w = torch.log_softmax(p.logits[m], dim=0)  # (K,)
        scaled = []
        for c in range(3):
            mean = p.means[m, :, c].clone()
            if c >= 1:
                mean += p.coeffs[m, :, c - 1 if c == 1 else 1] * scaled[0]
            if c == 2:
                mean += p.coeffs[m, :, 2] * scaled[1]
            log_probs = discretized_logistic_log_prob(values[None], mean[:, None],
                                                      p.log_scales[m, :, c, None])  # (K, 256)
            pmf = torch.logsumexp(log_w[:, None] + log_probs, dim=0).exp()
            if lo is not None:
                inside = torch.zeros(256, dtype=torch.bool)
                inside[lo[m, c] : hi[m, c] + 1] = True
                pmf = torch.where(inside, pmf, 0.0)
                pmf = pmf / pmf.sum()
            best = int(pmf.argmax())
            a = int(anchors[m, c])
            v = best if pmf[best] > min_prob and pmf[best] - pmf[a] > margin else a
            out[m, c] = v
            scaled.append(values[v])
            log_w = torch.log_softmax(log_w + log_probs[:, v], dim=0)
    return out


@pytest.mark.parametrize("min_prob,margin", [(0.5, 0.0), (0.6, 0.2), (0.9, 0.6)])
def test_the_dmol_rule_equals_a_search_over_all_256_values(min_prob, margin):
    g = torch.Generator().manual_seed(0)
    k, m = 5, 400
    params = torch.randn(m, 10 * k, generator=g, dtype=torch.float64)
    params[:, :k] *= 3  # some pixels with one dominant component
    params[:, 4 * k : 7 * k] = params[:, 4 * k : 7 * k] * 2 - 4.5  # log-scales: sharp and wide
    params[: m // 4, k : 4 * k] *= 2  # means past the edges: the edge bins hold the tails
    anchors = torch.randint(0, 256, (m, 3), generator=g)
    anchors[::3] = ((params[::3, k : 4 * k : 3][:, :3] + 1) * 127.5).round().clamp(0, 255).long()
    rule = StayNearAnchor(min_prob, margin)
    chosen = rule.choose_pixel(params, anchors)
    assert torch.equal(chosen, brute_force_rule(params, anchors, min_prob, margin))
    left = (chosen != anchors).any(dim=1).float().mean()
    assert 0.05 < left < 0.95  # the test sees both outcomes


@pytest.mark.parametrize("min_prob,margin", [(0.5, 0.0), (0.9, 0.6)])
def test_the_dmol_rule_on_a_truncated_pmf_equals_a_search_over_its_values(min_prob, margin):
    """With bounds (imgtx.sr.blockmean) the candidates are the truncated components' medians."""
    g = torch.Generator().manual_seed(1)
    k, m = 5, 400
    params = torch.randn(m, 10 * k, generator=g, dtype=torch.float64)
    params[:, :k] *= 3
    params[:, 4 * k : 7 * k] = params[:, 4 * k : 7 * k] * 2 - 3.5
    lo = torch.randint(0, 241, (m, 3), generator=g)
    hi = (lo + torch.randint(0, 16, (m, 3), generator=g)).clamp(max=255)  # at most 16 values
    anchors = torch.randint(0, 256, (m, 3), generator=g)
    rule = StayNearAnchor(min_prob, margin)
    chosen = rule.choose_pixel(params, anchors, lo, hi)
    assert ((chosen >= lo) & (chosen <= hi)).all()
    assert torch.equal(chosen, brute_force_rule(params, anchors, min_prob, margin, lo, hi))
    clamped = torch.minimum(torch.maximum(anchors, lo), hi)
    assert 0.01 < (chosen != clamped).any(dim=1).float().mean() < 0.95  # both outcomes seen


def test_the_dmol_rule_needs_min_prob_of_at_least_a_half():
    with pytest.raises(ValueError, match="min_prob >= 0.5"):
        StayNearAnchor(0.3, 0.0).choose_pixel(torch.zeros(2, 100), torch.zeros(2, 3).long())


@pytest.mark.parametrize("rule", [StayNearAnchor(0.5, 0.0), StayNearAnchor()],
                         ids=["loose", "default"])
def test_fixed_point_decoding_equals_decoding_one_pixel_at_a_time(rule):
    model = dmol_model(noise=0.15, input_size=2, seed=1)
    low = make_low_res(smooth_images(4, 8, seed=2), model.config)
    stats = {}
    fast = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=True, stats=stats)
    cached = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False)
    recompute = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False,
                              use_cache=False)
    assert torch.equal(fast, cached) and torch.equal(fast, recompute)
    if rule.min_prob == 0.5:
        assert (fast != model.anchors(low)).sum() > 5 and stats["passes"] > 2


def test_a_warm_started_dmol_decoder_is_exactly_the_unconditional_model(tmp_path):
    """Head included, cross-attention outputs and anchor inputs at zero: the same bits/dim as
    the unconditional model on every image, before any training."""
    model = dmol_model()
    torch.manual_seed(5)
    source = ImageTransformer(model.config.decoder_config())
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    source.save_pretrained(tmp_path / "unconditional")
    assert init_decoder_from(model, str(tmp_path / "unconditional")) > 0
    high = random_images(3, 16, seed=4)
    with torch.no_grad():
        assert torch.allclose(model.bits_per_dim(make_low_res(high, model.config), high),
                              source.eval().bits_per_dim(high), atol=1e-5)


def test_round_trip_through_save_and_from_pretrained(tmp_path):
    model = dmol_model(noise=0.1)
    model.save_pretrained(tmp_path / "m")
    loaded = SuperResolutionTransformer.from_pretrained(tmp_path / "m").eval()
    assert loaded.config == model.config
    high = random_images(2, 16)
    low = make_low_res(high, model.config)
    with torch.no_grad():
        assert torch.equal(loaded.bits_per_dim(low, high), model.bits_per_dim(low, high))


@pytest.fixture()
def photo_folder(tmp_path):
    """8x8 photos (train / test): the output size of a 2x2 -> 8x8 model."""
    import PIL.Image

    folder = tmp_path / "photos"
    for split, count in (("train", 4), ("test", 2)):
        (folder / split).mkdir(parents=True)
        for i, image in enumerate(smooth_images(count, 8, seed=len(split))):
            PIL.Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / split / f"{i}.png")
    return folder


def test_cli_trains_warm_started_then_evaluates_and_upscales(photo_folder, tmp_path, capsys):
    """``imgtx sr train --set likelihood=dmol ... --decoder-init`` runs and exports; ``sr eval``
    reports bits/dim beside the unconditional model's, ``sr upscale`` writes 4x the input."""
    import json

    import PIL.Image

    from imgtx.cli import main

    sets = ["likelihood=dmol", "neighbour_inputs=true", "predictor=med", "anchor=bicubic",
            "input_size=2", "block_length=8"]
    config = get_config("tiny", input_size=2, anchor="bicubic", **DMOL)
    torch.manual_seed(0)
    ImageTransformer(config.decoder_config()).save_pretrained(tmp_path / "it")
    args = ["sr", "train", "--config", "tiny", "--data", str(photo_folder), "--out",
            str(tmp_path / "run"), "--max-steps", "2", "--batch-size", "2", "--eval-every", "0",
            "--checkpoint-every", "0", "--decoder-init", str(tmp_path / "it"), "--freeze-decoder",
            "--lr", "1e-2"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 0
    final = tmp_path / "run" / "final"
    trained = SuperResolutionTransformer.from_pretrained(final)
    assert trained.config == config
    # --freeze-decoder: the unconditional weights are untouched, the new parts moved.
    source = ImageTransformer.from_pretrained(tmp_path / "it").state_dict()
    decoder = trained.decoder.state_dict()
    assert all(torch.equal(decoder[name], tensor) for name, tensor in source.items())
    assert decoder["anchor_inputs.weight"].abs().max() > 0
    assert decoder["layers.0.cross_attn.proj.weight"].abs().max() > 0
    capsys.readouterr()
    assert main(["sr", "eval", "--model", str(final), "--data", str(photo_folder), "--split",
                 "test", "--temperature", "0", "--json", "--unconditional-model",
                 str(tmp_path / "it")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["num_images"] == 2 and 0 < result["bits_per_dim"] < 16
    assert abs(result["bits_per_dim"] - result["unconditional_bits_per_dim"]) < 1.0
    PIL.Image.fromarray(smooth_images(1, 6)[0].permute(1, 2, 0).numpy()).save(tmp_path / "in.png")
    assert main(["sr", "upscale", "--model", str(final), str(tmp_path / "in.png"),
                 str(tmp_path / "out.png")]) == 0
    assert PIL.Image.open(tmp_path / "out.png").size == (24, 24)


def test_the_config_carries_its_temperature_zero_rule(tmp_path):
    """``anchor_rule`` is what ``rule="auto"`` uses: (1, 1) never leaves the anchors, even for a
    model that leaves them often under a loose rule; it survives save / from_pretrained."""
    model = dmol_model(noise=0.15, input_size=2, seed=1, anchor_rule=(0.5, 0.0))
    low = make_low_res(smooth_images(4, 8, seed=2), model.config)
    assert (upscale_batch(model, low, temperature=0) != model.anchors(low)).sum() > 5
    strict = dmol_model(noise=0.15, input_size=2, seed=1, anchor_rule=(1.0, 1.0))
    assert torch.equal(upscale_batch(strict, low, temperature=0), strict.anchors(low))
    strict.save_pretrained(tmp_path / "strict")
    assert SuperResolutionTransformer.from_pretrained(tmp_path / "strict").config.anchor_rule \
        == (1.0, 1.0)
    with pytest.raises(ValueError, match="anchor_rule"):
        get_config("tiny", anchor_rule=(1.5, 0.0))


def test_the_dmol_rule_takes_anchor_pixels_or_the_decoders_side_values():
    g = torch.Generator().manual_seed(1)
    params = torch.randn(50, 50, generator=g)
    anchors = torch.randint(0, 256, (50, 3), generator=g)
    window = torch.cat([anchors[:, None], torch.randint(0, 256, (50, 8, 3), generator=g)], 1)
    rule = StayNearAnchor(0.5, 0.0)
    assert torch.equal(rule(params, anchors), rule.choose_pixel(params, anchors))
    assert torch.equal(rule(params, window), rule.choose_pixel(params, anchors))
