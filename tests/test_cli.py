"""Spec for exact bits/dim evaluation (imgtx.eval.bits_per_dim) and the ``imgtx`` command line.

Models are the ``tiny`` config (8x8 images, 192 subpixel positions) with random weights, saved to
a temporary directory; data are ``builtin:photos`` patches at 8x8 or temporary image folders.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib.util  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import datasets  # noqa: E402
import numpy as np  # noqa: E402
import PIL.Image  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from imgtx import ImageTransformer, get_config  # noqa: E402
from imgtx.cli import main  # noqa: E402
from imgtx.data import ImageDataError, load_images, photo_patches  # noqa: E402
from imgtx.eval.bits_per_dim import evaluate_model  # noqa: E402
from imgtx.eval.compression import png_bits_per_dim, webp_bits_per_dim  # noqa: E402
from imgtx.hub import parameter_count  # noqa: E402

SIZE = 8  # the tiny config's image side
REQUIRED_KEYS = {"bits_per_dim", "ci95", "num_images", "png_bits_per_dim", "webp_bits_per_dim",
                 "images_per_second", "model", "data", "split", "seconds"}


@pytest.fixture(autouse=True)
def _hf_cache_in_tmp(tmp_path, monkeypatch):
    """Keep imagefolder's Arrow cache out of the user's ~/.cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: intra-op threads only add synchronisation (and on a busy machine, stalls of
    whole seconds per sampled position); the results do not depend on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**overrides) -> ImageTransformer:
    torch.manual_seed(0)
    return ImageTransformer(get_config("tiny", **overrides)).eval()


@pytest.fixture
def model_dir(tmp_path) -> Path:
    path = tmp_path / "tiny-model"
    tiny_model().save_pretrained(path)
    return path


def save_png(path: Path, seed: int, size: int = SIZE) -> np.ndarray:
    array = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    PIL.Image.fromarray(array).save(path)
    return array


def reference_bits_per_dim(model: ImageTransformer, images: torch.Tensor,
                           labels: torch.Tensor | None = None) -> torch.Tensor:
    """Per-image bits/dim from the logits by hand, one image at a time, in float64."""
    out = []
    with torch.no_grad():
        for i in range(images.shape[0]):
            logits = model(images[i : i + 1], None if labels is None else labels[i : i + 1])
            log_probs = logits.double().log_softmax(-1)[0]  # (N, 256)
            targets = images[i].permute(1, 2, 0).reshape(-1).long()  # raster r,g,b order
            nats = -log_probs.gather(1, targets[:, None]).sum()
            out.append(nats / (targets.numel() * math.log(2)))
    return torch.stack(out)


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------------------------
# evaluate_model
# ---------------------------------------------------------------------------------------------


def test_bits_per_dim_is_independent_of_batch_size(model_dir):
    results = [evaluate_model(str(model_dir), "builtin:photos", limit=11, batch_size=b,
                              progress=False) for b in (1, 3, 7)]
    assert all(r["num_images"] == 11 for r in results)
    figures = [r["bits_per_dim"] for r in results]
    assert max(figures) - min(figures) <= 1e-6, figures
    png = [r["png_bits_per_dim"] for r in results]
    assert max(png) == min(png)


def test_bits_per_dim_matches_a_by_hand_computation(model_dir):
    result = evaluate_model(str(model_dir), "builtin:photos", limit=6, batch_size=4,
                            progress=False)
    images = photo_patches("test", SIZE).images[:6]
    per_image = reference_bits_per_dim(tiny_model(), images)
    assert result["bits_per_dim"] == pytest.approx(per_image.mean().item(), abs=1e-6)
    spread = per_image.std().item() * 2.5706 / math.sqrt(6)  # t_{0.975, 5} * s / sqrt(n)
    assert result["ci95"] == pytest.approx(spread, rel=1e-4)
    assert result["png_bits_per_dim"] == pytest.approx(png_bits_per_dim(images))
    assert result["webp_bits_per_dim"] == pytest.approx(webp_bits_per_dim(images))


def test_an_image_folder_counts_every_image_once(tmp_path, model_dir):
    arrays = [save_png(tmp_path / "valid_8x8" / f"{i:02d}.png", seed=i) for i in range(5)]
    result = evaluate_model(str(model_dir), str(tmp_path / "valid_8x8"), split="valid",
                            batch_size=2, progress=False)
    assert result["num_images"] == 5
    assert set(REQUIRED_KEYS) <= set(result)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (5, 3, 8, 8) sorted names
    expected = reference_bits_per_dim(tiny_model(), images).mean().item()
    assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-6)
    assert result["images_per_second"] > 0 and result["seconds"] > 0


