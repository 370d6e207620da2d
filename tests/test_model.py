"""The Image Transformer's spec: exact likelihoods, causality, cached sampling, Hub round trips."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from hub_cache import write_offline_hub_cache  # noqa: E402 (tests/hub_cache.py)

from imgtx import ImageTransformer, ImageTransformerConfig, get_config  # noqa: E402
from imgtx.hub import CheckpointMismatchError  # noqa: E402
from imgtx.sampling import decode, sample  # noqa: E402

VARIANTS = {
    "cat-1d": dict(),
    "cat-1d-post-learned": dict(norm="post", positions="learned"),
    "cat-2d": dict(attention="local2d", query_shape=(2, 8), memory_flange=(2, 4)),
    "dmol-1d": dict(likelihood="dmol", block_length=8),
    "dmol-2d": dict(likelihood="dmol", attention="local2d", query_shape=(2, 4),
                    memory_flange=(1, 2)),
    "cat-causal-cond": dict(attention="causal", num_classes=3),
    "dmol-1d-neighbours": dict(likelihood="dmol", block_length=8, neighbour_inputs=True),
    "dmol-2d-neighbours": dict(likelihood="dmol", attention="local2d", query_shape=(2, 4),
                               memory_flange=(1, 2), neighbour_inputs=True),
    "dmol-1d-med": dict(likelihood="dmol", block_length=8, neighbour_inputs=True,
                        predictor="med"),
    "dmol-2d-med": dict(likelihood="dmol", attention="local2d", query_shape=(2, 4),
                        memory_flange=(1, 2), predictor="med"),
    "cat-1d-med": dict(predictor="med"),
    "cat-2d-med": dict(attention="local2d", query_shape=(2, 8), memory_flange=(2, 4),
                       predictor="med"),
}


def make_model(**overrides) -> ImageTransformer:
    torch.manual_seed(0)
    model = ImageTransformer(get_config("tiny", **overrides)).eval()
    for added in (model.neighbours, model.predictor_head):
        if added is not None:  # zero at initialisation: give the path something to leak
            torch.nn.init.normal_(added.weight, std=0.5)
    return model


def random_images(batch: int, size: int = 8, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, size, size), generator=g, dtype=torch.uint8)


def labels_for(model: ImageTransformer, batch: int):
    return torch.arange(batch) % model.config.num_classes if model.config.num_classes else None


def test_zero_output_layer_gives_exactly_8_bits_per_dim():
    model = make_model()
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    bpd = model.bits_per_dim(random_images(3))
    assert torch.allclose(bpd.double(), torch.full((3,), 8.0, dtype=torch.float64), atol=1e-6)
    assert round(bpd.mean().item(), 3) == 8.000


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_bits_per_dim_is_independent_of_batch_size(variant):
    model = make_model(**VARIANTS[variant])
    images = random_images(5)
    labels = labels_for(model, 5)
    together = model.bits_per_dim(images, labels)
    alone = torch.cat([model.bits_per_dim(images[i : i + 1], None if labels is None
                                          else labels[i : i + 1]) for i in range(5)])
    assert torch.allclose(together, alone, atol=1e-6)


def test_bits_per_dim_is_mean_nats_per_subpixel_over_ln2():
    model = make_model()
    images = random_images(2)
    nats = model.nll(images)  # (B, 8*8*3)
    assert nats.shape == (2, 192)
    assert torch.allclose(model.bits_per_dim(images), nats.mean(1) / math.log(2), atol=1e-6)


def test_dmol_bits_per_dim_counts_three_subpixels_per_pixel():
    model = make_model(likelihood="dmol", block_length=8)
    images = random_images(2)
    nats_per_pixel = model.nll(images)
    assert nats_per_pixel.shape == (2, 64)
    expected = nats_per_pixel.sum(1) / (3 * 64 * math.log(2))
    assert torch.allclose(model.bits_per_dim(images), expected, atol=1e-6)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_model_is_causal_in_its_order(variant):
    """Changing position t never changes the likelihood of any position before t."""
    model = make_model(**VARIANTS[variant])
    images = random_images(1)
    labels = labels_for(model, 1)
    base = model.to_sequence(model.nll(images, labels))  # model order
    n = base.shape[1]
    per_position = 3 if model.config.likelihood == "cat" else 1
    for t in [0, 1, n // 3, n // 2 + 1, n - 1]:
        changed = model.to_sequence(model.targets(images)).clone()
        if per_position == 3:
            changed[0, t] = (changed[0, t] + 128) % 256
        else:
            changed[0, t] = (changed[0, t] + 128) % 256
        raster = model.to_raster(changed)
        other = raster.reshape(1, 8, 8, 3).permute(0, 3, 1, 2).to(torch.uint8)
        after = model.to_sequence(model.nll(other, labels))
        assert torch.equal(after[0, :t], base[0, :t]), f"position {t} leaked backwards"
        assert not torch.equal(after[0, t:], base[0, t:]), "the change had no effect at all"


def test_2d_model_order_differs_from_raster_and_roundtrips():
    model = make_model(**VARIANTS["cat-2d"])
    x = torch.arange(192)[None]
    seq = model.to_sequence(x)
    assert not torch.equal(seq, x)
    assert torch.equal(model.to_raster(seq), x)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_cached_sampling_equals_full_recompute(variant):
    model = make_model(**VARIANTS[variant])
    labels = labels_for(model, 2)
    images, cached = decode(model, 2, labels=labels, return_outputs=True,
                            generator=torch.Generator().manual_seed(0))
    images_slow, recomputed = decode(model, 2, labels=labels, use_cache=False,
                                     return_outputs=True,
                                     generator=torch.Generator().manual_seed(0))
    assert (cached - recomputed).abs().max().item() <= 1e-4
    assert torch.equal(images, images_slow)
    # and the outputs seen while sampling are the model's outputs on the finished sample
    full = model.to_sequence(model(images, labels))
    assert (cached - full).abs().max().item() <= 1e-4


def test_sample_shapes_seed_and_temperature_zero():
    model = make_model()
    a = sample(model, 3, seed=5, batch_size=2, progress=False)
    b = sample(model, 3, seed=5, batch_size=2, progress=False)
    assert a.shape == (3, 3, 8, 8) and a.dtype == torch.uint8
    assert torch.equal(a, b)
    greedy = sample(model, 2, temperature=0.0, progress=False)
    assert torch.equal(greedy[0], greedy[1])  # argmax decoding is deterministic


def test_class_conditional_model_requires_and_uses_labels():
    model = make_model(num_classes=3)
    images = random_images(2)
    with pytest.raises(ValueError, match="class-conditional"):
        model.bits_per_dim(images)
    with pytest.raises(ValueError, match="labels"):
        model.bits_per_dim(images, torch.tensor([0, 7]))
    assert not torch.equal(model.bits_per_dim(images, torch.tensor([0, 0])),
                           model.bits_per_dim(images, torch.tensor([1, 2])))


def test_wrong_image_size_is_a_clear_error():
    model = make_model()
    with pytest.raises(ValueError, match=r"\(B, 3, 8, 8\)"):
        model.bits_per_dim(random_images(1, size=16))


@pytest.mark.parametrize("variant", ["cat-1d", "dmol-2d"])
def test_save_and_from_pretrained_round_trip(tmp_path, variant):
    model = make_model(**VARIANTS[variant])
    model.save_pretrained(tmp_path / "m", metrics={"bits_per_dim": 7.5})
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (tmp_path / "m" / name).is_file()
    loaded = ImageTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    images = random_images(2)
    assert torch.equal(loaded(images), model(images))
    assert "7.5" in (tmp_path / "m" / "README.md").read_text()


def test_from_pretrained_through_offline_hub_cache(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    write_offline_hub_cache(tmp_path / "m", "org/name", tmp_path / "cache")
    loaded = ImageTransformer.from_pretrained("org/name", cache_dir=tmp_path / "cache")
    images = random_images(1)
    assert torch.equal(loaded(images), model(images))


def test_loading_mismatched_weights_raises(tmp_path):
    make_model().save_pretrained(tmp_path / "m")
    with pytest.raises(CheckpointMismatchError, match="hidden|shape|head|embed"):
        ImageTransformer.from_pretrained(tmp_path / "m", config=get_config("tiny",
                                                                           hidden_size=64))
    with pytest.raises(CheckpointMismatchError):
        ImageTransformer.from_pretrained(tmp_path / "m", config_overrides={"num_layers": 3})


def test_registry_configs_build_with_paper_sizes():
    # cifar10-cat-1d: 12 layers, d=512, ffn 2048 (T2T imagetransformer_cifar10_base)
    config = get_config("cifar10-cat-1d")
    assert (config.num_layers, config.hidden_size, config.ffn_size, config.block_length) == (
        12, 512, 2048, 256)
    assert get_config("cifar10-dmol").sequence_length == 1024
    assert get_config("cifar10-cat-2d").sequence_grid == (32, 96)


def test_backend_is_a_run_time_choice_not_a_config_field(tmp_path):
    import dataclasses
    import json

    assert "backend" not in {f.name for f in dataclasses.fields(get_config("tiny"))}
    model = make_model()
    images = random_images(2)
    blocked = model.bits_per_dim(images)
    assert model.set_backend("reference") is model
    assert {layer.attn.backend for layer in model.layers} == {"reference"}
    assert torch.allclose(model.bits_per_dim(images), blocked, atol=1e-5)
    torch.manual_seed(0)
    built = ImageTransformer(get_config("tiny"), backend="reference")
    assert {layer.attn.backend for layer in built.layers} == {"reference"}
    # A config.json saved when the backend was a field still loads (the field is dropped).
    make_model().save_pretrained(tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "backend": "xformers"}))
    loaded = ImageTransformer.from_pretrained(tmp_path / "m")
    assert loaded.config == get_config("tiny")
    assert {layer.attn.backend for layer in loaded.layers} == {"auto"}


def test_incremental_decoder_alternates_outputs_and_feed():
    model = make_model()
    with torch.no_grad():
        decoder = model.incremental_decoder(2)
        with pytest.raises(RuntimeError, match=r"outputs\(\) for this position"):
            decoder.feed(torch.zeros(2, dtype=torch.long))
        first = decoder.outputs()
        assert first.shape == (2, 256) and decoder.position == 0
        with pytest.raises(RuntimeError, match=r"feed\(\) the value"):
            decoder.outputs()
        decoder.feed(first.argmax(-1))
        assert decoder.position == 1
        # position 0 sees nothing: its outputs equal the full forward's on any image
        assert torch.allclose(first, model(random_images(2))[:, 0], atol=1e-5)


@pytest.mark.parametrize("field, value", [("image_size", 0), ("num_layers", -1),
                                          ("num_mixtures", 0),
                                          ("hidden_size", 0), ("block_length", 0),
                                          ("num_heads", 2.5), ("num_classes", -1)])
def test_config_rejects_non_positive_sizes(field, value):
    """A config.json with a zero or negative size fails with the field's name, not later
    inside a tensor operation."""
    with pytest.raises(ValueError, match=f"config.{field}"):
        ImageTransformerConfig(**{field: value})


def test_neighbour_index_reads_only_earlier_pixels_in_model_order():
    """Each position's neighbours are the pixels at NEIGHBOURS offsets, decoded before it."""
    from imgtx.neighbours import NEIGHBOURS, neighbour_index

    for overrides in (VARIANTS["dmol-1d-neighbours"], VARIANTS["dmol-2d-neighbours"]):
        model = make_model(**overrides)
        index = neighbour_index(model.config)  # (N, 6), N = zero slot
        n = model.config.sequence_length
        raster = model.to_sequence(torch.arange(n)[None])[0]  # raster index of each position
        for t in range(n):
            r, c = divmod(raster[t].item(), 8)
            for j, (dr, dc) in enumerate(NEIGHBOURS):
                i = index[t, j].item()
                if i == n:
                    continue
                assert i < t and raster[i].item() == (r + dr) * 8 + (c + dc)
        # raster order (1D) drops only the off-image ones: pixel (3, 4) has all six
        if overrides.get("attention") != "local2d":
            assert (index[3 * 8 + 4] < n).all()
        else:  # block order decodes some upper-right pixels later: those are left out
            assert (index == n).sum() > (neighbour_index(make_model(
                **VARIANTS["dmol-1d-neighbours"]).config) == n).sum()


