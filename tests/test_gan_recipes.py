"""Spec for registry recipes: every key of every family's ``train`` dict is a setting that takes
effect, and the TransGAN recipes mean what the official code's flags mean
(VITA-Group/TransGAN@6b85440 ``exps/*_train.py``, ``functions.py::train``).

G's batch is counted with a forward hook on G (installed through ``train_gan``'s per-step hook):
the latents of every G forward with gradients, summed over micro-batches and processes, per run
step. The models are the ``transgan-cifar10`` layout at a tiny width, so a step takes a second.

``torchrun --nproc_per_node 2 tests/test_gan_recipes.py OUT BATCH GRAD_ACCUM`` is the two-process
run of the G-batch test; each process writes its counts to ``OUT/latents_<rank>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from imgtx.cli import main
from imgtx.errors import UserError
from imgtx.gan.configs import GAN_CONFIGS, gan_entry
from imgtx.gan.train import (
    GANTrainSettings,
    resolved_recipe,
    settings_from_registry,
    train_named,
)
from imgtx.training.ema import EMASettings, ema_beta

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# transgan-cifar10 at a tiny width: G only has its 8x8 stage's block, D sees 4x4 patches.
TINY_CIFAR = {"generator": {"dim": 64, "heads": 2, "depths": (1, 0, 0)},
              "discriminator": {"dim": 16, "embed_dims": (12, 4), "patch_size": 4,
                                "depths": ((1,), (1,))}}
QUIET = {"data": "builtin:digits", "eval_every": 0, "checkpoint_every": 0, "num_samples": 0,
         "threads": 1}


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Each in-process run starts from a blank accelerate state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


# --------------------------------------------------------------------------------------------
# Every registry key takes effect
# --------------------------------------------------------------------------------------------


def _captured_settings(monkeypatch, tmp_path, family: str, name: str):
    """The settings the family's ``train`` command builds for registry entry ``name`` (its
    training function replaced by a recorder, so nothing trains)."""
    seen = {}

    def record(*args, **kwargs):
        seen["settings"] = next(a for a in args if hasattr(a, "max_steps"))
        seen["kwargs"] = kwargs
        return tmp_path

    if family == "gan":
        import imgtx.gan.train

        monkeypatch.setattr(imgtx.gan.train, "train_gan", record)
        argv = ["gan", "train"]
    elif family == "sr":
        import imgtx.sr.train

        monkeypatch.setattr(imgtx.sr.train, "train", record)
        argv = ["sr", "train"]
    else:
        import imgtx.train

        monkeypatch.setattr(imgtx.train, "train", record)
        argv = ["train"]
    monkeypatch.chdir(ROOT)  # recipes may name shipped checkpoints by relative path
    assert main([*argv, "--config", name, "--out", str(tmp_path / "run"), "--max-steps", "1"]) == 0
    return seen["settings"]


def _registries() -> list[tuple[str, str, dict]]:
    from imgtx.configs import CONFIGS
    from imgtx.sr.configs import CONFIGS as SR_CONFIGS

    return ([("gan", name, entry.train) for name, entry in GAN_CONFIGS.items()]
            + [("imgtx", name, entry.train) for name, entry in CONFIGS.items()]
            + [("sr", name, entry.train) for name, entry in SR_CONFIGS.items()])


def _same(value, expected) -> bool:
    if isinstance(expected, (tuple, list)):
        return tuple(value) == tuple(expected)
    return value == expected


@pytest.mark.parametrize("family, name, recipe", _registries(),
                         ids=[f"{f}:{n}" for f, n, _ in _registries()])
def test_every_recipe_key_becomes_the_setting_the_train_command_uses(
        family, name, recipe, monkeypatch, tmp_path):
    settings = _captured_settings(monkeypatch, tmp_path, family, name)
    for key, value in recipe.items():
        assert hasattr(settings, key), f"{name}: recipe key {key!r} is not a setting"
        assert _same(getattr(settings, key), value), (name, key, getattr(settings, key), value)


def test_the_paper_recipes_carry_the_official_batch_accumulation_and_ema():
    """exps/cifar_train.py: -gen_bs 128 -dis_bs 64 --ema_kimg 500 --ema_warmup 0.1;
    exps/stl_train.py: -gen_bs 64 -dis_bs 32 --n_critic 5 --ema_warmup 0.05;
    exps/celeba_hq_256_train.py: -gen_bs 32 -dis_bs 16 --accumulated_times 4
    --g_accumulated_times 4 --ema 0.995; exps/church_256_train.py: -gen_bs 16 -dis_bs 16
    --accumulated_times 4 --g_accumulated_times 8 --ema 0.995."""
    expected = {
        "transgan-cifar10": (64, 1, 128, 4, 500, 0.1, None),
        "transgan-stl10": (32, 1, 64, 5, 500, 0.05, None),
        "transgan-celebahq256": (16, 4, 32 * 4, 4, None, None, 0.995),
        "transgan-church256": (16, 4, 16 * 8, 4, None, None, 0.995),
    }
    keys = ("batch_size", "grad_accum", "g_batch_size", "n_critic", "ema_kimg", "ema_warmup",
            "ema_decay")
    for name, values in expected.items():
        settings = settings_from_registry(gan_entry(name).train, max_steps=1)
        assert tuple(getattr(settings, key) for key in keys) == values, name


def test_an_unknown_recipe_key_is_an_error_where_the_registry_is_read(monkeypatch, tmp_path,
                                                                        capsys):
    with pytest.raises(UserError, match="accumulate"):
        settings_from_registry({"batch_size": 16, "accumulate": 4}, max_steps=1)
    entry = gan_entry("transgan-tiny")
    monkeypatch.setitem(entry.train, "ema", 0.995)  # the key the 256^2 recipes once held
    code = main(["gan", "train", "--config", "transgan-tiny", "--out", str(tmp_path / "run"),
                 "--max-steps", "1"])
    assert code == 2
    error = capsys.readouterr().err.strip()
    assert "ema" in error and len(error.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_info_shows_the_resolved_recipe_beside_the_parameter_counts(capsys):
    assert main(["gan", "info", "--config", "transgan-cifar10", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["generator_params"] == 83_312_495
    train = row["train"]
    assert (train["g_batch_size"], train["batch_size"], train["n_critic"]) == (128, 64, 4)
    assert (train["ema_kimg"], train["ema_warmup"], train["ema_decay"]) == (500, 0.1, None)
    train = resolved_recipe(gan_entry("transgan-church256").train)  # what info shows
    assert (train["grad_accum"], train["g_batch_size"], train["ema_decay"]) == (4, 128, 0.995)
    assert train["ema_kimg"] is None


# --------------------------------------------------------------------------------------------
# The EMA: a half-life or a decay per G step
# --------------------------------------------------------------------------------------------


def test_a_given_ema_replaces_the_recipe_s_ema():
    fixed = gan_entry("transgan-celebahq256").train
    settings = settings_from_registry(fixed, max_steps=1, ema_kimg=5)
    assert (settings.ema_kimg, settings.ema_warmup, settings.ema_decay) == (
        5, GANTrainSettings.ema_warmup, None)
    settings = settings_from_registry(gan_entry("transgan-cifar10").train, max_steps=1,
                                      ema_decay=0.99)
    assert (settings.ema_kimg, settings.ema_warmup, settings.ema_decay) == (None, None, 0.99)
    with pytest.raises(UserError, match="ema_decay"):
        settings_from_registry({}, max_steps=1, ema_decay=1.0)
    with pytest.raises(UserError, match="not both"):
        GANTrainSettings(max_steps=1, ema_decay=0.9).validate()


@pytest.mark.parametrize("decay, batch", [(0.995, 64), (0.9999, 32), (0.5, 8)])
def test_a_decay_per_update_is_the_half_life_of_batch_ln2_over_minus_ln_decay(decay, batch):
    assert ema_beta(EMASettings(decay=decay), images_seen=10**6, batch_images=batch) == decay
    half_life = batch * math.log(2) / -math.log(decay)
    beta = ema_beta(EMASettings(half_life, warmup_ratio=None), images_seen=0, batch_images=batch)
    assert beta == pytest.approx(decay, rel=1e-12)


def test_ema_decay_is_applied_once_per_g_step(tmp_path):
    """The exported EMA generator equals ``ema <- d ema + (1 - d) G``, taken after each G
    optimiser step from the initial G (TransGAN functions.py with --ema_warmup 0: beta = --ema
    at every G step)."""
    decay, initial, after_g_steps = 0.75, {}, []

    def parameters(run) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in run.unwrap("G").named_parameters()}

    def wrap(step):
        def hooked(run, batch):
            if not initial:
                initial.update(parameters(run))  # the EMA copy starts as this G
            figures = step(run, batch)
            if "g_loss" in figures:
                after_g_steps.append(parameters(run))
            return figures
        return hooked

    final = train_named("transgan-tiny", wrap_step=wrap, **QUIET, out=str(tmp_path / "run"),
                        max_steps=5, n_critic=2, batch_size=4, ema_decay=decay)
    assert len(after_g_steps) == 3  # run steps 0, 2, 4
    expected = dict(initial)
    for weights in after_g_steps:
        expected = {k: decay * expected[k] + (1 - decay) * weights[k] for k in weights}
    from safetensors.torch import load_file

    exported = load_file(final / "model.safetensors")
    assert max((exported[k] - expected[k]).abs().max().item() for k in expected) <= 1e-6
    last = after_g_steps[-1]
    assert max((exported[k] - last[k]).abs().max().item() for k in expected) > 1e-4


# --------------------------------------------------------------------------------------------
# G's own batch
# --------------------------------------------------------------------------------------------


class CountLatents:
    """The per-step hook of the G-batch tests: runs the GAN step and records, per run step, how
    many latents G saw in forward passes with gradients (the passes G trains on)."""

    def __init__(self, step):
        self.step, self.counts = step, []

    def __call__(self, run, batch):
        if not self.counts and run.state.step == 0:
            run.unwrap("G").register_forward_hook(self._count)
        while len(self.counts) <= run.state.step:  # a new run step (or a micro-batch of it)
            self.counts.append(0)
        return self.step(run, batch)

    def _count(self, module, inputs, output) -> None:
        if torch.is_grad_enabled():
            self.counts[-1] += int(inputs[0].shape[0])


def count_latents(out: Path, name: str = "transgan-cifar10", models: dict | None = None,
                  **given) -> list[int]:
    """Train registry pair ``name`` (by default transgan-cifar10 at a tiny width) for 2 D steps;
    G's trained latents per run step on this process."""
    counter = {}

    def wrap(step):
        counter["hook"] = CountLatents(step)
        return counter["hook"]

    train_named(name, wrap_step=wrap, **(TINY_CIFAR if models is None else models),
                **{**QUIET, "out": str(out), "max_steps": 2, **given})
    return counter["hook"].counts


