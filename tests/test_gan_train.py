"""GAN training on the shared run (``imgtx.gan.train``, ``imgtx.gan.step``) and the ``imgtx gan
train|sample|eval`` commands, at the test-sized ``transgan-tiny`` config on CPU."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import PIL.Image
import pytest
import torch
from torch.utils.data import DataLoader

from imgtx.cli import main
from imgtx.data import collate_images
from imgtx.errors import UserError
from imgtx.gan.configs import gan_entry
from imgtx.gan.losses import make_loss
from imgtx.gan.sample import load_generator
from imgtx.gan.step import GANStep, is_generator_step
from imgtx.gan.train import GANTrainSettings, build_models, settings_from_registry, train_gan
from imgtx.hub import load_safetensors
from imgtx.training import EMASettings, Run, Schedule

TINY = gan_entry("transgan-tiny")


pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def tiny_pair(**generator_overrides):
    g_config = dataclasses.replace(copy.deepcopy(TINY.config), **generator_overrides)
    return g_config, copy.deepcopy(TINY.discriminator)


def toy_loader(count: int, batch_size: int) -> DataLoader:
    """``count`` random 32x32 uint8 images (label 0), in a fixed order."""
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=torch.Generator().manual_seed(1),
                           dtype=torch.uint8)
    items = [{"image": image, "label": 0} for image in images]
    return DataLoader(items, batch_size=batch_size, collate_fn=collate_images, drop_last=True)


def run_steps(tmp_path: Path, *, max_steps: int, batch_size: int, grad_accum: int,
              n_critic: int, loss: str = "wgan-gp"):
    """A GAN on a bare Run; returns (run, initial G state, initial D state)."""
    run = Run(GANTrainSettings(out=str(tmp_path), max_steps=max_steps, batch_size=batch_size,
                               grad_accum=grad_accum, eval_every=0, checkpoint_every=0))
    G, D = build_models(*tiny_pair())
    before = (copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict()))
    optimizers = {name: torch.optim.Adam(model.parameters(), 1e-3, betas=(0.0, 0.99))
                  for name, model in (("G", G), ("D", D))}
    run.prepare({"G": G, "D": D}, optimizers, {n: Schedule(0, "constant") for n in optimizers},
                {"G": EMASettings(1000)}, data=toy_loader(16, batch_size))
    run.fit(GANStep(make_loss(loss), n_critic, 5.0, G.config.latent_dim))
    return run, *before


def changed(model: torch.nn.Module, before: dict) -> int:
    return sum(not torch.equal(value, before[name]) for name, value in model.state_dict().items())


@pytest.mark.parametrize("loss", ["wgan-gp", "hinge", "logistic-r1"])
def test_one_step_changes_both_networks(tmp_path, loss):
    run, g_before, d_before = run_steps(tmp_path, max_steps=1, batch_size=4, grad_accum=1,
                                        n_critic=1, loss=loss)
    assert changed(run.unwrap("G"), g_before) > 0
    assert changed(run.unwrap("D"), d_before) > 0
    for name in ("G", "D"):
        assert all(torch.isfinite(p).all() for p in run.unwrap(name).parameters())


def test_generator_steps_every_n_critic_batches():
    assert [is_generator_step(i, 3) for i in range(6)] == [True, False, False] * 2


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_gradient_accumulation_keeps_the_step_counts(tmp_path, grad_accum):
    """4 D steps with n_critic 2 are 4 D and 2 G optimiser steps, whatever the accumulation
    (LambdaLR counts real optimiser steps only; the EMA follows each G step)."""
    run, _, _ = run_steps(tmp_path, max_steps=4, batch_size=4 // grad_accum,
                          grad_accum=grad_accum, n_critic=2)
    assert run.schedulers["D"].last_epoch == 4
    assert run.schedulers["G"].last_epoch == 2
    assert run.emas["G"].updates == 2
    assert run.state.images_seen == 16


def tiny_settings(out: Path, **overrides) -> GANTrainSettings:
    values = dict(out=str(out), data="builtin:digits", max_steps=2, batch_size=4,
                  n_critic=2, eval_every=0, checkpoint_every=0, num_samples=4, threads=1)
    return settings_from_registry(TINY.train, **{**values, **overrides})


def test_resume_continues_exactly(tmp_path):
    """2 steps, then --resume to 4, give the weights of a straight 4-step run (same process,
    CPU): weights, optimiser moments, EMA, data position and every RNG come back."""
    straight = train_gan(*tiny_pair(), tiny_settings(tmp_path / "straight", max_steps=4))
    train_gan(*tiny_pair(), tiny_settings(tmp_path / "split"))
    resumed = train_gan(*tiny_pair(), tiny_settings(tmp_path / "split", max_steps=4, resume=True))
    assert json.loads((tmp_path / "split" / "progress.json").read_text())["step"] == 4
    for sub in (".", "discriminator"):
        a = load_safetensors(straight / sub / "model.safetensors")
        b = load_safetensors(resumed / sub / "model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), sub


def test_export_holds_ema_generator_and_discriminator(tmp_path):
    final = train_gan(*tiny_pair(), tiny_settings(tmp_path, num_samples=4))
    generator = load_generator(str(final))
    assert generator.config == TINY.config
    assert generator.generate(2, seed=3).shape == (2, 3, 32, 32)
    assert (tmp_path / "samples").is_dir() and list((tmp_path / "samples").glob("*.png"))
    with pytest.raises(UserError, match="not a generator"):
        load_generator(str(final / "discriminator"))


def test_memory_options_train(tmp_path):
    """bf16 autocast, per-block activation checkpointing (G and D) and accumulation together."""
    g_config, d_config = tiny_pair(checkpoint_blocks=True)
    final = train_gan(g_config, d_config, tiny_settings(tmp_path, mixed_precision="bf16",
                                                        grad_accum=2, n_critic=1))
    assert json.loads((final / "discriminator" / "config.json").read_text())["checkpoint_blocks"]
    weights = load_safetensors(final / "model.safetensors")
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights.values())


def test_conditional_training_takes_labels_from_the_data(tmp_path):
    final = train_gan(*tiny_pair(num_classes=10), tiny_settings(tmp_path / "c"))
    assert load_generator(str(final)).config.num_classes == 10
    with pytest.raises(UserError, match="class-conditional"):
        train_gan(*tiny_pair(num_classes=10),
                  tiny_settings(tmp_path / "p", data="builtin:photos32"))


@pytest.mark.parametrize("bad", [{"n_critic": 0}, {"batch_size": 0}, {"max_steps": 0},
                                 {"kimg": -1.0, "max_steps": None}, {"loss": "nope"},
                                 {"ema_kimg": 0.0}, {"betas": (0.0, 1.0)}])
def test_nonsense_numbers_are_user_errors(tmp_path, bad):
    with pytest.raises(UserError):
        tiny_settings(tmp_path, **bad)


def test_kimg_budget_sets_the_steps(tmp_path):
    settings = tiny_settings(tmp_path, max_steps=None, kimg=0.1, batch_size=8, grad_accum=2)
    assert settings.max_steps == 7  # ceil(100 / 16)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("gan")
    assert main(["gan", "train", "--config", "transgan-tiny", "--data", "builtin:digits",
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--threads", "1",
                 "--num-samples", "0", "--set", "latent_dim=16"]) == 0
    return out / "final"


def test_cli_sample_out_dir_writes_n_pngs(trained, tmp_path, capsys):
    assert main(["gan", "sample", "--model", str(trained), "--num", "5", "--out-dir",
                 str(tmp_path / "png"), "--seed", "2", "--device", "cpu"]) == 0
    files = sorted((tmp_path / "png").glob("*.png"))
    assert len(files) == 5
    assert all(PIL.Image.open(f).size == (32, 32) for f in files)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 5
    assert main(["gan", "sample", "--model", str(trained), "--num", "4", "--out",
                 str(tmp_path / "grid.png")]) == 0
    assert PIL.Image.open(tmp_path / "grid.png").size == (2 * 34 + 2, 2 * 34 + 2)


def test_cli_sample_refuses_other_families(trained, tmp_path, capsys):
    code = main(["gan", "sample", "--model", str(trained / "discriminator"), "--num", "2",
                 "--out", str(tmp_path / "x.png")])
    assert code == 2 and "not a generator" in capsys.readouterr().err
    imgtx_model = Path(__file__).parents[1] / "checkpoints" / "imgtx-photos32-small"
    code = main(["gan", "sample", "--model", str(imgtx_model), "--num", "2", "--out",
                 str(tmp_path / "x.png")])
    assert code == 2 and "not a GAN generator" in capsys.readouterr().err


def test_cli_eval_json_has_the_keys(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("IMGTX_CACHE", str(tmp_path))  # reference statistics cached here
    assert main(["gan", "eval", "--model", str(trained), "--data", "builtin:photos32",
                 "--split", "test", "--num-samples", "8", "--features", "random",
                 "--baselines", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("fid", "kid", "kid_std", "num_samples", "features", "untrained_fid",
                "untrained_kid", "floor_fid"):
        assert key in result
    assert result["num_samples"] == 8 and result["features"] == "random"