def test_neighbour_inputs_start_at_zero_and_warm_start_keeps_the_function(tmp_path):
    from imgtx.errors import UserError
    from imgtx.train import init_from

    torch.manual_seed(0)
    plain = ImageTransformer(get_config("tiny", likelihood="dmol", block_length=8)).eval()
    plain.save_pretrained(tmp_path / "plain")
    grown = ImageTransformer(get_config("tiny", likelihood="dmol", block_length=8,
                                        neighbour_inputs=True)).eval()
    assert grown.neighbours.weight.abs().sum() == 0
    fresh = init_from(grown, str(tmp_path / "plain"))
    assert fresh == ["neighbours.bias", "neighbours.weight"]
    images = random_images(3)
    assert torch.equal(grown.bits_per_dim(images), plain.bits_per_dim(images))
    # a body of another shape, or a source with tensors the target lacks, is refused
    wide = ImageTransformer(get_config("tiny", likelihood="dmol", block_length=8,
                                       hidden_size=64))
    with pytest.raises(UserError, match="no counterpart"):
        init_from(wide, str(tmp_path / "plain"))
    grown.save_pretrained(tmp_path / "grown")
    with pytest.raises(UserError, match="no counterpart"):
        init_from(plain, str(tmp_path / "grown"))


def slow_median_edge(image: torch.Tensor) -> torch.Tensor:
    """LOCO-I's median edge detector pixel by pixel, in 0..255: ``(3, H, W)`` -> ``(3, H, W)``
    float64; left on the top row, upper in the first column, 127.5 (0 scaled) at the origin."""
    x = image.double()
    out = torch.empty_like(x)
    _, rows, cols = x.shape
    for r in range(rows):
        for c in range(cols):
            for ch in range(3):
                if r == 0 and c == 0:
                    out[ch, r, c] = 127.5
                elif r == 0:
                    out[ch, r, c] = x[ch, r, c - 1]
                elif c == 0:
                    out[ch, r, c] = x[ch, r - 1, c]
                else:
                    a, b, d = x[ch, r, c - 1], x[ch, r - 1, c], x[ch, r - 1, c - 1]
                    if d >= max(a, b):
                        out[ch, r, c] = min(a, b)
                    elif d <= min(a, b):
                        out[ch, r, c] = max(a, b)
                    else:
                        out[ch, r, c] = a + b - d
    return out