def test_unreadable_images_are_skipped_and_counted_once(tmp_path, model_dir):
    folder = tmp_path / "valid_8x8"
    for i in range(3):
        save_png(folder / f"{i}.png", seed=i)
    (folder / "1.png").write_bytes(b"not a png")
    with pytest.raises(ImageDataError, match="1.png"):
        evaluate_model(str(model_dir), str(folder), progress=False)
    result = evaluate_model(str(model_dir), str(folder), on_error="skip", progress=False)
    assert result["num_images"] == 2 and result["skipped"] == 1
    readable = torch.stack([torch.from_numpy(np.array(PIL.Image.open(folder / f"{i}.png")))
                            for i in (0, 2)]).permute(0, 3, 1, 2)
    expected = reference_bits_per_dim(tiny_model(), readable).mean().item()
    assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-6)


def test_a_model_instance_and_no_baselines(model_dir):
    by_path = evaluate_model(str(model_dir), "builtin:photos", limit=3, progress=False)
    by_instance = evaluate_model(tiny_model(), "builtin:photos", limit=3, baselines=False,
                                 progress=False)
    assert by_instance["bits_per_dim"] == pytest.approx(by_path["bits_per_dim"], abs=1e-6)
    assert by_instance["png_bits_per_dim"] is None and by_instance["webp_bits_per_dim"] is None
    assert by_instance["model"] == "ImageTransformer"


def test_a_class_conditional_model_is_given_the_labels(tmp_path):
    model = tiny_model(num_classes=2)
    arrays = {}
    for label in ("cat", "dog"):
        for i in range(2):
            arrays[label, i] = save_png(tmp_path / "data" / "test" / label / f"{i}.png",
                                        seed=10 * len(arrays))
    result = evaluate_model(model, str(tmp_path / "data"), batch_size=3, progress=False)
    source = load_images(str(tmp_path / "data"), "test", SIZE)
    items = [source[i] for i in range(len(source))]
    images = torch.stack([item["image"] for item in items])
    labels = torch.tensor([item["label"] for item in items])
    assert sorted(labels.tolist()) == [0, 0, 1, 1]
    expected = reference_bits_per_dim(model, images, labels).mean().item()
    assert result["bits_per_dim"] == pytest.approx(expected, abs=1e-6)
    unconditioned = reference_bits_per_dim(model, images, 1 - labels).mean().item()
    assert abs(unconditioned - expected) > 1e-4  # the labels did matter


def test_a_class_conditional_model_needs_labelled_data():
    with pytest.raises(ImageDataError, match="class-conditional"):
        evaluate_model(tiny_model(num_classes=3), "builtin:photos", limit=2, progress=False)


def test_data_of_another_size_says_what_the_model_expects(tmp_path, model_dir):
    save_png(tmp_path / "valid_16x16" / "a.png", seed=0, size=16)
    with pytest.raises(ImageDataError, match=r"expects 8x8 images.*16x16"):
        evaluate_model(str(model_dir), str(tmp_path / "valid_16x16"), progress=False)


def test_empty_data_is_an_error(model_dir):
    with pytest.raises(ImageDataError, match="no images"):
        evaluate_model(str(model_dir), "builtin:photos", limit=0, progress=False)


# ---------------------------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------------------------


def test_cli_eval_bpd_prints_a_json_last_line(capsys, model_dir):
    code, out, _ = run_cli(capsys, "eval-bpd", "--model", str(model_dir), "--data",
                           "builtin:photos", "--limit", "4", "--batch-size", "3", "--json")
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert REQUIRED_KEYS <= set(result)
    assert result["num_images"] == 4 and result["split"] == "test"
    direct = evaluate_model(str(model_dir), "builtin:photos", limit=4, progress=False)
    assert result["bits_per_dim"] == pytest.approx(direct["bits_per_dim"], abs=1e-6)


def test_cli_eval_bpd_without_json_prints_a_summary_too(capsys, model_dir):
    code, out, err = run_cli(capsys, "eval-bpd", "--model", str(model_dir), "--data",
                             "builtin:photos", "--limit", "2", "--no-baselines")
    assert code == 0
    assert "bits/dim" in err
    assert json.loads(out.strip().splitlines()[-1])["png_bits_per_dim"] is None


