"""Spec for anchored super-resolution decoders (``config.anchor``): a fixed upscale of the input
is each output subpixel's anchor, entering as an input embedding and as logits over the offset
from it. The shared encoder-decoder properties (causality, cache against recompute, the encoder
seeing every input) are tested for anchored models in test_sr.py."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

import dataclasses
import math

import pytest
import torch

from imgtx import ImageTransformer
from imgtx.configs import get_config as imgtx_config
from imgtx.resample import upscale_bicubic, upscale_nearest
from imgtx.sr import SuperResolutionConfig, SuperResolutionTransformer, get_config
from imgtx.sr.anchor import AnchoredDecoder, StayNearAnchor
from imgtx.sr.model import make_low_res
from imgtx.sr.train import init_decoder_from, offset_log_prior
from imgtx.sr.upscale import pad_to_tiles, upscale_batch, upscale_image

torch.set_num_threads(1)


def anchored(anchor: str = "bicubic", seed: int = 0, **overrides) -> SuperResolutionTransformer:
    torch.manual_seed(seed)
    return SuperResolutionTransformer(get_config("tiny", anchor=anchor, **overrides)).eval()


def random_images(batch: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g).to(torch.uint8)


@pytest.mark.parametrize("anchor,upscale", [("bicubic", upscale_bicubic),
                                            ("nearest", upscale_nearest)])
def test_a_fresh_anchored_model_returns_its_anchor_at_temperature_zero(anchor, upscale):
    """Zero value head + offset prior peaked at 0: greedy decoding reproduces the anchor exactly,
    so an untrained model already scores the interpolation's PSNR."""
    model = anchored(anchor, input_size=2)
    low = random_images(3, 2)
    assert torch.equal(upscale_batch(model, low, temperature=0), upscale(low, 4))


@pytest.mark.parametrize("height,width", [(6, 6), (5, 9)])
def test_tiled_anchors_come_from_the_whole_image_so_a_fresh_model_has_no_seams(height, width):
    """A fresh anchored model's tiled greedy upscale is exactly the bicubic upscale of the whole
    (edge-padded) image: every tile's anchor was cut from it, not made from the tile alone."""
    model = anchored(input_size=2)
    image = random_images(1, 9)[0, :, :height, :width]
    out = upscale_image(model, image, temperature=0, batch_size=4)
    whole = upscale_bicubic(pad_to_tiles(image, 2)[None], 4)[0, :, : 4 * height, : 4 * width]
    assert torch.equal(out, whole)
    per_tile = upscale_bicubic(image[None, :, :2, :2], 4)[0]
    assert not torch.equal(out[:, :8, :8], per_tile)  # so the test can tell the two apart


def test_logits_are_the_value_table_plus_the_offset_table_at_value_minus_anchor():
    model = anchored()
    decoder = model.decoder
    with torch.no_grad():
        for head in (decoder.head, decoder.offset_head):
            head.weight.normal_()
            head.bias.normal_()
    hidden = torch.randn(2, 5, decoder.config.hidden_size)
    anchors = torch.tensor([[0, 255, 17, 128, 3], [9, 200, 0, 255, 64]])
    with torch.no_grad():
        logits = decoder.head_outputs(hidden, anchors)
        normed = decoder.final_norm(hidden)
        value, offset = decoder.head(normed), decoder.offset_head(normed)
    for b in range(2):
        for t in range(5):
            a = int(anchors[b, t])
            expected = torch.stack([value[b, t, v] + offset[b, t, v - a + 255]
                                    for v in range(256)])
            assert torch.allclose(logits[b, t], expected, atol=1e-5)


def test_zero_heads_give_exactly_8_bits_per_dim():
    model = anchored()
    with torch.no_grad():
        model.decoder.offset_head.bias.zero_()
    high = random_images(2, 16)
    bits = model.bits_per_dim(make_low_res(high, model.config), high)
    assert torch.allclose(bits, torch.full((2,), 8.0), atol=1e-6)


def test_bits_per_dim_do_not_depend_on_the_batch():
    model = anchored(seed=1)
    with torch.no_grad():
        model.decoder.head.weight.normal_(std=0.3)
        model.decoder.offset_head.weight.normal_(std=0.3)
    high = random_images(4, 16, seed=2)
    low = make_low_res(high, model.config)
    with torch.no_grad():
        together = model.bits_per_dim(low, high)
        alone = torch.cat([model.bits_per_dim(low[i : i + 1], high[i : i + 1]) for i in range(4)])
    assert (together - alone).abs().max() <= 1e-5


def test_offset_prior_is_the_normalised_histogram_of_target_minus_anchor():
    config = get_config("tiny", anchor="nearest")
    flat = [{"image": torch.full((3, 16, 16), v, dtype=torch.uint8)} for v in (0, 90, 255)]
    prior = offset_log_prior(flat, config, smoothing=0.5)
    assert prior.shape == (511,)
    assert torch.isclose(prior.exp().sum(), torch.tensor(1.0), atol=1e-5)
    assert int(prior.argmax()) == 255  # offset 0: a flat image equals its nearest upscale
    # 3 images * 768 subpixels at offset 0, plus 0.5 for each of the 511 offsets:
    assert torch.isclose(prior[255].exp(), torch.tensor(2304.5 / (2304 + 255.5)), atol=1e-6)
    with pytest.raises(ValueError, match="anchor"):
        offset_log_prior(flat, get_config("tiny"))