@pytest.mark.parametrize("variant", ["dmol-1d-med", "dmol-2d-med"])
def test_med_predictor_centres_every_pixel_on_the_median_edge_prediction(variant):
    """With a zero head every mixture's channel means are the median edge prediction of the
    pixel's left, upper and upper-left neighbours, in 1D and in 2D block order alike."""
    model = make_model(**VARIANTS[variant])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    images = random_images(2)
    images[1] = torch.linspace(0, 255, 64).reshape(1, 8, 8).round().to(torch.uint8)  # a ramp
    k = model.config.num_mixtures
    with torch.no_grad():
        means = model(images)[..., k:4 * k].unflatten(-1, (k, 3))  # (B, H*W, K, 3), raster
    for i in range(2):
        expected = slow_median_edge(images[i]).permute(1, 2, 0).reshape(64, 1, 3) / 127.5 - 1
        torch.testing.assert_close(means[i].double(), expected.expand(64, k, 3),
                                   rtol=0, atol=1e-6)
    # so on smooth images it starts far below a head that predicts the means itself
    plain = make_model(likelihood="dmol", block_length=8)
    with torch.no_grad():
        plain.head.weight.zero_()
        plain.head.bias.zero_()
        for m in (model, plain):  # narrow logistics (scale 0.02 of the [-1, 1] range)
            m.head.bias[4 * k:7 * k] = math.log(0.02)
    ramp = images[1:]
    assert model.bits_per_dim(ramp).item() < plain.bits_per_dim(ramp).item() - 1.0