def test_cli_mismatched_size_is_a_clear_error_without_traceback(capsys, tmp_path, model_dir):
    save_png(tmp_path / "valid_32x32" / "a.png", seed=0, size=32)
    code, out, err = run_cli(capsys, "eval-bpd", "--model", str(model_dir), "--data",
                             str(tmp_path / "valid_32x32"), "--json")
    assert code == 2
    assert "expects 8x8 images" in err and "32x32" in err
    assert "Traceback" not in err and out == ""


def test_cli_missing_model_is_a_clear_error(capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(capsys, "eval-bpd", "--model", str(tmp_path / "empty"), "--data",
                           "builtin:photos")
    assert code == 2 and "config.json" in err and "Traceback" not in err


def test_cli_info_reports_the_parameter_count(capsys):
    code, out, _ = run_cli(capsys, "info", "--config", "small", "--json")
    assert code == 0
    info = json.loads(out)
    assert info["parameters"] == parameter_count(ImageTransformer(get_config("small")))
    assert info["parameters"] > 100_000 and info["sequence_length"] == 32 * 32 * 3


def test_cli_sample_writes_a_png_grid(capsys, tmp_path, model_dir):
    out_path = tmp_path / "grid.png"
    code, out, _ = run_cli(capsys, "sample", "--model", str(model_dir), "--num", "2", "--out",
                           str(out_path))
    assert code == 0
    report = json.loads(out.strip().splitlines()[-1])
    assert report["num_images"] == 2 and Path(report["out"]) == out_path
    with PIL.Image.open(out_path) as grid:
        assert grid.format == "PNG" and grid.mode == "RGB"
        assert grid.size == (2 + 2 * (SIZE + 2), 2 + SIZE + 2)  # 2 columns, 1 row, padding 2


def test_cli_threads_sets_torch_threads_and_rejects_zero(capsys, tmp_path, model_dir,
                                                         monkeypatch):
    import torch

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    seen: list[int] = []
    code, _, _ = run_cli(capsys, "sample", "--model", str(model_dir), "--num", "1", "--out",
                         str(tmp_path / "g.png"), "--threads", "1")
    assert code == 0 and seen == [1]
    code, _, err = run_cli(capsys, "sample", "--model", str(model_dir), "--threads", "0")
    assert code == 2 and "--threads must be >= 1" in err and seen == [1]
    assert torch.get_num_threads() == before


def test_cli_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    for command in ("info", "train", "eval-bpd", "sample"):
        assert command in usage
    assert main([]) == 0  # no command: help, not a traceback


# ---------------------------------------------------------------------------------------------
# imgtx train, user errors and command groups
# ---------------------------------------------------------------------------------------------

TRAIN = ["train", "--config", "tiny", "--max-steps", "2", "--batch-size", "2", "--eval-every",
         "1", "--eval-images", "3", "--checkpoint-every", "0"]


@pytest.fixture
def image_folder(tmp_path) -> Path:
    for split, count in (("train", 6), ("test", 3)):
        for i in range(count):
            save_png(tmp_path / "folder" / split / f"{i}.png", seed=100 * len(split) + i)
    return tmp_path / "folder"


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_cli_train_writes_metrics_samples_and_a_loadable_model(capsys, tmp_path, image_folder):
    out = tmp_path / "run"
    code, _, _ = run_cli(capsys, *TRAIN, "--data", str(image_folder), "--out", str(out))
    assert code == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [list(r) for r in records] == [["step", "images_seen", "hours", "train_bits_per_dim",
                                           "eval_bits_per_dim", "lr"]] * 2
    assert [(r["step"], r["images_seen"]) for r in records] == [(1, 2), (2, 4)]
    assert json.loads((out / "progress.json").read_text())["images_seen"] == 4
    assert (out / "metrics.png").exists() and list((out / "samples").glob("step_*.png"))
    loaded = ImageTransformer.from_pretrained(out / "final")
    assert loaded.config == get_config("tiny")
    direct = evaluate_model(loaded, str(image_folder), baselines=False, progress=False)
    assert records[-1]["eval_bits_per_dim"] == pytest.approx(direct["bits_per_dim"], abs=1e-6)


@pytest.mark.slow
def test_cli_train_resume_ends_where_an_uninterrupted_run_ends(capsys, tmp_path, image_folder):
    common = [*TRAIN[:-1], "1", "--data", str(image_folder)]  # checkpoint every step
    common[common.index("--max-steps") + 1] = "4"
    assert run_cli(capsys, *common, "--out", str(tmp_path / "straight"))[0] == 0
    interrupted = [*common, "--out", str(tmp_path / "resumed")]
    interrupted[interrupted.index("--max-steps") + 1] = "3"  # mid-epoch (3 batches per epoch)
    assert run_cli(capsys, *interrupted)[0] == 0
    assert run_cli(capsys, *common, "--out", str(tmp_path / "resumed"), "--resume")[0] == 0
    straight = ImageTransformer.from_pretrained(tmp_path / "straight" / "final").state_dict()
    resumed = ImageTransformer.from_pretrained(tmp_path / "resumed" / "final").state_dict()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4]


