"""GAN training settings that count (``imgtx.gan.train``, ``imgtx gan train``'s options).

Spec:
* ``s`` D steps come with ``ceil(s / n_critic)`` G steps (G steps on run steps 0, n, 2n, ...),
  and the exported model card says so.
* ``--loss-option NAME=VALUE`` is merged into the recipe's loss options (the recipe's
  ``drift_of_mean`` stays) and reads ``true``/``false``, integers and floats; a name the loss
  does not take is a one-line error.
* ``isolate_d`` (``--[no-]isolate-d``) is off in the paper recipes only and reaches the step.
* A ``kimg`` budget counts the real images of all processes: with P processes the run takes
  ``ceil(1000 kimg / (batch x grad_accum x P))`` steps.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from imgtx.errors import UserError
from imgtx.gan import train as gan_train
from imgtx.gan.cli import add_train_arguments, parse_loss_options, train_from_arguments
from imgtx.gan.configs import GAN_CONFIGS, gan_entry
from imgtx.gan.step import generator_steps, is_generator_step
from imgtx.gan.train import GANTrainSettings, settings_from_registry, train_gan

TINY = gan_entry("transgan-tiny")


@pytest.mark.parametrize("n_critic", [1, 2, 4, 5])
def test_generator_steps_count_the_run_steps_that_train_g(n_critic):
    for d_steps in range(0, 23):
        counted = sum(is_generator_step(index, n_critic) for index in range(d_steps))
        assert generator_steps(d_steps, n_critic) == counted == math.ceil(d_steps / n_critic)


def test_the_model_card_counts_g_steps_as_the_step_takes_them(tmp_path):
    exported = {}

    def export(name, ema=False, path=None, metrics=None):
        exported[name] = metrics
        return Path(path)

    run = SimpleNamespace(state=SimpleNamespace(step=5, images_seen=320), hours=lambda: 0.0,
                          out=tmp_path, export=export)
    settings = GANTrainSettings(out=str(tmp_path), max_steps=5, n_critic=4)
    gan_train._export(run, settings, {})
    assert exported["G"]["D steps"] == 5
    assert exported["G"]["G steps"] == 2  # run steps 0 and 4 (5 // 4 would say 1)


def test_loss_option_values_are_bools_ints_and_floats():
    assert parse_loss_options(["drift_of_mean=false", "gp_weight=10", "drift=1e-3",
                               "phi=True"]) == {"drift_of_mean": False, "gp_weight": 10,
                                                "drift": 0.001, "phi": True}
    assert type(parse_loss_options(["gp_weight=10"])["gp_weight"]) is int
    for bad in ("gp_weight", "=3", "gp_weight=ten"):
        with pytest.raises(UserError, match="--loss-option"):
            parse_loss_options([bad])


def resolved_from_command(monkeypatch, *flags: str) -> GANTrainSettings:
    """The settings ``imgtx gan train --config transgan-cifar10 FLAGS`` trains with."""
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(["--config", "transgan-cifar10", "--out", "unused",
                              "--max-steps", "1", *flags])
    seen = []
    monkeypatch.setattr(gan_train, "train_gan",
                        lambda g, d, settings, wrap_step=None: seen.append(settings))
    train_from_arguments(args)
    return seen[0]


def test_loss_options_merge_into_the_recipe(monkeypatch):
    assert GAN_CONFIGS["transgan-cifar10"].train["loss_options"] == {"drift_of_mean": True}
    settings = resolved_from_command(monkeypatch, "--loss-option", "gp_weight=5")
    assert settings.loss_options == {"drift_of_mean": True, "gp_weight": 5}
    settings = resolved_from_command(monkeypatch, "--loss-option", "drift_of_mean=false")
    assert settings.loss_options == {"drift_of_mean": False}
    assert resolved_from_command(monkeypatch).loss_options == {"drift_of_mean": True}
    # another loss does not inherit the recipe's WGAN-GP options
    settings = resolved_from_command(monkeypatch, "--loss", "logistic-r1", "--loss-option",
                                     "r1_gamma=1")
    assert settings.loss_options == {"r1_gamma": 1}
    with pytest.raises(UserError, match=r"\['r1_gamma'\] are not options of wgan-gp"):
        resolved_from_command(monkeypatch, "--loss-option", "r1_gamma=1")


PAPER_RECIPES = ("transgan-cifar10", "transgan-stl10", "transgan-celebahq256",
                 "transgan-church256")


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_isolate_d_is_off_in_the_paper_recipes_only_and_reaches_the_step(monkeypatch, tmp_path):
    """The TransGAN paper recipes reproduce the official loop (D keeps the G loss's gradient);
    every other recipe and the default freeze D in the G step."""
    for name, entry in GAN_CONFIGS.items():
        expected = name not in PAPER_RECIPES
        assert settings_from_registry(entry.train, max_steps=1).isolate_d is expected, name
    assert resolved_from_command(monkeypatch).isolate_d is False  # transgan-cifar10: official
    assert resolved_from_command(monkeypatch, "--isolate-d").isolate_d is True
    monkeypatch.undo()
    steps = []
    for isolate in (False, True):
        settings = settings_from_registry(
            TINY.train, out=str(tmp_path / str(isolate)), data="builtin:digits", max_steps=1,
            batch_size=4, eval_every=0, checkpoint_every=0, num_samples=0, threads=1,
            isolate_d=isolate)
        train_gan(TINY.config, TINY.discriminator, settings,
                  wrap_step=lambda step: steps.append(step) or step)
        assert steps[-1].isolate_d is isolate


@pytest.mark.parametrize("processes", [1, 2, 3])
def test_a_kimg_budget_counts_the_images_of_every_process(monkeypatch, tmp_path, processes):
    monkeypatch.setenv("WORLD_SIZE", str(processes))
    settings = GANTrainSettings(out=str(tmp_path), kimg=0.1, batch_size=8, grad_accum=2)
    global_batch = 8 * 2 * processes  # real images per D step over all processes
    assert settings.max_steps == {1: 7, 2: 4, 3: 3}[processes]  # ceil(100 / global batch)
    assert settings.max_steps * global_batch >= 100 > (settings.max_steps - 1) * global_batch
