"""Official TransGAN checkpoints and training steps, without the official code: the fixture in
tests/fixtures/official_transgan was made by the official code (VITA-Group/TransGAN@6b85440,
see its README.md) at a tiny width, and imgtx must reproduce its outputs and its weights after
one whole training iteration, draw for draw."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from imgtx.cli import main
from imgtx.gan.transgan import images_to_uint8

FIXTURE = Path(__file__).parent / "fixtures" / "official_transgan"
# The imgtx side of scripts/check_official_transgan.py (it imports no official code).
SCRIPT_PATH = Path(__file__).parents[1] / "scripts" / "official_transgan_replay.py"
_spec = importlib.util.spec_from_file_location("official_transgan_replay", SCRIPT_PATH)
check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check)

# The fixture's size as config overrides of transgan-cifar10 (see meta.json).
SIZE = ["--set", "image_size=8", "--set", "latent_dim=8", "--set", "bottom_width=2",
        "--set", "dim=64", "--set", "depths=[0,1,1]", "--set-d", "image_size=8",
        "--set-d", "dim=32", "--set-d", "embed_dims=[24,8]", "--set-d", "depths=[[1],[1]]"]

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture
def float64_default():
    """The official run made its draws in float64 (its default dtype); so does the replay."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def test_fixture_is_small():
    assert sum(f.stat().st_size for f in FIXTURE.iterdir()) < 1_000_000


def test_forward_and_one_training_iteration_match_the_official_code(tmp_path, float64_default):
    case, expected = check.load_fixture(FIXTURE)
    ours = check.imgtx_run(case, torch.float64, tmp_path)
    assert (ours["g_out"] - expected["g_out"]).abs().max() <= 1e-5
    assert (ours["d_out"] - expected["d_out"].flatten()).abs().max() <= 1e-5
    configs = check.imgtx_configs(case["args"])
    difference = check.max_difference(expected["after"], ours["after"], *configs)
    assert max(difference.values()) <= 1e-5, difference
    # The comparison is not vacuous: the step moved every network well beyond the tolerance.
    from imgtx.gan.official import models_from_official, read_official_checkpoint

    before = models_from_official(read_official_checkpoint(case["checkpoint"]), *configs)
    start = {"generator": before["generator"].state_dict(), "ema": before["ema"].state_dict(),
             "discriminator": before["discriminator"].state_dict()}
    moved = check.max_difference(expected["after"], start, *configs)
    assert min(moved.values()) > 1e-4, moved


def test_the_official_d_gradient_leak_is_what_the_fixture_needs(tmp_path, float64_default):
    """isolate_d (imgtx's fix: D frozen in the G step) changes D's next step: the official
    loop's G-step gradients in D are part of the reproduced iteration."""
    case, expected = check.load_fixture(FIXTURE)
    ours = check.imgtx_run(case, torch.float64, tmp_path, isolate_d=True)
    difference = check.max_difference(expected["after"], ours["after"],
                                      *check.imgtx_configs(case["args"]))
    assert difference["discriminator"] > 1e-4


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_convert_official_then_sample_gives_the_official_generator_images(tmp_path, capsys):
    out = tmp_path / "converted"
    code, _, err = run_cli(capsys, "gan", "convert-official", str(FIXTURE / "checkpoint.pth"),
                           "--config", "transgan-cifar10", "--out", str(out), *SIZE)
    assert code == 0, err
    assert (out / "model.safetensors").is_file()
    assert (out / "discriminator" / "model.safetensors").is_file()
    assert (out / "generator" / "model.safetensors").is_file()
    samples = tmp_path / "samples"
    code, _, err = run_cli(capsys, "gan", "sample", "--model", str(out), "--num", "4",
                           "--seed", "0", "--out-dir", str(samples), "--device", "cpu")
    assert code == 0, err
    ours = torch.stack([torch.from_numpy(np.array(PIL.Image.open(p))).permute(2, 0, 1)
                        for p in sorted(samples.glob("*.png"))])  # (4, 3, 8, 8) uint8
    _, expected = check.load_fixture(FIXTURE)
    official = images_to_uint8(expected["sample_out"])
    assert ours.shape == official.shape
    assert (ours.int() - official.int()).abs().max() <= 1  # <= 1/255


def broken_checkpoint(path: Path, change: str) -> Path:
    state = torch.load(FIXTURE / "checkpoint.pth", map_location="cpu", weights_only=True)
    generator = state["avg_gen_state_dict"]
    if change == "missing":
        del generator["l1.bias"]
    elif change == "extra":
        generator["l1.extra"] = torch.zeros(3)
    else:  # a pickled object that is not a tensor or a plain container
        state["args"] = argparse.Namespace(latent_dim=8)
    torch.save(state, path)
    return path


@pytest.mark.parametrize("change, message", [("missing", "lacks tensor 'l1.bias'"),
                                             ("extra", "'l1.extra'"),
                                             ("pickled", "weights_only")])
def test_a_bad_checkpoint_is_one_line_exit_2_and_nothing_written(tmp_path, capsys, change,
                                                                 message):
    path = broken_checkpoint(tmp_path / "bad.pth", change)
    out = tmp_path / "converted"
    code, stdout, err = run_cli(capsys, "gan", "convert-official", str(path), "--config",
                                "transgan-cifar10", "--out", str(out), *SIZE)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and stdout == ""
    assert not out.exists() and not (tmp_path / "converted.partial").exists()


def test_a_checkpoint_of_another_size_names_the_first_mismatch(tmp_path, capsys):
    code, _, err = run_cli(capsys, "gan", "convert-official", str(FIXTURE / "checkpoint.pth"),
                           "--config", "transgan-cifar10", "--out", str(tmp_path / "o"))
    assert code == 2 and "does not match" in err
    assert not (tmp_path / "o").exists()


def test_a_bare_generator_state_dict_converts_to_a_generator_only(tmp_path, capsys):
    state = torch.load(FIXTURE / "checkpoint.pth", map_location="cpu", weights_only=True)
    bare = {f"module.{k}": v for k, v in state["avg_gen_state_dict"].items()}  # saved from DDP
    torch.save(bare, tmp_path / "g.pth")
    code, _, err = run_cli(capsys, "gan", "convert-official", str(tmp_path / "g.pth"),
                           "--config", "transgan-cifar10", "--out", str(tmp_path / "o"), *SIZE)
    assert code == 0, err
    assert (tmp_path / "o" / "model.safetensors").is_file()
    assert not (tmp_path / "o" / "discriminator").exists()