@pytest.mark.parametrize("batch_size, grad_accum", [(64, 1), (32, 2)])
def test_the_cifar10_recipe_trains_g_on_128_latents_per_g_step(tmp_path, batch_size,
                                                              grad_accum):
    """D's batch is 64 real images per step (64 x 1 or 32 x 2); n_critic 4, so of run steps 0
    and 1 only step 0 takes a G step (functions.py: global_steps % n_critic == 0)."""
    assert count_latents(tmp_path / "run", batch_size=batch_size,
                         grad_accum=grad_accum) == [128, 0]


def test_without_g_batch_size_g_trains_on_d_s_count(tmp_path):
    """transgan-tiny's recipe has no g_batch_size: G trains on the D step's own fakes, as many
    as D's real images (8 x 2 per step)."""
    counts = count_latents(tmp_path / "run", "transgan-tiny", {}, batch_size=8, grad_accum=2)
    assert counts == [16, 16]


def test_g_batch_size_must_divide_into_micro_batches_and_processes(monkeypatch):
    recipe = gan_entry("transgan-cifar10").train
    with pytest.raises(UserError, match="grad_accum x processes = 3 x 1"):
        settings_from_registry(recipe, max_steps=1, grad_accum=3)
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="1 x 3"):
        settings_from_registry(recipe, max_steps=1)


