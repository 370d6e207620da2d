"""GAN training on the shared run (``imgtx.gan.train``, ``imgtx.gan.step``) and the ``imgtx gan
train|sample|eval`` commands, at the test-sized ``transgan-tiny`` config on CPU."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import PIL.Image
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader

from imgtx.cli import main
from imgtx.data import collate_images
from imgtx.errors import UserError
from imgtx.gan.configs import gan_entry
from imgtx.gan.losses import make_loss, r1_penalty
from imgtx.gan.sample import load_generator
from imgtx.gan.step import GANStep, is_generator_step, to_unit_range
from imgtx.gan.train import GANTrainSettings, build_models, settings_from_registry, train_gan
from imgtx.hub import load_safetensors
from imgtx.training import EMASettings, Run, Schedule

TINY = gan_entry("transgan-tiny")
UNPATCHED_STEP = GANStep.__call__


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
              n_critic: int, loss: str = "wgan-gp", optimizer=None, clip: float | None = 5.0,
              discriminator_overrides: dict | None = None, step_options: dict | None = None):
    """A GAN on a bare Run; returns (run, initial G state, initial D state). ``optimizer`` maps
    parameters to an optimiser (default: Adam(1e-3, betas (0, 0.99))); ``step_options`` go to
    :class:`GANStep` (``g_batch_size``, ``isolate_d``)."""
    run = Run(GANTrainSettings(out=str(tmp_path), max_steps=max_steps, batch_size=batch_size,
                               grad_accum=grad_accum, eval_every=0, checkpoint_every=0))
    g_config, d_config = tiny_pair()
    d_config = dataclasses.replace(d_config, **(discriminator_overrides or {}))
    G, D = build_models(g_config, d_config)
    before = (copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict()))
    optimizer = optimizer or (lambda params: torch.optim.Adam(params, 1e-3, betas=(0.0, 0.99)))
    optimizers = {name: optimizer(model.parameters()) for name, model in (("G", G), ("D", D))}
    run.prepare({"G": G, "D": D}, optimizers, {n: Schedule(0, "constant") for n in optimizers},
                {"G": EMASettings(1000)}, data=toy_loader(16, batch_size))
    run.fit(GANStep(make_loss(loss), n_critic, clip, G.config.latent_dim,
                    **(step_options or {})))
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


def batch_split_draws(monkeypatch) -> None:
    """Within a run step, ``torch.randn((n, ...))`` returns the next n rows of one fixed table
    (from row 0 at each step's first micro-batch): k micro-batches of n, and G's chunks, then
    draw exactly the latents of one batch of k n, in the same order."""
    randn = torch.randn
    table = randn(64, 64, generator=torch.Generator().manual_seed(0))
    where = {"row": 0, "micro_batch": 0}

    def batch_split_randn(*size, **kwargs):
        kwargs.pop("generator", None)
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        rows, start = size[0], where["row"]
        where["row"] += rows
        return table[start : start + rows, : math.prod(size[1:])].reshape(size).to(**kwargs)

    def step(self, run, batch):
        if where["micro_batch"] == 0:
            where["row"] = 0
        with monkeypatch.context() as patch:
            patch.setattr(torch, "randn", batch_split_randn)
            figures = UNPATCHED_STEP(self, run, batch)
        where["micro_batch"] = (where["micro_batch"] + 1) % run.settings.grad_accum
        return figures

    monkeypatch.setattr(GANStep, "__call__", step)


def sgd_updates(tmp_path: Path, monkeypatch, batch_size: int, grad_accum: int,
                step_options: dict) -> torch.Tensor:
    """Every weight's change (G and D) after 2 D steps and 1 G step with plain SGD (no momentum,
    no clipping, no augmentation or D noise), where the update is proportional to the gradient:
    unlike Adam's, it shows a gradient summed over micro-batches instead of averaged."""
    batch_split_draws(monkeypatch)
    run, g_before, d_before = run_steps(
        tmp_path, max_steps=2, batch_size=batch_size, grad_accum=grad_accum, n_critic=2,
        loss="hinge", optimizer=lambda params: torch.optim.SGD(params, lr=0.05), clip=None,
        discriminator_overrides={"diffaug": "", "noise": False}, step_options=step_options)
    assert run.schedulers["G"].last_epoch == 1 and run.schedulers["D"].last_epoch == 2
    return torch.cat([(value.double() - before[key].double()).flatten()
                      for model, before in ((run.unwrap("G"), g_before),
                                            (run.unwrap("D"), d_before))
                      for key, value in model.state_dict().items()])