def test_mirror_half_flips_about_half_the_images_whole_and_keeps_the_labels():
    from imgtx.training.likelihood import mirror_half

    images = torch.randint(0, 256, (64, 3, 5, 5), dtype=torch.uint8)
    labels = torch.arange(64)
    torch.manual_seed(3)
    out = mirror_half({"image": images, "label": labels})
    same = (out["image"] == images).flatten(1).all(1)
    flipped = (out["image"] == images.flip(-1)).flatten(1).all(1)
    assert bool((same | flipped).all()) and 16 < int(flipped.sum()) < 48
    assert out["label"] is labels
    torch.manual_seed(3)
    assert torch.equal(mirror_half({"image": images})["image"], out["image"])


def test_make_grey_gives_luma_in_all_three_channels_with_the_given_probability():
    from imgtx.training.likelihood import make_grey

    images = torch.randint(0, 256, (200, 3, 4, 4), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    out = make_grey({"image": images}, 0.25)["image"]
    grey = (out[:, 0] == out[:, 1]).all(-1).all(-1) & (out[:, 1] == out[:, 2]).all(-1).all(-1)
    assert 25 < int(grey.sum()) < 75  # about 50 of 200
    assert torch.equal(out[~grey], images[~grey])
    r, g, b = images[grey].double().unbind(1)
    luma = 0.299 * r + 0.587 * g + 0.114 * b
    assert (out[grey][:, 0].double() - luma).abs().max() <= 0.5 + 1e-9  # the nearest level
    assert torch.equal(make_grey({"image": images}, 0.0)["image"], images)


@pytest.mark.slow
def test_cli_train_warm_started_with_neighbours_and_mirroring_resumes_exactly(capsys, tmp_path,
                                                                               image_folder):
    """--init grows a trained DMOL model by neighbour inputs; --hflip draws from the run's
    generator, so a resumed run still ends where an uninterrupted one ends."""
    dmol = ["--config", "tiny", "--set", "likelihood=dmol", "--set", "block_length=16",
            "--data", str(image_folder), "--max-steps", "2", "--batch-size", "2",
            "--eval-images", "2", "--checkpoint-every", "1"]
    assert run_cli(capsys, "train", *dmol, "--out", str(tmp_path / "base"))[0] == 0
    grown = ["train", *dmol, "--set", "neighbour_inputs=true", "--init",
             str(tmp_path / "base" / "final"), "--hflip"]
    grown[grown.index("--max-steps") + 1] = "4"
    assert run_cli(capsys, *grown, "--out", str(tmp_path / "straight"))[0] == 0
    cut = [*grown, "--out", str(tmp_path / "resumed")]
    cut[cut.index("--max-steps") + 1] = "3"
    assert run_cli(capsys, *cut)[0] == 0
    assert run_cli(capsys, *grown, "--out", str(tmp_path / "resumed"), "--resume")[0] == 0
    straight = ImageTransformer.from_pretrained(tmp_path / "straight" / "final")
    resumed = ImageTransformer.from_pretrained(tmp_path / "resumed" / "final").state_dict()
    assert straight.config.neighbour_inputs
    assert straight.neighbours.weight.abs().sum() > 0  # trained away from its zero start
    assert all(torch.equal(v, resumed[k]) for k, v in straight.state_dict().items())


@pytest.mark.parametrize("argv, message", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--max-steps", "0"], "--max-steps must be >= 1"),
    (["--minutes", "-1"], "--minutes must be > 0"),
    (["--grad-accum", "0"], "--grad-accum must be >= 1"),
    (["--set", "bogus=1"], "bogus=1"),
    (["--set", "num_layers=abc"], "expected a int"),
    (["--set", "attention=nonsense"], "attention"),
    (["--config", "no-such-config"], "no-such-config"),
    pytest.param(["--report-to", "tensorboard"], "pip install tensorboard",
                 marks=pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None,
                                          reason="TensorBoard is installed")),
])
def test_cli_train_rejects_bad_input_in_one_line_before_any_work(capsys, tmp_path, argv,
                                                                  message):
    out = tmp_path / "run"
    code, stdout, err = run_cli(capsys, *TRAIN, "--out", str(out), *argv)
    assert code == 2 and message in err and "Traceback" not in err
    assert err.startswith("imgtx train: error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists() and stdout == ""


@pytest.mark.parametrize("argv, message", [
    (["sample", "--num", "0"], "--num must be >= 1"),
    (["sample", "--temperature", "-0.5"], "--temperature must be >= 0"),
    (["eval-bpd", "--limit", "0"], "--limit must be >= 1"),
    (["eval-bpd", "--batch-size", "0"], "--batch-size must be >= 1"),
    (["sr", "eval", "--limit", "0"], "--limit must be >= 1"),
    (["sr", "upscale", "in.png", "out.png", "--temperature", "-1"], "--temperature must be"),
])
def test_cli_nonsensical_numbers_exit_2(capsys, tmp_path, model_dir, argv, message):
    code, _, err = run_cli(capsys, *argv, "--model", str(model_dir))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_cli_unknown_config_name_is_a_user_error(capsys):
    code, _, err = run_cli(capsys, "info", "--config", "no-such-config")
    assert code == 2 and "imgtx info: error: " in err and "no-such-config" in err


def test_cli_debug_shows_the_traceback_of_user_errors(capsys, monkeypatch):
    from imgtx.errors import UserError

    monkeypatch.setenv("IMGTX_DEBUG", "1")
    with pytest.raises(UserError, match="no-such-config"):
        main(["info", "--config", "no-such-config"])


def test_cli_other_exceptions_are_bugs_and_keep_their_traceback(monkeypatch):
    import imgtx.cli

    def broken(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(imgtx.cli, "_info", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["info", "--config", "tiny"])


def test_cli_sample_defaults_to_cuda_where_it_is_available(capsys, monkeypatch, model_dir):
    from imgtx.errors import UserError

    devices = []

    def from_pretrained(model, device=None):
        devices.append(device)
        raise UserError("stop here")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ImageTransformer, "from_pretrained", from_pretrained)
    assert run_cli(capsys, "sample", "--model", str(model_dir))[0] == 2
    assert run_cli(capsys, "sample", "--model", str(model_dir), "--device", "cpu")[0] == 2
    assert devices == ["cuda", "cpu"]


def test_cli_command_groups_come_from_entry_points(capsys, monkeypatch):
    import importlib.metadata

    import imgtx.cli

    real = importlib.metadata.entry_points

    def with_a_broken_group(group=None, **kwargs):
        found = list(real(group=group, **kwargs))
        if group == imgtx.cli.COMMAND_GROUPS:
            found.append(importlib.metadata.EntryPoint(
                name="broken", value="imgtx.no_such_module:register", group=group))
        return found

    assert "sr" in {e.name for e in real(group=imgtx.cli.COMMAND_GROUPS)}
    monkeypatch.setattr(importlib.metadata, "entry_points", with_a_broken_group)
    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out
    assert "sr" in usage and "unavailable command groups: broken" in usage
    assert '"sr"' not in Path(imgtx.cli.__file__).read_text()  # the core names no family


@pytest.mark.parametrize("command", [["info", "--config", "small", "--json"],
                                     ["info", "--config", "all", "--json"]])
def test_the_transformer_group_and_its_top_level_aliases_print_the_same(command, capsys):
    """``imgtx transformer COMMAND`` is the Image Transformer's group, shaped like ``imgtx sr``
    and ``imgtx gan``; the documented top-level commands are aliases of it."""
    assert main(command) == 0
    alias = capsys.readouterr().out
    assert main(["transformer", *command]) == 0
    assert capsys.readouterr().out == alias and alias.strip()
    assert main(["transformer", "info", "--config", "smal"]) == 2
    assert "did you mean 'small'" in capsys.readouterr().err