def test_set_offset_prior_normalises_and_rejects_bad_input():
    model = anchored()
    model.decoder.set_offset_prior(torch.zeros(511))
    assert torch.allclose(model.decoder.offset_head.bias, torch.full((511,), -math.log(511)))
    with pytest.raises(ValueError, match="511"):
        model.decoder.set_offset_prior(torch.zeros(256))
    plain = SuperResolutionTransformer(get_config("tiny")).decoder
    assert not isinstance(plain, AnchoredDecoder)
    with pytest.raises(AttributeError, match="set_offset_prior"):
        plain.set_offset_prior(torch.zeros(511))


def test_anchors_are_required_exactly_when_the_decoder_is_anchored():
    decoder = anchored().decoder
    images = random_images(1, 16)
    with pytest.raises(ValueError, match="anchored: pass anchors"):
        decoder(images)
    with pytest.raises(ValueError, match="batch 2, expected 1"):
        decoder(images, side=random_images(2, 16))
    plain = ImageTransformer(imgtx_config("tiny"))
    with pytest.raises(ValueError, match="without side inputs"):
        plain(random_images(1, plain.config.image_size), side=random_images(1, 8))
    with pytest.raises(ValueError, match="categorical"):
        AnchoredDecoder(imgtx_config("tiny", likelihood="dmol"))
    with pytest.raises(ValueError, match="anchor="):
        SuperResolutionConfig(anchor="lanczos")


def test_configs_without_the_anchor_field_load_as_the_paper_model():
    """Checkpoints saved before ``anchor`` existed have no such key in config.json."""
    fields = dataclasses.asdict(get_config("tiny"))
    del fields["anchor"]
    assert SuperResolutionConfig(**fields).anchor == "none"
    assert get_config("celeba-8to32-1d").anchor == "none"
    assert get_config("photos-8to32-small").anchor == "bicubic"


def test_anchored_model_round_trips_through_save_and_from_pretrained(tmp_path):
    model = anchored(seed=3)
    with torch.no_grad():
        model.decoder.offset_head.weight.normal_()
    model.save_pretrained(tmp_path / "m")
    loaded = SuperResolutionTransformer.from_pretrained(tmp_path / "m").eval()
    high = random_images(2, 16)
    low = make_low_res(high, model.config)
    with torch.no_grad():
        assert torch.equal(loaded(low, high), model(low, high))


def test_warm_start_copies_the_body_but_keeps_the_anchored_value_head_at_zero(tmp_path):
    model = anchored()
    torch.manual_seed(5)
    source = ImageTransformer(model.config.decoder_config())
    source.save_pretrained(tmp_path / "it")
    copied = init_decoder_from(model, str(tmp_path / "it"))
    assert copied == len(source.state_dict()) - 2  # all but head.weight and head.bias
    assert torch.equal(model.decoder.layers[0].ffn.fc1.weight,
                       source.layers[0].ffn.fc1.weight)
    assert not model.decoder.head.weight.any() and not model.decoder.head.bias.any()


# -- fixed-point (Jacobi) decoding at temperature 0 -----------------------------------------------


def departing(seed: int = 1, predictor: str = "none") -> SuperResolutionTransformer:
    """A tiny anchored model with its decoder weights scrambled, so that greedy decoding leaves
    the anchors at many subpixels and each choice changes later ones."""
    model = anchored(input_size=2, predictor=predictor)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    return model


@pytest.mark.parametrize("rule,predictor", [(StayNearAnchor(0.0, 0.0), "none"),
                                            (StayNearAnchor(0.2, 0.05), "none"),
                                            (StayNearAnchor(0.0, 0.0), "med")],
                         ids=["argmax", "loose-rule", "argmax-med"])
def test_fixed_point_decoding_equals_decoding_one_subpixel_at_a_time(rule, predictor):
    model = departing(predictor=predictor)
    low = random_images(4, 2, seed=3)
    stats = {}
    fast = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=True, stats=stats)
    recompute = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False,
                              use_cache=False)
    cached = upscale_batch(model, low, temperature=0, rule=rule, fixed_point=False)
    assert torch.equal(fast, recompute)
    assert torch.equal(fast, cached)
    departures = (fast != model.anchors(low)).sum().item()
    assert departures > 20  # so the iteration had work to do ...
    assert stats["passes"] > 2  # ... and needed more than one correcting pass
    assert stats["row_passes"] <= 4 * stats["passes"]


def test_fixed_point_decoding_is_the_default_at_temperature_zero_for_anchored_models(monkeypatch):
    import imgtx.sr.model as generating_module

    calls = []
    real = generating_module.decode_fixed_point
    monkeypatch.setattr(generating_module, "decode_fixed_point",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    model = anchored(input_size=2)
    low = random_images(2, 2)
    upscale_batch(model, low, temperature=0)
    upscale_batch(model, low, temperature=0.5, generator=torch.Generator().manual_seed(0))
    upscale_batch(model, low, temperature=0, return_logits=True)
    assert calls == [1]  # only the first: sampling and per-step logits go subpixel by subpixel


def test_fixed_point_decoding_refuses_what_it_cannot_do():
    model = departing()
    low = random_images(2, 2, seed=3)
    with pytest.raises(RuntimeError, match="did not converge in 1 passes"):
        from imgtx.sampling import decode_fixed_point

        anchors = model.anchors(low)
        argmax = StayNearAnchor(0.0, 0.0).policy(model.decoder.side_values(anchors, 2))
        decode_fixed_point(model.decoder, anchors, policy=argmax, context=model.encode(low),
                           side=anchors, max_iterations=1)
    plain = anchored("none", input_size=2)
    with pytest.raises(ValueError, match="starts from the anchors"):
        upscale_batch(plain, low, temperature=0, fixed_point=True)