# G on fresh latents after D's step (TransGAN's gen_batch_size), the official loop's D gradients
# kept. (With the D step's own fakes, micro-batch 1's G loss is taken through D before D's step
# and the last one's after it, so that mode is not a large batch by construction.)
FRESH_LATENTS = {"g_batch_size": 4}


def test_gradient_accumulation_equals_one_large_batch(tmp_path, monkeypatch):
    """2 micro-batches of 2 give the SGD updates of one batch of 4: accumulation averages."""
    one_batch = sgd_updates(tmp_path / "one", monkeypatch, 4, 1, FRESH_LATENTS)
    accumulated = sgd_updates(tmp_path / "two", monkeypatch, 2, 2, FRESH_LATENTS)
    assert one_batch.abs().max() > 1e-3  # the steps moved the weights
    assert (accumulated - one_batch).abs().max() <= 1e-4 * one_batch.abs().max()


def test_summed_micro_batch_gradients_are_caught(tmp_path, monkeypatch):
    """Negative control: a backward that sums the micro-batches' gradients (skips the 1/k of
    accumulation) moves the weights differently from the large batch, so the test above fails
    on it."""
    one_batch = sgd_updates(tmp_path / "one", monkeypatch, 4, 1, FRESH_LATENTS)
    monkeypatch.setattr(Run, "backward", lambda run, loss: run.accelerator.backward(
        loss * run.settings.grad_accum))
    summed = sgd_updates(tmp_path / "two", monkeypatch, 2, 2, FRESH_LATENTS)
    assert (summed - one_batch).abs().max() > 0.1 * one_batch.abs().max()


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


def recorded_runs(monkeypatch) -> list[Run]:
    """The runs that ``fit`` while the test runs (train_gan's own, whose EMA and raw G the
    test compares with what it exported)."""
    runs, fit = [], Run.fit

    def recording_fit(self, *args, **kwargs):
        runs.append(self)
        return fit(self, *args, **kwargs)

    monkeypatch.setattr(Run, "fit", recording_fit)
    return runs


def holds_weights(folder: Path, model: torch.nn.Module) -> bool:
    """Whether ``folder/model.safetensors`` holds exactly ``model``'s state."""
    saved, state = load_safetensors(folder / "model.safetensors"), model.state_dict()
    return saved.keys() == state.keys() and all(torch.equal(saved[k], state[k]) for k in saved)


def test_export_holds_ema_generator_and_discriminator(tmp_path, monkeypatch):
    runs = recorded_runs(monkeypatch)
    # 2 G steps; a half-life of 1 x images seen makes the EMA half of the last two Gs
    final = train_gan(*tiny_pair(), tiny_settings(tmp_path, n_critic=1, ema_warmup=1.0))
    (run,) = runs
    assert holds_weights(final, run.ema_model("G"))
    assert not holds_weights(final, run.unwrap("G"))
    assert holds_weights(final / "discriminator", run.unwrap("D"))
    # control: an export of the raw G (the bug this guards against) fails the first check
    raw = run.export("G", path=tmp_path / "raw_g")
    assert holds_weights(raw, run.unwrap("G")) and not holds_weights(raw, run.ema_model("G"))

    generator = load_generator(str(final))
    assert generator.config == TINY.config
    assert generator.generate(2, seed=3).shape == (2, 3, 32, 32)
    assert (tmp_path / "samples").is_dir() and list((tmp_path / "samples").glob("*.png"))
    with pytest.raises(UserError, match="not a generator"):
        load_generator(str(final / "discriminator"))