def test_warm_starting_a_med_model_restarts_the_means_at_the_prediction(tmp_path):
    from imgtx.errors import UserError
    from imgtx.train import init_from

    plain = make_model(likelihood="dmol", block_length=8)
    plain.save_pretrained(tmp_path / "plain")
    med = make_model(**VARIANTS["dmol-1d-med"])
    fresh = init_from(med, str(tmp_path / "plain"))
    assert fresh == ["neighbours.bias", "neighbours.weight", "head.means"]
    k = med.config.num_mixtures
    assert med.head.weight[k:4 * k].abs().sum() == 0 and med.head.bias[k:4 * k].abs().sum() == 0
    torch.testing.assert_close(med.head.weight[4 * k:], plain.head.weight[4 * k:])
    # a categorical model grows a zero predictor head and keeps its function
    cat = make_model()
    cat.save_pretrained(tmp_path / "cat")
    torch.manual_seed(1)
    grown = ImageTransformer(get_config("tiny", predictor="med")).eval()
    assert init_from(grown, str(tmp_path / "cat")) == ["predictor_head.bias",
                                                         "predictor_head.weight"]
    images = random_images(2)
    torch.testing.assert_close(grown.bits_per_dim(images), cat.bits_per_dim(images))
    # means relative to a predictor cannot seed a model whose means are absolute
    med.save_pretrained(tmp_path / "med")
    with pytest.raises(UserError, match="predictor"):
        init_from(make_model(likelihood="dmol", block_length=8, neighbour_inputs=True),
                  str(tmp_path / "med"))


