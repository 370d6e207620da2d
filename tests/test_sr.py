"""Spec for sr: the super-resolution encoder-decoder, its cached upscaling, tiling, Hub round trip,
CLI errors and evaluation. Test-sized models on CPU: 4x4 -> 16x16 (768 output subpixels) where
the shapes matter, 2x2 -> 8x8 (192) where a test decodes whole images."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

import json

import numpy as np
import PIL.Image
import pytest
import torch

import imgtx.eval.image_metrics
import imgtx.resample
import imgtx.sr.model
import imgtx.sr.upscale
from imgtx import ImageTransformer
from imgtx.cli import main
from imgtx.configs import get_config as imgtx_config
from imgtx.data import ImageDataError
from imgtx.eval.image_metrics import downscale_area, upscale_bicubic, upscale_nearest
from imgtx.hub import CheckpointMismatchError
from imgtx.sr import SuperResolutionConfig, SuperResolutionTransformer, get_config
from imgtx.sr.model import make_low_res
from imgtx.sr.train import pair_loss
from imgtx.sr.upscale import split_tiles, stitch_tiles, upscale_batch, upscale_file, upscale_image

torch.set_num_threads(1)  # the tests share the machine with training runs


def tiny_model(name: str = "tiny", seed: int = 0, **overrides) -> SuperResolutionTransformer:
    """``name`` is a config, optionally with ``+ANCHOR`` (``tiny+bicubic``): an anchored model
    whose two output heads get random weights, so that its logits depend on what it sees (a
    fresh anchored model's are zero: it predicts the offset prior everywhere); ``+med`` adds the
    median edge predictor, its head random too."""
    torch.manual_seed(seed)
    base, *extras = name.split("+")
    if "med" in extras:
        extras.remove("med")
        overrides["predictor"] = "med"
    if extras:
        overrides["anchor"] = extras[0]
    model = SuperResolutionTransformer(get_config(base, **overrides)).eval()
    heads = [model.decoder.predictor_head] if "predictor" in overrides else []
    if extras:
        heads += [model.decoder.head, model.decoder.offset_head]
    with torch.no_grad():
        for head in heads:
            head.weight.normal_(std=0.3)
    return model


def small_output(name: str = "tiny", seed: int = 0) -> SuperResolutionTransformer:
    """A 2x2 -> 8x8 model: 192 decoding steps per image."""
    return tiny_model(name, seed, input_size=2)


def random_pair(config: SuperResolutionConfig, batch: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    high = torch.randint(0, 256, (batch, 3, config.output_size, config.output_size),
                         generator=g).to(torch.uint8)
    low = torch.randint(0, 256, (batch, 3, config.input_size, config.input_size),
                        generator=g).to(torch.uint8)
    return low, high


# ---------------------------------------------------------------------------------------------
# configs and shapes
# ---------------------------------------------------------------------------------------------


def test_paper_configs_carry_t2t_settings():
    b3, n103 = get_config("celeba-8to32-1d"), get_config("celeba-8to32-2d")
    assert (b3.input_size, b3.output_size, b3.attention, b3.block_length, b3.norm) == (
        8, 32, "local1d", 128, "post")
    assert b3.sampling_temperature == 0.9
    assert (n103.encoder_layers, n103.decoder_layers, n103.query_shape, n103.memory_flange) == (
        6, 12, (8, 32), (8, 64))
    assert n103.norm == "pre" and n103.attention == "local2d"


@pytest.mark.parametrize("input_size,scale", [(8, 2), (4, 4), (2, 8)])
def test_any_scale_and_input_size(input_size, scale):
    model = tiny_model(input_size=input_size, scale=scale)
    low, high = random_pair(model.config, 2)
    assert high.shape[-1] == input_size * scale
    assert model(low, high).shape == (2, 3 * (input_size * scale) ** 2, 256)
    bits = model.bits_per_dim(low, high)
    assert bits.shape == (2,) and torch.isfinite(bits).all()


def test_bad_config_and_wrong_input_size_say_what_to_do():
    with pytest.raises(ValueError, match="scale >= 2"):
        SuperResolutionConfig(scale=1)
    with pytest.raises(ValueError, match="divisible by the query block"):
        SuperResolutionTransformer(get_config("tiny-2d", query_shape=(3, 12)))
    model = tiny_model()
    low, high = random_pair(model.config, 1)
    with pytest.raises(ValueError, match=r"\(B, 3, 4, 4\)"):
        model(high, high)


def test_low_res_is_the_area_mean():
    config = get_config("tiny")
    high = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    expected = high.double().view(2, 3, 4, 4, 4, 4).mean(dim=(3, 5))
    assert (make_low_res(high, config).double() - expected).abs().max() <= 0.5
    assert torch.equal(make_low_res(high, config), downscale_area(high, 4))


def test_resamplers_live_in_imgtx_resample_and_keep_their_old_homes():
    for name in ("downscale_area", "upscale_bicubic", "upscale_nearest"):
        assert getattr(imgtx.eval.image_metrics, name) is getattr(imgtx.resample, name)
    assert imgtx.sr.model.make_anchors is imgtx.sr.anchor.make_anchors


@pytest.mark.parametrize("name", ["tiny", "tiny+bicubic"])
def test_backend_is_chosen_at_run_time_for_encoder_and_decoder(name):
    model = tiny_model(name)
    assert "backend" not in SuperResolutionConfig.__dataclass_fields__
    low, high = random_pair(model.config, 2)
    with torch.no_grad():
        blocked = model.bits_per_dim(low, high)
        assert model.set_backend("reference") is model
        backends = {m.backend for m in model.modules() if hasattr(m, "backend")}
        assert backends == {"reference"}
        assert torch.allclose(model.bits_per_dim(low, high), blocked, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# what the encoder and the decoder see
# ---------------------------------------------------------------------------------------------


MODELS = ["tiny", "tiny-2d", "tiny+bicubic", "tiny-2d+bicubic", "tiny+bicubic+med"]


@pytest.mark.parametrize("name", MODELS)
def test_encoder_sees_the_whole_input(name):
    """Changing any one input subpixel changes the logits of the very first output subpixel,
    which sees no output at all: every input position reaches the decoder."""
    model = tiny_model(name)
    low, high = random_pair(model.config, 1)
    n_in = 3 * model.config.input_size**2
    variants = low.repeat(n_in + 1, 1, 1, 1).permute(0, 2, 3, 1).reshape(n_in + 1, n_in).clone()
    index = torch.arange(n_in)
    variants[index + 1, index] = (variants[index + 1, index].long() + 128).remainder(256).byte()
    variants = variants.view(n_in + 1, 4, 4, 3).permute(0, 3, 1, 2)  # (1 + Nin, 3, 4, 4)
    with torch.no_grad():
        first = model.decoder.to_sequence(model(variants, high.expand(n_in + 1, -1, -1, -1)))
    first = first[:, 0]  # (1 + Nin, 256) the first subpixel in decoding order
    changed = (first[1:] - first[:1]).abs().amax(dim=1)
    assert (changed > 1e-6).all(), f"input subpixels {torch.nonzero(changed <= 1e-6)} unseen"


@pytest.mark.parametrize("name", MODELS)
def test_decoder_is_causal(name):
    """Changing output subpixel t (in decoding order) never changes the logits - hence the
    log-likelihood - of subpixels <= t, and does change later ones."""
    model = tiny_model(name)
    low, high = random_pair(model.config, 1)
    n = 3 * model.config.output_size**2
    steps = [0, 1, 2, 47, 48, 200, 383, n - 2, n - 1]
    order = model.decoder.to_sequence(torch.arange(n)[None])[0]  # raster index of each step
    flat = high.permute(0, 2, 3, 1).reshape(1, n).repeat(len(steps) + 1, 1)
    for row, t in enumerate(steps, start=1):
        flat[row, order[t]] = (flat[row, order[t]].long() + 100).remainder(256).byte()
    variants = flat.view(-1, 16, 16, 3).permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model.decoder.to_sequence(model(low.expand(len(variants), -1, -1, -1),
                                                 variants))
        nll = model.decoder.to_sequence(model.nll(low.expand(len(variants), -1, -1, -1),
                                                  variants))
    for row, t in enumerate(steps, start=1):
        assert torch.equal(logits[row, : t + 1], logits[0, : t + 1]), f"step {t} leaks back"
        assert torch.equal(nll[row, :t], nll[0, :t])
        if t < n - 1:
            assert (logits[row, t + 1 :] - logits[0, t + 1 :]).abs().max() > 1e-6


# ---------------------------------------------------------------------------------------------
# sampling: cache against full recompute, temperature 0
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_cached_upscaling_logits_equal_full_recompute(name):
    """The logits the KV-cached decoder used at each step equal one full forward pass over the
    sampled image (teacher forcing: the decoder is causal, so step t's logits depend only on
    what was sampled before t)."""
    model = small_output(name)
    low, _ = random_pair(model.config, 3)
    high, step_logits = upscale_batch(model, low, temperature=1.0, return_logits=True,
                                      generator=torch.Generator().manual_seed(0))
    assert high.shape == (3, 3, 8, 8) and high.dtype == torch.uint8
    with torch.no_grad():
        full = model.decoder.to_sequence(model(low, high))  # (B, N, 256) decoding order
    assert (step_logits - full).abs().max() <= 1e-4


@pytest.mark.parametrize("name", ["tiny", "tiny+bicubic", "tiny+nearest", "tiny+med",
                                  "tiny-2d+bicubic+med"])
def test_cached_decoding_equals_decoding_without_cache(name):
    """Against the slow path that re-runs the whole decoder for every subpixel (small output)."""
    model = tiny_model(name, input_size=2, scale=2, block_length=4)
    low, _ = random_pair(model.config, 2)
    fast, fast_logits = upscale_batch(model, low, temperature=0, return_logits=True)
    slow, slow_logits = upscale_batch(model, low, temperature=0, return_logits=True,
                                      use_cache=False)
    assert (fast_logits - slow_logits).abs().max() <= 1e-4
    assert torch.equal(fast, slow)


def test_temperature_zero_takes_the_most_likely_value_in_decoding_order():
    model = small_output()
    low, _ = random_pair(model.config, 2)
    high, logits = upscale_batch(model, low, temperature=0, return_logits=True)
    chosen = model.decoder.to_sequence(model.targets(high))  # (B, N) in decoding order
    assert torch.equal(chosen, logits.argmax(dim=-1))
    assert torch.equal(upscale_batch(model, low, temperature=0), high)


# ---------------------------------------------------------------------------------------------
# tiling
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("height,width", [(4, 4), (13, 20), (1, 9), (8, 3)])
def test_split_then_stitch_is_exact(height, width):
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    tiles, grid = split_tiles(image, 4)
    assert grid == (-(-height // 4), -(-width // 4)) and tiles.shape == (grid[0] * grid[1], 3, 4, 4)
    assert torch.equal(stitch_tiles(tiles, grid, height, width), image)


def test_every_tile_is_upscaled_and_put_in_its_place(monkeypatch):
    """With the model replaced by nearest-neighbour upscaling, the tiled upscale must equal the
    nearest-neighbour upscale of the whole image: each tile was decoded once and placed right."""
    model = tiny_model()
    seen = []

    def fake_upscale_batch(model, low_res, **kwargs):
        seen.append(len(low_res))
        return upscale_nearest(low_res, model.config.scale)

    monkeypatch.setattr(imgtx.sr.upscale, "upscale_batch", fake_upscale_batch)
    image = torch.randint(0, 256, (3, 13, 20), dtype=torch.uint8)
    out = upscale_image(model, image, batch_size=3)
    assert sum(seen) == 4 * 5 and max(seen) == 3  # 20 tiles, in batches of at most 3
    assert torch.equal(out, upscale_nearest(image[None], 4)[0])


def test_tiled_upscale_with_a_real_model_has_exactly_the_expected_size():
    model = small_output()  # 2x2 tiles: a 20x13 image is 10x7 tiles, the last row padded
    image = torch.randint(0, 256, (3, 20, 13), dtype=torch.uint8)
    out = upscale_image(model, image, temperature=0.8, seed=0, batch_size=40)
    assert out.shape == (3, 80, 52) and out.dtype == torch.uint8
    again = upscale_image(model, image, temperature=0.8, seed=0, batch_size=40)
    assert torch.equal(out, again)  # the seed makes it reproducible


# ---------------------------------------------------------------------------------------------
# Hub round trip, files and the CLI
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("sr-tiny")
    small_output("tiny-2d", seed=1).save_pretrained(path)
    return path


def test_save_then_from_pretrained_gives_the_same_model(saved_tiny):
    model = small_output("tiny-2d", seed=1)
    loaded = SuperResolutionTransformer.from_pretrained(saved_tiny)
    assert loaded.config == model.config
    low, high = random_pair(model.config, 2)
    with torch.no_grad():
        assert torch.equal(loaded(low, high), model(low, high))
    card = (saved_tiny / "README.md").read_text()
    assert "SuperResolutionTransformer" in card and "super-resolution" in card


def test_loading_is_strict(saved_tiny):
    with pytest.raises(CheckpointMismatchError, match="missing|unexpected"):
        SuperResolutionTransformer.from_pretrained(saved_tiny,
                                                   config_overrides={"decoder_layers": 3})


@pytest.fixture
def corrupt_png(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    return path


def test_corrupt_input_raises_an_error_naming_the_file(corrupt_png, tmp_path):
    with pytest.raises(ImageDataError, match="broken.png"):
        upscale_file(tiny_model(), corrupt_png, tmp_path / "out.png")


def test_cli_upscale_of_a_corrupt_file_exits_2_with_a_message(corrupt_png, tmp_path, saved_tiny,
                                                              capsys):
    code = main(["sr", "upscale", "--model", str(saved_tiny), str(corrupt_png),
                 str(tmp_path / "out.png")])
    err = capsys.readouterr().err
    assert code == 2
    assert "broken.png" in err and "error" in err and "Traceback" not in err
    assert not (tmp_path / "out.png").exists()


def test_cli_upscale_converts_grayscale_and_writes_scale_times_the_size(tmp_path, saved_tiny,
                                                                       capsys):
    source = tmp_path / "gray.png"
    PIL.Image.fromarray(np.arange(5 * 6, dtype=np.uint8).reshape(5, 6) * 8).save(source)
    code = main(["sr", "upscale", "--model", str(saved_tiny), str(source),
                 str(tmp_path / "up.png"), "--temperature", "0", "--compare",
                 str(tmp_path / "cmp.png"), "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["output_size"] == [24, 20] and summary["tiles"] == 9  # 3x3 tiles of 2x2
    with PIL.Image.open(tmp_path / "up.png") as up:
        assert up.size == (24, 20) and up.mode == "RGB"
    assert (tmp_path / "cmp.png").is_file()


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for split, count in (("train", 4), ("test", 2)):
        (folder / split).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            PIL.Image.fromarray(pixels).save(folder / split / f"{i}.png")
    return folder


def test_cli_eval_reports_model_and_bicubic_metrics(image_folder, saved_tiny, tmp_path, capsys):
    torch.manual_seed(0)
    unconditional = ImageTransformer(imgtx_config("tiny"))  # 8x8, the SR output size
    unconditional.save_pretrained(tmp_path / "it")
    code = main(["sr", "eval", "--model", str(saved_tiny), "--data", str(image_folder),
                 "--split", "test", "--temperature", "0", "--json", "--unconditional-model",
                 str(tmp_path / "it")])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("bits_per_dim", "psnr", "ssim", "bicubic_psnr", "bicubic_ssim", "nearest_psnr",
                "nearest_ssim", "num_images", "unconditional_bits_per_dim", "psnr_ci95",
                "psnr_minus_bicubic", "psnr_minus_bicubic_ci95", "ssim_minus_bicubic"):
        assert key in result, key
    assert abs(result["psnr_minus_bicubic"] - (result["psnr"] - result["bicubic_psnr"])) < 1e-4
    assert result["num_images"] == 2 and result["temperature"] == 0

    # The numbers, recomputed here from the two test images (8x8: the output size, so the
    # targets are the files themselves) and PSNR's definition, 10 log10(255^2 / MSE).
    def plain_psnr(images: torch.Tensor, target: torch.Tensor) -> float:
        mse = (images.double() - target.double()).square().flatten(1).mean(1)
        return (10 * torch.log10(255.0**2 / mse)).mean().item()

    high = torch.stack([torch.from_numpy(np.array(PIL.Image.open(path).convert("RGB")))
                        .permute(2, 0, 1) for path in sorted((image_folder / "test").iterdir())])
    model = SuperResolutionTransformer.from_pretrained(saved_tiny).eval()
    low = make_low_res(high, model.config)
    with torch.no_grad():
        bits = model.bits_per_dim(low, high).mean().item()
        unconditional_bits = ImageTransformer.from_pretrained(tmp_path / "it").eval() \
            .bits_per_dim(high).mean().item()
        upscaled = upscale_batch(model, low, temperature=0)
    expected = {"bits_per_dim": bits, "unconditional_bits_per_dim": unconditional_bits,
                "psnr": plain_psnr(upscaled, high),
                "bicubic_psnr": plain_psnr(upscale_bicubic(low, model.config.scale), high),
                "nearest_psnr": plain_psnr(upscale_nearest(low, model.config.scale), high)}
    for key, value in expected.items():
        assert result[key] == pytest.approx(value, abs=2e-5), key


def test_pair_loss_is_the_conditional_bits_per_dim():
    model = tiny_model()
    _, high = random_pair(model.config, 2)
    with torch.no_grad():
        expected = model.bits_per_dim(make_low_res(high, model.config), high).mean()
        assert torch.allclose(pair_loss(model, {"image": high}, model.config), expected)


def test_cli_train_runs_and_exports_a_loadable_model(image_folder, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["sr", "train", "--config", "tiny", "--set", "input_size=2", "--data",
                 str(image_folder), "--out", str(out), "--max-steps", "2", "--batch-size", "2",
                 "--eval-every", "0", "--checkpoint-every", "0"])
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 2 and records[-1]["images_seen"] == 4
    assert list((out / "samples").glob("step_*.png"))
    loaded = SuperResolutionTransformer.from_pretrained(out / "final")
    assert loaded.config == get_config("tiny", input_size=2)


def test_a_trained_model_grows_by_the_predictor_and_keeps_its_function(tmp_path):
    from imgtx.sr.train import DecoderInitError, init_model_from

    source = tiny_model("tiny+bicubic")
    source.save_pretrained(tmp_path / "plain")
    grown = init_model_from(get_config("tiny", anchor="bicubic", predictor="med"),
                            str(tmp_path / "plain")).eval()
    assert grown.decoder.predictor_head.weight.abs().sum() == 0
    low, high = random_pair(source.config, 2)
    with torch.no_grad():
        torch.testing.assert_close(grown(low, high), source(low, high))
    with pytest.raises(DecoderInitError, match="another config"):
        init_model_from(get_config("tiny", anchor="nearest", predictor="med"),
                        str(tmp_path / "plain"))
    grown.save_pretrained(tmp_path / "grown")  # and not back
    with pytest.raises(DecoderInitError, match="another config"):
        init_model_from(source.config, str(tmp_path / "grown"))


def test_training_can_fine_tune_a_whole_model_of_the_same_config(image_folder, tmp_path):
    """``train(model_init=...)``: the run starts from that model's weights (one step at a tiny
    learning rate stays next to them, far from a fresh model), and a model of another config is
    refused."""
    from imgtx.sr.train import DecoderInitError, train
    from imgtx.training.likelihood import TrainSettings

    config = get_config("tiny", input_size=2)
    source = tiny_model(seed=7, input_size=2)
    source.save_pretrained(tmp_path / "source")

    def settings(out: str) -> TrainSettings:
        return TrainSettings(data=str(image_folder), out=str(tmp_path / out), max_steps=1,
                             batch_size=2, lr=1e-7, warmup=1, eval_every=0,
                             checkpoint_every=0, num_samples=0)

    final = train(config, settings("tuned"), model_init=str(tmp_path / "source"))
    tuned = SuperResolutionTransformer.from_pretrained(final)
    fresh = tiny_model(seed=0, input_size=2)
    pairs = list(zip(tuned.state_dict().values(), source.state_dict().values(),
                     fresh.state_dict().values()))
    assert max((a - b).abs().max().item() for a, b, _ in pairs) < 1e-4
    assert max((a - c).abs().max().item() for a, _, c in pairs) > 0.1
    with pytest.raises(DecoderInitError, match="another config"):
        train(get_config("tiny", input_size=4), settings("other"),
              model_init=str(tmp_path / "source"))