class LinearOutputs:
    """While a GAN step runs: for every ``nn.Linear`` call, the layer, whether CPU autocast is
    on, its dtype, and the dtype of the layer's output."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple[torch.nn.Module, bool, torch.dtype, torch.dtype]] = []
        forward, inside = torch.nn.Linear.forward, [False]

        def recording_forward(layer, x):
            out = forward(layer, x)
            if inside[0]:
                self.calls.append((layer, torch.is_autocast_enabled("cpu"),
                                   torch.get_autocast_dtype("cpu"), out.dtype))
            return out

        def recording_step(step, run, batch):
            inside[0] = True
            try:
                return UNPATCHED_STEP(step, run, batch)
            finally:
                inside[0] = False

        monkeypatch.setattr(torch.nn.Linear, "forward", recording_forward)
        monkeypatch.setattr(GANStep, "__call__", recording_step)

    def all_bf16(self, model: torch.nn.Module) -> bool:
        """Whether ``model``'s layers ran inside the step, each under bf16 autocast with a bf16
        output."""
        layers = {id(m) for m in model.modules()}
        calls = [c for c in self.calls if id(c[0]) in layers]
        return bool(calls) and all(c[1:] == (True, torch.bfloat16, torch.bfloat16)
                                   for c in calls)


def test_memory_options_train(tmp_path, monkeypatch):
    """bf16 autocast, per-block activation checkpointing (G and D) and accumulation together:
    every linear layer of G and D computes in bf16 inside the step; the weights stay float32."""
    runs, linear = recorded_runs(monkeypatch), LinearOutputs(monkeypatch)
    g_config, d_config = tiny_pair(checkpoint_blocks=True)
    final = train_gan(g_config, d_config, tiny_settings(tmp_path, mixed_precision="bf16",
                                                        grad_accum=2, n_critic=1))
    assert linear.all_bf16(runs[0].unwrap("G")) and linear.all_bf16(runs[0].unwrap("D"))
    assert json.loads((final / "discriminator" / "config.json").read_text())["checkpoint_blocks"]
    weights = load_safetensors(final / "model.safetensors")
    assert all(torch.isfinite(w).all() and w.dtype == torch.float32 for w in weights.values())


def test_without_bf16_the_step_computes_in_float32(tmp_path, monkeypatch):
    """Negative control of the bf16 check: the same step without mixed precision fails it."""
    linear = LinearOutputs(monkeypatch)
    run, _, _ = run_steps(tmp_path, max_steps=1, batch_size=2, grad_accum=1, n_critic=1)
    assert linear.calls and not linear.all_bf16(run.unwrap("D"))
    assert {c[3] for c in linear.calls} == {torch.float32}


class LabelsSeen:
    """The batches a GAN step gets, and the (images, labels) of every conditional-D forward.
    ``ignore_labels`` builds the broken step: it gives D and G class 0 whatever the data says."""

    def __init__(self, monkeypatch, ignore_labels: bool = False) -> None:
        from imgtx.gan.transgan import TransGANDiscriminator

        self.batches: list[dict] = []
        self.d_calls: list[tuple[torch.Tensor, torch.Tensor | None]] = []
        forward = TransGANDiscriminator.forward

        def recording_forward(model, images, labels=None, **kwargs):
            self.d_calls.append((images.detach().clone(),
                                 None if labels is None else labels.clone()))
            return forward(model, images, labels, **kwargs)

        def recording_step(step, run, batch):
            self.batches.append({key: value.clone() for key, value in batch.items()})
            if ignore_labels:
                batch = {**batch, "label": torch.zeros_like(batch["label"])}
            return UNPATCHED_STEP(step, run, batch)

        monkeypatch.setattr(TransGANDiscriminator, "forward", recording_forward)
        monkeypatch.setattr(GANStep, "__call__", recording_step)

    def d_sees_the_data_labels(self) -> bool:
        """Every batch's real images reach D with the batch's own labels, and D is never called
        without labels."""
        if any(labels is None or len(labels) != len(images) for images, labels in self.d_calls):
            return False
        return all(any(torch.equal(images, to_unit_range(batch["image"]))
                       and torch.equal(labels, batch["label"]) for images, labels in self.d_calls)
                   for batch in self.batches)


def test_conditional_training_takes_labels_from_the_data(tmp_path, monkeypatch):
    seen = LabelsSeen(monkeypatch)
    final = train_gan(*tiny_pair(num_classes=10), tiny_settings(tmp_path / "c"))
    assert len(seen.batches) == 2 and seen.d_sees_the_data_labels()
    assert any(len(set(batch["label"].tolist())) > 1 for batch in seen.batches)
    assert load_generator(str(final)).config.num_classes == 10
    with pytest.raises(UserError, match="class-conditional"):
        train_gan(*tiny_pair(num_classes=10),
                  tiny_settings(tmp_path / "p", data="builtin:photos32"))


def test_a_step_that_ignores_the_labels_is_caught(tmp_path, monkeypatch):
    """Negative control: a step that gives D class 0 for every image fails the check above."""
    seen = LabelsSeen(monkeypatch, ignore_labels=True)
    train_gan(*tiny_pair(num_classes=10), tiny_settings(tmp_path, max_steps=1, num_samples=0))
    assert seen.batches and not seen.d_sees_the_data_labels()


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


def test_mode_seeking_weight_changes_the_generator_step(tmp_path):
    """GANStep(mode_seeking=w) adds MSGAN's term to G's loss: the same seeded step moves G
    differently with w > 0, and D's update (before the G step) is the same."""
    results = []
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        run, _, _ = run_steps(tmp_path / str(weight), max_steps=1, batch_size=4, grad_accum=1,
                              n_critic=1, loss="hinge", step_options={"mode_seeking": weight})
        results.append((run.unwrap("G").state_dict(), run.unwrap("D").state_dict()))
    (g0, d0), (g1, d1) = results
    assert all(torch.equal(d0[k], d1[k]) for k in d0)
    assert any(not torch.equal(g0[k], g1[k]) for k in g0)


