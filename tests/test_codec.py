"""imgtx.codec: lossless round trips, the coded pmfs against the model's likelihood, the file
format's refusals, and the compress / decompress commands."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from imgtx.cli import main
from imgtx.codec import CodecError, compress, decompress, read_header
from imgtx.codec.orient import orient_tiles, tile_orientations
from imgtx.codec.transform import SCALE_GRID, TRANSFORMS, Transform, coded_bits, scale_offsets
from imgtx.configs import get_config
from imgtx.data.builtin import photo_patches
from imgtx.likelihood import (
    discretized_logistic_log_prob,
    dmol_adapt,
    dmol_nll_per_channel,
    dmol_nll_per_pixel,
    dmol_shift_log_scales,
    scale_pixels,
)
from imgtx.logistic import logistic_bin_probs
from imgtx.model import ImageTransformer

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "imgtx-photos-dmol-small"

# Tiny randomly initialised models (8x8 tiles): every head and predictor the codec handles.
CONFIGS = {
    "cat": {},
    "cat-med": {"predictor": "med"},
    "dmol": {"likelihood": "dmol", "positions": "learned"},
    "dmol-med": {"likelihood": "dmol", "neighbour_inputs": True, "predictor": "med"},
    "cat-2d": {"attention": "local2d", "query_shape": (2, 6), "memory_flange": (2, 6)},
}


def tiny(kind: str, seed: int = 0) -> ImageTransformer:
    torch.manual_seed(seed)
    model = ImageTransformer(get_config("tiny", **CONFIGS[kind])).eval()
    with torch.no_grad():  # random, not flat: the pmfs vary from position to position
        for parameter in model.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    return model


def photo(height: int, width: int) -> np.ndarray:
    """A real photo crop of any size, from builtin:photos32 test patches laid side by side."""
    patches = photo_patches("test").images[:64].permute(0, 2, 3, 1).numpy()  # (64, 32, 32, 3)
    mosaic = patches.reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)
    return np.ascontiguousarray(mosaic[:height, :width])


def round_trip(model, image):
    data = compress(model, image)
    return data, decompress(data, model)


# -- the coded pmfs are the model's likelihood ----------------------------------------------------


def test_logistic_bin_probs_equal_the_likelihood_bins_by_brute_force():
    generator = torch.Generator().manual_seed(0)
    mean = torch.cat([torch.randn(400, generator=generator, dtype=torch.float64) * 1.5,
                      torch.tensor([-1.0, 1.0, 0.0, -3.0, 3.0], dtype=torch.float64)])
    log_scale = torch.cat([torch.rand(400, generator=generator, dtype=torch.float64) * 7 - 7,
                           torch.tensor([-7.0, -7.0, -7.0, 0.0, 2.0], dtype=torch.float64)])
    values = scale_pixels(torch.arange(256), torch.float64)
    reference = discretized_logistic_log_prob(values, mean[:, None], log_scale[:, None]).exp()
    fast = logistic_bin_probs(mean, log_scale)  # (405, 256)
    assert fast.shape == reference.shape
    assert torch.allclose(fast, reference, rtol=1e-7, atol=1e-300)
    # tiny bins use PixelCNN++'s density times width, as the likelihood does
    assert (reference < 1e-5).any()


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_code_length_is_the_models_negative_log_likelihood(kind):
    model = tiny(kind)
    images = torch.from_numpy(photo(8, 16)).permute(2, 0, 1)
    stats: dict = {}
    compress(model, images, transform=None, scales=None, stats=stats)  # as given
    tiles = torch.stack([images[:, :, :8], images[:, :, 8:]])  # the codec's two tiles
    with torch.no_grad():
        nats = float(model.nll(tiles).sum())
    assert stats["ideal_bits"] == pytest.approx(nats / math.log(2), rel=1e-4)
    if kind.startswith("dmol"):  # with the encoder's log-scale offsets: the shifted likelihood
        choice = 5 + 8 * 7 + 64 * 5  # r -0.6, g +0.2, b -0.6
        shifted: dict = {}
        compress(model, images, transform=None, scales=choice, stats=shifted)
        with torch.no_grad():
            outputs = dmol_shift_log_scales(model(tiles), scale_offsets(choice))
            shifted_nats = float(dmol_nll_per_pixel(outputs, model.targets(tiles)).sum())
        assert shifted["ideal_bits"] == pytest.approx(shifted_nats / math.log(2), rel=1e-4)
        assert abs(shifted_nats - nats) > 1e-3 * nats  # the offsets change the pmfs
        assert scale_offsets(choice) == (-0.6, 0.2, -0.6)
    # the range coder adds a few bytes at most; the header is counted separately
    payload = stats["bytes"] - stats["header_bytes"]
    assert stats["ideal_bits"] / 8 - 1 <= payload <= stats["ideal_bits"] / 8 + 5


# -- the encoder's transform ----------------------------------------------------------------------


def test_the_96_transforms_are_distinct_and_each_is_undone():
    image = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    seen = set()
    for code in range(TRANSFORMS):
        transform = Transform.from_code(code)
        assert transform.code == code
        turned = transform.apply(image)
        assert turned.shape[:2] == transform.size(5, 7)
        assert np.array_equal(transform.undo(turned), image)
        seen.add(turned.tobytes() + bytes(turned.shape[:2]))
    assert len(seen) == TRANSFORMS
    assert np.array_equal(Transform(orientation=1).apply(image), np.rot90(image))  # CCW
    assert np.array_equal(Transform(orientation=4).apply(image), image[:, ::-1])  # a mirror
    assert np.array_equal(Transform(order=5).apply(image), image[..., ::-1])  # b, g, r
    assert np.array_equal(Transform(invert=True).apply(image), 255 - image)


@pytest.mark.parametrize("kind", ["cat-med", "dmol-med"])
@pytest.mark.parametrize("grey", [False, True])
def test_auto_transform_codes_the_cheapest_candidate(kind, grey):
    model = tiny(kind)
    image = photo(11, 19)  # 2 x 3 tiles of 8, padded; turned, 3 x 2
    if grey:
        image = np.asarray(PIL.Image.fromarray(image).convert("L"))
    stats: dict = {}
    data = compress(model, image, scales=None, search="greedy", adapt=False, orient=False,
                    stats=stats)
    assert np.array_equal(np.asarray(decompress(data, model)), image)
    assert stats["search"] == "greedy"
    scores = stats["transform_scores"]
    # 12 colour choices (2 for grey), 7 turns, and the best turn with the best colours
    assert len(scores) in ((9, 10) if grey else (19, 20))
    subpixels = image.size  # coded: the one channel of grey, all three of RGB
    coded = {}  # the slow reference: code every candidate for real
    for code in scores:
        forced: dict = {}
        data = compress(model, image, transform=code, scales=None, adapt=False, orient=False,
                        stats=forced)
        assert read_header(data).transform == code
        assert np.array_equal(np.asarray(decompress(data, model)), image)
        coded[code] = forced["ideal_bits"] / subpixels
    assert max(coded.values()) > 1.01 * min(coded.values())  # the choice matters
    # forward-pass scores (all tiles of a small image) are the coded code lengths
    assert [scores[c] for c in coded] == pytest.approx(list(coded.values()), rel=1e-4)
    assert coded[stats["transform"]] == pytest.approx(min(coded.values()), rel=1e-6)


@pytest.mark.parametrize("kind", ["cat-med", "dmol-med"])
def test_the_full_search_codes_the_cheapest_of_all_96_transforms(kind):
    from imgtx.codec.transform import REFINE, best_scales

    model = tiny(kind)
    image = photo(11, 13)  # 2 x 2 tiles of 8: small enough for the full search by default
    stats: dict = {}
    data = compress(model, image, stats=stats)
    assert stats["search"] == "full" and len(stats["transform_scores"]) == TRANSFORMS
    assert np.array_equal(np.asarray(decompress(data, model)), image)
    plain = {}  # the slow reference: code every transform for real, without scales
    for code in range(TRANSFORMS):
        forced: dict = {}
        compress(model, image, transform=code, scales=None, stats=forced)
        plain[code] = forced["ideal_bits"] / image.size
    assert max(plain.values()) > 1.01 * min(plain.values())
    coded = dict(plain)
    if kind == "dmol-med":  # the best REFINE without scales get their own fitted scales
        for code in sorted(plain, key=plain.get)[:REFINE]:
            transform = Transform.from_code(code)
            scales, _ = best_scales(model, transform.apply(image), False)
            forced = {}
            compress(model, image, transform=code, scales=scales, stats=forced)
            coded[code] = forced["ideal_bits"] / image.size
            if code == stats["transform"]:
                assert stats["scales"] == scales
        assert min(coded.values()) < min(plain.values())  # the offsets matter here
    scores = stats["transform_scores"]
    assert [scores[c] for c in range(TRANSFORMS)] == pytest.approx(
        [coded[c] for c in range(TRANSFORMS)], rel=1e-4)
    assert coded[stats["transform"]] == pytest.approx(min(coded.values()), rel=1e-6)
    assert stats["ideal_bits"] / image.size == pytest.approx(min(coded.values()), rel=1e-6)
    # a grey image tries orientations and inversion only
    grey = np.asarray(PIL.Image.fromarray(image).convert("L"))
    compress(model, grey, stats=stats)
    assert stats["search"] == "full" and len(stats["transform_scores"]) == 16


def test_a_large_image_scores_every_candidate_on_the_same_content():
    from imgtx.codec.transform import _sample

    model = tiny("cat")  # 8x8 tiles: a 70x100 image has 9 x 13 tiles, more than 16
    image = photo(70, 100)
    reference, reference_sizes = _sample(model, image, Transform(), 16)
    assert len(reference) == 16 and all(size == (8, 8) for size in reference_sizes)
    for code in range(TRANSFORMS):
        transform = Transform.from_code(code)
        tiles, sizes = _sample(model, image, transform, 16)
        for tile, (h, w), original in zip(tiles, sizes, reference):
            assert np.array_equal(transform.undo(tile[:h, :w]), original)


def test_the_choices_field_is_written_only_when_the_encoder_changed_something():
    model = tiny("cat")
    image = photo(9, 9)
    sizes = {}
    for code in (0, 61):
        stats: dict = {}
        data = compress(model, image, transform=code, stats=stats)
        sizes[code] = stats["header_bytes"]
    assert sizes[0] == 16 and sizes[61] == 17
    assert Transform.from_code(read_header(data).transform) == \
        Transform(orientation=5, order=1, invert=True)
    # the flag set, and the choices 0 or beyond 96 transforms x 512 scales x adapter or not x
    # oriented or not
    for bad in (b"\x00", b"\x80\x80\x0c"):
        damaged = data[: sizes[61] - 1] + bad + data[sizes[61]:]
        with pytest.raises(CodecError, match="encoder choices"):
            decompress(damaged, model)
    for bad in (96, -1, "best"):
        with pytest.raises(CodecError, match="a transform is"):
            compress(model, image, transform=bad)


def test_auto_scales_fit_the_models_sharpness_to_the_image():
    model = tiny("dmol-med")
    grey = np.asarray(PIL.Image.fromarray(photo(12, 10)).convert("L"))
    coded = []  # the slow reference: a grey image codes red alone, so try each red offset
    for g in range(len(SCALE_GRID)):
        forced: dict = {}
        data = compress(model, grey, transform=None, scales=g, stats=forced)
        assert read_header(data).scales == g
        assert np.array_equal(np.asarray(decompress(data, model)), grey)
        coded.append(forced["ideal_bits"])
    assert max(coded) > 1.005 * min(coded)
    stats: dict = {}
    data = compress(model, grey, transform=None, stats=stats)
    assert stats["scales"] == int(np.argmin(coded))
    assert np.array_equal(np.asarray(decompress(data, model)), grey)
    # RGB: each channel's offset in turn; never worse than the model's own scales
    rgb = photo(12, 10)
    auto, plain = {}, {}
    data = compress(model, rgb, transform=None, stats=auto)
    compress(model, rgb, transform=None, scales=None, stats=plain)
    assert auto["scales"] > 0 and auto["ideal_bits"] < plain["ideal_bits"]
    assert np.array_equal(np.asarray(decompress(data, model)), rgb)
    # categorical models have no scales to shift
    with pytest.raises(CodecError, match="DMOL models only"):
        compress(tiny("cat"), rgb, scales=3)
    assert compress(tiny("cat"), rgb, scales="auto") == compress(tiny("cat"), rgb, scales=None)


def test_an_adapter_keeps_the_dmol_family_exact_and_normalised():
    generator = torch.Generator().manual_seed(0)
    k = 4
    head = torch.randn(5, 10 * k, generator=generator, dtype=torch.float64)
    adapter = torch.randn(4 + 4 * k, generator=generator, dtype=torch.float64)
    assert torch.equal(dmol_adapt(head, torch.zeros(4 + 4 * k, dtype=torch.float64)), head)
    offsets = torch.zeros(4 + 4 * k, dtype=torch.float64)
    shift = torch.tensor([-0.6, 0.2, 0.1], dtype=torch.float64)
    offsets[3 : 3 + 3 * k] = shift.repeat(k)  # one offset per channel: the scales choice
    assert torch.allclose(dmol_adapt(head, offsets), dmol_shift_log_scales(head, shift))
    adapted = dmol_adapt(head, adapter)
    assert not torch.allclose(adapted, head)
    # element by element, the slow way: logits l_k e^t + b_k, log-scales s_kc e^(m_c) + a_kc
    expected = head.clone()
    for k_ in range(k):
        expected[:, k_] = head[:, k_] * math.exp(adapter[3 + 3 * k]) + adapter[4 + 3 * k + k_]
        for c in range(3):
            column = 4 * k + 3 * k_ + c
            expected[:, column] = (head[:, column] * math.exp(adapter[c])
                                   + adapter[3 + 3 * k_ + c])
    assert torch.allclose(adapted, expected)
    # every (r, g, b) given the ones before: each channel's 256 probabilities sum to 1
    values = torch.arange(256)
    for c in range(3):
        pixels = torch.zeros(5, 256, 3, dtype=torch.long)
        pixels[..., c] = values
        pixels[..., :c] = 77  # fixed earlier channels
        nats = dmol_nll_per_channel(adapted[:, None].expand(-1, 256, -1), pixels)[..., c]
        assert torch.allclose(torch.exp(-nats).sum(-1), torch.ones(5, dtype=torch.float64))
    with pytest.raises(ValueError, match="20 numbers"):
        dmol_adapt(head, adapter[:-1])


def test_an_adapter_is_fitted_sent_and_coded_exactly():
    model = tiny("dmol-med")
    image = photo(24, 24)  # 9 tiles: more than 4, so "auto" fits one
    stats: dict = {}
    data = compress(model, image, transform=None, scales=None, orient=False, stats=stats)
    header = read_header(data)
    assert len(header.adapter) == 4 + 4 * model.config.num_mixtures == len(stats["adapter"])
    assert np.array_equal(np.asarray(decompress(data, model)), image)
    # the coded length is the adapted model's likelihood of the 9 tiles
    tiles = torch.from_numpy(image).permute(2, 0, 1).unfold(1, 8, 8).unfold(2, 8, 8)
    tiles = tiles.permute(1, 2, 0, 3, 4).reshape(9, 3, 8, 8)
    with torch.no_grad():
        outputs = dmol_adapt(model(tiles), torch.tensor(stats["adapter"]))
        nats = float(dmol_nll_per_pixel(outputs, model.targets(tiles)).sum())
        plain_nats = float(model.nll(tiles).sum())
    assert stats["ideal_bits"] == pytest.approx(nats / math.log(2), rel=1e-4)
    # the fit pays: fewer bits than without it, header included
    plain: dict = {}
    without = compress(model, image, transform=None, scales=None, adapt=False, orient=False,
                       stats=plain)
    assert read_header(without).adapter == b"" and plain["adapter"] is None
    assert nats < plain_nats and len(data) < len(without)
    # small images (at most 4 tiles) are not fitted unless asked
    assert read_header(compress(model, photo(16, 16))).adapter == b""
    forced = compress(model, photo(16, 16), adapt=True)
    assert np.array_equal(np.asarray(decompress(forced, model)), photo(16, 16))
    # a header whose adapter has the wrong length is refused, as is an adapter for a categorical
    start = len(data) - len(data[stats["header_bytes"]:]) - len(header.adapter) - 1
    assert data[start] == len(header.adapter)
    damaged = data[:start] + bytes([len(header.adapter) - 1]) + data[start + 1:]
    with pytest.raises(CodecError, match=f"adapter of {len(header.adapter) - 1} numbers"):
        decompress(damaged, model)
    with pytest.raises(CodecError, match="categorical"):
        compress(tiny("cat"), image, adapt=True)
    with pytest.raises(CodecError, match="adapt is"):
        compress(model, image, adapt="yes")


def test_each_tile_is_turned_the_way_it_codes_best_and_restored():
    model = tiny("dmol-med")
    image = photo(24, 20)  # 3 x 3 tiles of 8; the right column is cut to 4 pixels
    # placing and undoing: a square tile turns in place, an edge tile cannot turn
    turns = np.array([1, 5, 0, 7, 2, 0, 3, 4, 0], dtype=np.uint8)
    turned = orient_tiles(image, 8, turns)
    assert np.array_equal(turned[:8, :8], np.rot90(image[:8, :8]))
    assert np.array_equal(turned[:, 16:], image[:, 16:])
    assert np.array_equal(orient_tiles(turned, 8, turns, undo=True), image)
    with pytest.raises(ValueError, match="edge"):
        orient_tiles(image, 8, [0, 0, 1])
    # the slow reference: every full tile alone, under each of its 8 orientations
    chosen, saved = tile_orientations(model, image, False)
    expected, gain = [], 0.0
    for index in range(9):
        row, col = divmod(index, 3)
        if col == 2:
            expected.append(0)
            continue
        tile = image[8 * row : 8 * row + 8, 8 * col : 8 * col + 8]
        bits = [float(coded_bits(model, Transform(orientation=k).apply(tile)[None], [(8, 8)],
                                 False)[0]) for k in range(8)]
        expected.append(int(np.argmin(bits)))
        gain += bits[0] - min(bits)
    assert chosen.tolist() == expected and any(expected)
    assert saved == pytest.approx(gain, rel=1e-5)
    # sent, coded and restored; the coded length is the model's on the turned tiles
    stats: dict = {}
    data = compress(model, image, transform=None, scales=None, adapt=False, orient=True,
                    stats=stats)
    assert list(read_header(data).orientations) == expected == stats["orientations"]
    assert np.array_equal(np.asarray(decompress(data, model)), image)
    plain: dict = {}
    compress(model, image, transform=None, scales=None, adapt=False, orient=False, stats=plain)
    assert plain["orientations"] is None
    assert stats["ideal_bits"] == pytest.approx(plain["ideal_bits"] - gain, rel=1e-4)
    # "auto" turns tiles of images of more than 4 tiles only; their search then leaves the
    # image's own turns out (12 colour choices, no orientation)
    auto: dict = {}
    assert read_header(compress(model, image, adapt=False, stats=auto)).orientations != b""
    assert len(auto["transform_scores"]) == 12
    assert all(code % 8 == 0 for code in auto["transform_scores"])
    assert read_header(compress(model, photo(16, 16))).orientations == b""
    # a header whose orientations do not fit the image is refused
    header = read_header(data)
    start = stats["header_bytes"] - 1 - 5  # the count, then 5 bytes of 9 orientations
    assert data[start] == 9 and len(header.orientations) == 9
    for count, message in ((8, "orientations for 8 tiles"), (0, "orientations in its header")):
        damaged = data[:start] + bytes([count]) + data[start + 1:]
        with pytest.raises(CodecError, match=message):
            decompress(damaged, model)
    with pytest.raises(CodecError, match="orient is"):
        compress(model, image, orient="yes")


# -- round trips ----------------------------------------------------------------------------------


SIZES = [(kind, size) for kind in CONFIGS for size in [(1, 1), (31, 33), (32, 32)]] + [
    ("cat-med", (100, 75)), ("dmol-med", (100, 75))]  # 130 tiles each


@pytest.mark.parametrize(("kind", "size"), SIZES)
def test_round_trip_random_rgb_and_grey(kind, size):
    model = tiny(kind)
    rng = np.random.default_rng(size[0] * 1000 + size[1])
    rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    _, restored = round_trip(model, PIL.Image.fromarray(rgb))
    assert restored.mode == "RGB" and np.array_equal(np.asarray(restored), rgb)
    grey = rng.integers(0, 256, size, dtype=np.uint8)
    _, restored = round_trip(model, PIL.Image.fromarray(grey))
    assert restored.mode == "L" and np.array_equal(np.asarray(restored), grey)


@pytest.mark.parametrize("kind", ["cat-med", "dmol-med"])
def test_round_trip_real_photo_and_its_grey_version(kind):
    model = tiny(kind)
    rgb = photo(37, 45)
    data, restored = round_trip(model, rgb)
    assert np.array_equal(np.asarray(restored), rgb)
    grey = np.asarray(PIL.Image.fromarray(rgb).convert("L"))
    grey_data, restored = round_trip(model, grey)
    assert np.array_equal(np.asarray(restored), grey)
    # greyscale codes one channel (g and b are known to equal r)
    assert len(grey_data) < len(data) / 2
    # so does RGB with equal channels, restored as RGB
    equal = np.repeat(grey[:, :, None], 3, axis=2)
    equal_data, restored = round_trip(model, equal)
    assert restored.mode == "RGB" and np.array_equal(np.asarray(restored), equal)
    assert read_header(equal_data).equal and len(equal_data) == len(grey_data)


def test_round_trip_with_the_shipped_photo_model():
    model = ImageTransformer.from_pretrained(SHIPPED)
    image = photo(3, 40)  # two tiles, each stopping after its last coded position
    stats: dict = {}
    data = compress(model, image, stats=stats)
    assert np.array_equal(np.asarray(decompress(data, model)), image)
    assert stats["bytes"] < image.size  # smaller than the raw pixels


def test_thread_count_does_not_change_the_file_or_its_decoding():
    model = tiny("dmol-med")
    image = photo(20, 30)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = compress(model, image)
        torch.set_num_threads(2)
        two = compress(model, image)
        restored = decompress(one, model)
        assert torch.get_num_threads() == 2  # restored after coding
    finally:
        torch.set_num_threads(before)
    assert one == two
    assert np.array_equal(np.asarray(restored), image)


def test_progress_bars_show_the_phases_and_change_nothing(capfd):
    model = tiny("dmol-med")
    image = photo(24, 20)  # 9 tiles: every phase of a large image runs
    quiet = compress(model, image)
    capfd.readouterr()
    shown = compress(model, image, progress=True)
    shown_err = capfd.readouterr().err
    restored = decompress(shown, model, progress=True)
    restored_err = capfd.readouterr().err
    assert shown == quiet and np.array_equal(np.asarray(restored), image)
    assert "code" in shown_err and "pos" in shown_err
    assert "decode" in restored_err and f"/{9 * 64} " in restored_err  # its total: positions


def test_a_file_records_its_batch_layout_and_decodes_with_it():
    model = tiny("cat")
    image = photo(20, 20)  # 9 tiles
    data = compress(model, image, batch=4)
    assert read_header(data).batch == 4
    assert np.array_equal(np.asarray(decompress(data, model)), image)


def test_a_value_the_model_rules_out_still_round_trips():
    model = tiny("cat")
    with torch.no_grad():
        model.head.bias.fill_(0.0)
        model.head.bias[0] = 2000.0  # every other value gets probability exp(-2000) = 0.0
    image = np.full((2, 3, 3), 255, np.uint8)
    _, restored = round_trip(model, image)
    assert np.array_equal(np.asarray(restored), image)


# -- refusals ------------------------------------------------------------------------------------


def test_damaged_truncated_and_foreign_files_are_refused():
    model = tiny("dmol")
    data = compress(model, photo(9, 9))
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0x10
    for bad, message in ((bytes(corrupted), "damaged"), (data[:-7], "damaged or truncated"),
                         (b"PNG" + data[3:], "not an imgtx")):
        with pytest.raises(CodecError, match=message):
            decompress(bad, model)
    with pytest.raises(CodecError, match="another model"):
        decompress(data, tiny("dmol", seed=1))
    # damage in the header: the width, the model's fingerprint, the pixels' CRC
    for index in (3, 8, 14):
        corrupted = bytearray(data)
        corrupted[index] ^= 0x01
        with pytest.raises(CodecError, match="damaged|another model"):
            decompress(bytes(corrupted), model)


def test_models_whose_inputs_a_file_cannot_hold_are_refused():
    config = get_config("tiny")
    for model in (ImageTransformer(config, context_dim=8),
                  ImageTransformer(get_config("tiny", num_classes=3))):
        with pytest.raises(CodecError, match="unconditional"):
            compress(model.eval(), np.zeros((2, 2, 3), np.uint8))


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "I;16"])
def test_images_it_cannot_restore_exactly_are_refused(mode):
    image = PIL.Image.new(mode, (4, 4))
    with pytest.raises(CodecError, match="cannot compress this image losslessly"):
        compress(tiny("cat"), image)


# -- the commands --------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def saved(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, seed in (("model", 0), ("other", 1)):
        paths[name] = tmp_path / name
        tiny("dmol-med", seed).save_pretrained(paths[name])
    paths["image"] = tmp_path / "in.png"
    PIL.Image.fromarray(photo(12, 10)).save(paths["image"])
    return paths


def test_cli_round_trip_and_json(capsys, tmp_path, saved):
    out = tmp_path / "out.itx"
    code, stdout, _ = run(capsys, "compress", "--model", str(saved["model"]),
                          str(saved["image"]), str(out), "--json")
    assert code == 0 and out.is_file()
    import json

    row = json.loads(stdout)
    assert row["bytes"] == out.stat().st_size and row["subpixels"] == 12 * 10 * 3
    assert row["bits_per_dim"] > row["model_bits_per_dim"] > 0
    restored = tmp_path / "restored.png"
    code, stdout, _ = run(capsys, "decompress", str(out), str(restored), "--json")  # named model
    assert code == 0 and json.loads(stdout)["positions_per_second"] > 0
    assert np.array_equal(np.asarray(PIL.Image.open(restored)),
                          np.asarray(PIL.Image.open(saved["image"])))
    for option, code_ in (("none", 0), ("13", 13)):
        _, stdout, _ = run(capsys, "compress", "--model", str(saved["model"]), "--transform",
                           option, str(saved["image"]), str(out), "--json")
        assert json.loads(stdout)["transform"] == read_header(out.read_bytes()).transform == code_
    for option in ("on", "off"):
        _, stdout, _ = run(capsys, "compress", "--model", str(saved["model"]), "--adapt",
                           option, str(saved["image"]), str(out), "--json")
        adapted = json.loads(stdout)["adapted"]
        assert adapted == bool(read_header(out.read_bytes()).adapter)
        assert adapted or option == "off"  # 4 tiles of 8x8: the fit pays for its 45 bytes
    large = tmp_path / "large.png"  # 9 full tiles of 8x8
    PIL.Image.fromarray(photo(24, 24)).save(large)
    for option in ("on", "off"):
        _, stdout, _ = run(capsys, "compress", "--model", str(saved["model"]), "--orient",
                           option, str(large), str(out), "--json")
        turned = read_header(out.read_bytes()).orientations
        assert json.loads(stdout)["oriented_tiles"] == sum(map(bool, turned))
        assert bool(turned) == (option == "on")
        run(capsys, "decompress", str(out), str(tmp_path / "back.png"))
        assert np.array_equal(np.asarray(PIL.Image.open(tmp_path / "back.png")),
                              np.asarray(PIL.Image.open(large)))


def test_cli_several_inputs_with_out_dir(capsys, tmp_path, saved):
    second = tmp_path / "grey.png"
    PIL.Image.fromarray(photo(5, 7)[:, :, 1]).save(second)
    code, _, _ = run(capsys, "compress", "--model", str(saved["model"]), str(saved["image"]),
                     str(second), "--out-dir", str(tmp_path / "itx"))
    assert code == 0
    code, _, _ = run(capsys, "decompress", str(tmp_path / "itx" / "in.itx"),
                     str(tmp_path / "itx" / "grey.itx"), "--out-dir", str(tmp_path / "png"))
    assert code == 0
    for original in (saved["image"], second):
        restored = PIL.Image.open(tmp_path / "png" / original.name)
        assert restored.mode == PIL.Image.open(original).mode
        assert np.array_equal(np.asarray(restored), np.asarray(PIL.Image.open(original)))


def test_cli_refusals_exit_2_with_one_line_and_write_nothing(capsys, tmp_path, saved):
    good = tmp_path / "good.itx"
    assert run(capsys, "compress", "--model", str(saved["model"]), str(saved["image"]),
               str(good))[0] == 0
    data = good.read_bytes()
    corrupted = bytearray(data)
    corrupted[len(data) - 10] ^= 0x01
    (tmp_path / "corrupted.itx").write_bytes(bytes(corrupted))
    (tmp_path / "truncated.itx").write_bytes(data[: len(data) // 2])
    other = tmp_path / "other.itx"
    assert run(capsys, "compress", "--model", str(saved["other"]), str(saved["image"]),
               str(other))[0] == 0
    rgba = tmp_path / "alpha.png"
    PIL.Image.new("RGBA", (3, 3)).save(rgba)
    cases = [
        ("decompress", str(tmp_path / "corrupted.itx"), str(tmp_path / "a.png")),
        ("decompress", str(tmp_path / "truncated.itx"), str(tmp_path / "b.png")),
        # a file from another model, decoded with this one
        ("decompress", str(other), str(tmp_path / "c.png"), "--model", str(saved["model"])),
        # the wrong --model for a good file
        ("decompress", str(good), str(tmp_path / "d.png"), "--model", str(saved["other"])),
        ("compress", "--model", str(saved["model"]), str(rgba), str(tmp_path / "e.itx")),
        ("compress", "--model", str(saved["model"]), "--transform", "96", str(saved["image"]),
         str(tmp_path / "f.itx")),
        ("compress", "--model", str(saved["model"]), "--scales", "512", str(saved["image"]),
         str(tmp_path / "g.itx")),
    ]
    for argv in cases:
        code, stdout, stderr = run(capsys, *argv)
        assert code == 2, argv
        assert stderr.count("\n") == 1 and "error:" in stderr and "Traceback" not in stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert leftovers == ["alpha.png", "corrupted.itx", "good.itx", "in.png", "other.itx",
                         "truncated.itx"]