@pytest.mark.parametrize("variant", ["cat-1d-med", "cat-2d-med"])
def test_categorical_med_predictor_adds_logits_over_the_offset_from_the_prediction(variant):
    """A categorical model's predictor reads the same channel's left, upper and upper-left
    subpixels: with only a peaked offset table, every subpixel's argmax is its prediction."""
    model = make_model(**VARIANTS[variant])
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.predictor_head.weight.zero_()
        model.predictor_head.bias.copy_(-torch.arange(-255, 256).abs().float())
    images = random_images(2)
    images[1] = torch.linspace(0, 255, 64).reshape(1, 8, 8).round().to(torch.uint8)
    with torch.no_grad():
        logits = model(images)  # (B, H*W*3, 256) raster
    for i in range(2):
        expected = slow_median_edge(images[i]).permute(1, 2, 0).reshape(-1)  # (H*W*3,)
        expected = expected.round().long()  # the origin's 127.5 rounds to 128
        assert torch.equal(logits[i].argmax(-1), expected)
    flat = torch.full((1, 3, 8, 8), 77, dtype=torch.uint8)  # 8 bits/dim without the table
    assert model.bits_per_dim(flat).item() < 3.0


def test_predictor_needs_a_known_name():
    with pytest.raises(ValueError, match="predictor"):
        get_config("tiny", likelihood="dmol", predictor="calic")


def test_neighbour_inputs_need_the_dmol_head():
    with pytest.raises(ValueError, match="neighbour_inputs"):
        get_config("tiny", neighbour_inputs=True)