def spy_r1(monkeypatch) -> list[tuple[torch.nn.Module, torch.Tensor]]:
    """Records (a copy of D, the real batch) at each R1 penalty GANStep computes."""
    import imgtx.gan.step as step_module

    calls = []

    def recording(D, real, labels=None):
        calls.append((copy.deepcopy(D), real.detach().clone()))
        return r1_penalty(D, real, labels)

    monkeypatch.setattr(step_module, "r1_penalty", recording)
    return calls


def test_lazy_r1_adds_gamma_half_times_interval_of_the_penalty_gradient(tmp_path, monkeypatch):
    """With SGD (lr 1, no clipping) and no augmentation, D's first update with lazy R1 differs
    from the plain hinge update by exactly -gamma / 2 x every x grad R1 (float64 autograd)."""
    gamma, every = 0.3, 4
    calls = spy_r1(monkeypatch)
    after = []
    for options in ({}, {"r1_gamma": gamma, "r1_every": every}):
        torch.manual_seed(0)
        run, _, _ = run_steps(tmp_path / str(len(after)), max_steps=1, batch_size=4,
                              grad_accum=1, n_critic=1, loss="hinge", clip=None,
                              optimizer=lambda p: torch.optim.SGD(p, lr=1.0),
                              discriminator_overrides={"diffaug": ""}, step_options=options)
        after.append({k: v.double() for k, v in run.unwrap("D").state_dict().items()})
    assert len(calls) == 1
    D, real = calls[0]
    D = D.double()
    real = real.double().requires_grad_(True)
    with sdpa_kernel([SDPBackend.MATH]):  # the fused CPU kernels have no double backward
        (grad,) = torch.autograd.grad(D(real).sum(), real, create_graph=True)
    penalty = grad.flatten(1).square().sum(dim=1).mean()
    grads = torch.autograd.grad(penalty, [p for p in D.parameters()], allow_unused=True)
    expected = {name: -gamma / 2 * every * (g if g is not None else torch.zeros_like(p))
                for (name, p), g in zip(D.named_parameters(), grads)}
    moved = 0
    for name, want in expected.items():
        torch.testing.assert_close(after[1][name] - after[0][name], want, atol=1e-5, rtol=1e-3)
        moved += bool(want.abs().max() > 1e-4)
    assert moved > 0  # the penalty does move D


def test_lazy_r1_runs_every_nth_d_step_only(tmp_path, monkeypatch):
    calls = spy_r1(monkeypatch)
    run_steps(tmp_path, max_steps=5, batch_size=4, grad_accum=1, n_critic=2, loss="hinge",
              step_options={"r1_gamma": 1.0, "r1_every": 2})
    assert len(calls) == 3  # D steps 0, 2 and 4