@pytest.mark.slow
def test_two_processes_train_g_on_128_latents_per_g_step_together(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", str(Path(__file__)), str(tmp_path), "32", "1"]
    result = subprocess.run(command, env={**ENV, "HF_DATASETS_CACHE": str(tmp_path / "hf")},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    per_process = [json.loads((tmp_path / f"latents_{rank}.json").read_text())
                   for rank in (0, 1)]
    assert per_process[0] == per_process[1] == [64, 0]  # an equal share each
    assert [sum(step) for step in zip(*per_process)] == [128, 0]


# --------------------------------------------------------------------------------------------
# STrans: the attention backend is not a config field
# --------------------------------------------------------------------------------------------


def test_shipped_strans_configs_with_a_backend_key_still_load(tmp_path):
    import shutil

    from imgtx.gan.strans import STransDiscriminator, STransGenerator
    from imgtx.gan.strans_configs import STransDiscriminatorConfig, STransGeneratorConfig

    for config_class in (STransGeneratorConfig, STransDiscriminatorConfig):
        assert "backend" not in {f.name for f in dataclasses.fields(config_class)}
    shipped = tmp_path / "strans"  # as older STrans folders were saved: with a backend key
    shutil.copytree(ROOT / "checkpoints" / "strans-digits32-cond", shipped)
    for folder, cls in ((shipped, STransGenerator),
                        (shipped / "discriminator", STransDiscriminator)):
        data = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**data, "backend": "reference"}))
        model = cls.from_pretrained(folder)
        assert sum(p.numel() for p in model.parameters()) > 0
    config = STransGenerator.from_pretrained(shipped).config
    assert STransGenerator(config, backend="reference").config == config  # a run-time choice


if __name__ == "__main__":
    out, batch, accumulate = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    counts = count_latents(out / "run", batch_size=batch, grad_accum=accumulate)
    (out / f"latents_{os.environ.get('RANK', '0')}.json").write_text(json.dumps(counts))
