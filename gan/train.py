"""GAN training (TransGAN, STrans) on the shared :class:`imgtx.training.Run`.

``imgtx gan train`` is :func:`train_gan`. One run step is one discriminator optimiser step on a
global batch (``batch_size x processes x grad_accum`` real images); the run steps ``0, n_critic,
2 n_critic, ...`` also take a generator step after it (:class:`imgtx.gan.step.GANStep`), so ``s``
D steps come with ``ceil(s / n_critic)`` G steps. A ``kimg`` budget counts the real images of all
processes.

The defaults are TransGAN's (Jiang et al. 2021; VITA-Group/TransGAN@6b85440
``exps/cifar_train.py``, ``functions.py``): WGAN-GP with the drift term, Adam(1e-4, betas
(0, 0.99)) for both networks, gradient-norm clipping at 5, an EMA of G. A named config's registry
entry (``train``) overrides them, and explicit settings override both
(:func:`settings_from_registry`; every recipe key must be a :class:`GANTrainSettings` field).

G's batch is its own: ``g_batch_size`` fresh latents per G step over all processes and
micro-batches (TransGAN's ``gen_batch_size x g_accumulated_times``; None: as many as D's real
images). The EMA of G is updated once per G step, either with a half-life in thousands of images
(``ema_kimg``, with a warm-up that caps it at ``ema_warmup x images seen``; Karras et al. 2020,
StyleGAN2-ADA ``ema_kimg``/``ema_rampup``; TransGAN ``--ema_kimg``/``--ema_warmup``) or with a
fixed decay per G step (``ema_decay``; TransGAN ``--ema`` with ``--ema_warmup 0``). With D's
global batch of ``B`` images per step the two agree when
``ema_decay = 0.5 ** (B / (1000 ema_kimg))``, i.e. ``ema_kimg = B ln 2 / (-1000 ln ema_decay)``
without warm-up: 0.995 at B = 64 is a half-life of 8.85 kimg.

The run directory holds ``metrics.jsonl`` (losses, ``kimg``, FID/KID ticks), ``metrics.png``,
``samples/step_*.png`` (EMA G on a fixed latent), ``checkpoint/`` (``--resume``) and ``final/``:
the EMA generator (``config.json``, ``model.safetensors``, model card) with the discriminator in
``final/discriminator/``.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from imgtx.errors import UserError, check_at_least, check_positive
from imgtx.gan.auxiliary import AuxiliaryClassifierLoss
from imgtx.gan.losses import LOSSES, make_loss
from imgtx.gan.step import GANStep, generator_steps
from imgtx.registry import settings_from_recipe
from imgtx.training import EMASettings, Run, RunSettings, Schedule

__all__ = ["GANTrainSettings", "build_models", "settings_from_registry", "resolved_recipe",
           "train_gan", "train_named", "RECIPE_KEYS", "GENERATOR_DIR", "DISCRIMINATOR_DIR",
           "launched_processes", "steps_for_kimg"]

GENERATOR_DIR = "."  # final/ itself holds the EMA generator
DISCRIMINATOR_DIR = "discriminator"

# The settings a registry recipe sets (and `imgtx gan info` shows); the others are run settings.
RECIPE_KEYS = ("batch_size", "grad_accum", "g_batch_size", "n_critic", "loss", "loss_options",
               "lr", "lr_d", "betas", "warmup", "clip_grad_norm", "ema_kimg", "ema_warmup",
               "ema_decay", "aux_weight", "aux_fade_kimg", "isolate_d", "mode_seeking",
               "r1_gamma", "r1_every")


def launched_processes() -> int:
    """The processes of this ``torchrun``/``accelerate launch`` job (``WORLD_SIZE``; 1 without a
    launcher): what :class:`imgtx.training.Run` reads when it starts, known before it does."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def steps_for_kimg(kimg: float, images_per_step: int) -> int:
    """D steps that show at least ``kimg`` thousand real images, ``images_per_step`` per step
    over all processes (at least 1)."""
    return max(1, math.ceil(kimg * 1000 / images_per_step))


@dataclass
class GANTrainSettings(RunSettings):
    """Everything ``imgtx gan train`` takes besides the model configs. ``max_steps`` counts D
    steps; ``kimg`` (thousands of real images shown to D) is another budget."""

    data: str = "builtin:photos32"
    batch_size: int = 32  # D's real images per process and micro-batch
    g_batch_size: int | None = None  # G's latents per G step, all processes and micro-batches
    kimg: float | None = None  # budget in thousands of real images (sets max_steps)
    loss: str = "wgan-gp"  # "wgan-gp" | "hinge" | "logistic-r1" (imgtx.gan.losses)
    loss_options: dict = field(default_factory=dict)  # e.g. {"gp_weight": 10}, {"r1_gamma": 1}
    lr: float = 1e-4  # G's learning rate (Adam)
    lr_d: float | None = None  # D's learning rate (default: lr)
    betas: tuple[float, float] = (0.0, 0.99)
    warmup: int = 0  # optimiser steps of linear LR warm-up (each network counts its own)
    n_critic: int = 4  # D steps per G step
    clip_grad_norm: float | None = 5.0  # gradient-norm clipping of both networks (None: off)
    ema_kimg: float | None = 10.0  # EMA half-life of G in thousands of images
    ema_warmup: float | None = 0.05  # half-life <= ema_warmup x images seen (None: no warm-up)
    ema_decay: float | None = None  # instead of ema_kimg: a fixed EMA decay per G step
    num_samples: int = 16  # images per sample grid (0: none)
    fid_every: int = 0  # steps between FID/KID ticks of the EMA G (0: none)
    fid_samples: int = 256  # generated (and real) images per tick
    fid_data: str | None = None  # real images of the ticks (default: data)
    fid_split: str = "test"
    features: str = "imgtx-small"  # feature extractor (imgtx.eval.features.get_extractor)
    aux_weight: float = 1.0  # AC-GAN class-loss weight, when D has aux_classifier
    aux_fade_kimg: float | None = None  # G's AC weight falls to 0 over this many kimg (None: kept)
    # Freeze D during the G step, so the G loss leaves no gradient in D's next step. The official
    # loop keeps it (functions.py never zeroes D's gradients after the G step): the TransGAN paper
    # recipes set False to reproduce it.
    isolate_d: bool = True
    mode_seeking: float = 0.0  # weight of MSGAN's mode-seeking term in G's loss (0: off)
    r1_gamma: float = 0.0  # lazy R1 on real images added to any loss's D step (0: off)
    r1_every: int = 16  # ... computed every this many D steps, weighted by it (StyleGAN2)

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.kimg is not None and self.max_steps is None:
            check_positive("kimg", self.kimg)
            self.max_steps = steps_for_kimg(self.kimg,
                                            self.images_per_step * launched_processes())
        if self.fid_every and self.eval_every:  # FID ticks land on logged steps
            self.eval_every = math.gcd(self.eval_every, self.fid_every)

    @property
    def images_per_step(self) -> int:
        """Real images per D step on one process (``batch_size x grad_accum``); the run's
        global batch is this times the processes."""
        return self.batch_size * self.grad_accum

    def validate(self) -> None:
        super().validate()
        if self.loss not in LOSSES:
            raise UserError(f"unknown GAN loss {self.loss!r}; choose one of {', '.join(LOSSES)}")
        options = list(inspect.signature(LOSSES[self.loss]).parameters)
        unknown = sorted(set(self.loss_options) - set(options))
        if unknown:
            raise UserError(f"loss option(s) {unknown} are not options of {self.loss}; it takes "
                            f"{', '.join(options)}")
        check_positive("lr", self.lr)
        check_positive("lr_d", self.lr_d)
        check_at_least("n_critic", self.n_critic, 1)
        check_at_least("warmup", self.warmup, 0)
        check_positive("clip_grad_norm", self.clip_grad_norm)
        check_positive("ema_kimg", self.ema_kimg)
        check_positive("ema_warmup", self.ema_warmup)
        if (self.ema_kimg is None) == (self.ema_decay is None):
            raise UserError("give the EMA of G as a half-life (ema_kimg) or as a decay per G step "
                            f"(ema_decay), not both or neither; got ema_kimg={self.ema_kimg}, "
                            f"ema_decay={self.ema_decay}")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise UserError(f"ema_decay={self.ema_decay}: give a number in [0, 1), e.g. 0.995")
        self._check_g_batch_size()
        check_positive("aux_weight", self.aux_weight)
        check_positive("aux_fade_kimg", self.aux_fade_kimg)
        check_at_least("mode_seeking", self.mode_seeking, 0)
        check_at_least("r1_gamma", self.r1_gamma, 0)
        check_at_least("r1_every", self.r1_every, 1)
        check_at_least("num_samples", self.num_samples, 0)
        check_at_least("fid_every", self.fid_every, 0)
        check_at_least("fid_samples", self.fid_samples, 2)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise UserError(f"betas must be two numbers in [0, 1), got {self.betas}")

    def _check_g_batch_size(self) -> None:
        """G's latents split into ``grad_accum x processes`` equal parts (the processes of a
        ``torchrun``/``accelerate launch`` job: ``WORLD_SIZE``)."""
        check_at_least("g_batch_size", self.g_batch_size, 1)
        if self.g_batch_size is None:
            return
        processes = launched_processes()
        parts = self.grad_accum * processes
        if self.g_batch_size % parts:
            raise UserError(f"g_batch_size {self.g_batch_size} (G's latents per G step, over all "
                            f"processes) must divide into grad_accum x processes = "
                            f"{self.grad_accum} x {processes} equal parts; give a multiple of "
                            f"{parts} with --g-batch-size")

    def ema_settings(self) -> EMASettings:
        """The EMA of G these settings describe (updated once per G step by the run)."""
        if self.ema_decay is not None:
            return EMASettings(decay=self.ema_decay)
        return EMASettings(self.ema_kimg * 1000, self.ema_warmup)


def settings_from_registry(recipe: dict, **given: Any) -> GANTrainSettings:
    """:class:`GANTrainSettings` from its defaults, then a registry entry's ``train`` dict, then
    ``given`` (the user's settings; None values are skipped); validated.

    Every key must be a settings field (:func:`imgtx.registry.settings_from_recipe`). The EMA is
    one choice: a given ``ema_decay`` replaces the recipe's half-life, and a given ``ema_kimg`` or
    ``ema_warmup`` replaces the recipe's ``ema_decay``. Given ``loss_options`` are merged into
    the recipe's (given names win) when the loss stays the recipe's; another loss starts from
    its own defaults.
    """
    recipe = dict(recipe)
    if given.get("loss_options") is not None:
        same_loss = given.get("loss") in (None, recipe.get("loss", GANTrainSettings.loss))
        kept = recipe.get("loss_options", {}) if same_loss else {}
        given = {**given, "loss_options": {**kept, **given["loss_options"]}}
    if given.get("ema_decay") is not None:
        recipe.update(ema_kimg=None, ema_warmup=None)
    elif given.get("ema_kimg") is not None or given.get("ema_warmup") is not None:
        recipe["ema_decay"] = None
        for key in ("ema_kimg", "ema_warmup"):  # a fixed-decay recipe's None: the defaults
            if key in recipe and recipe[key] is None:
                del recipe[key]
    return settings_from_recipe(GANTrainSettings, recipe, **given)


def resolved_recipe(recipe: dict) -> dict[str, Any]:
    """The training settings a registry recipe resolves to (:data:`RECIPE_KEYS`, defaults
    filled in), as :func:`settings_from_registry` builds them."""
    settings = settings_from_registry(recipe, max_steps=1)  # a budget only to pass validation
    return {key: getattr(settings, key) for key in RECIPE_KEYS}


def build_models(generator_config, discriminator_config) -> tuple[nn.Module, nn.Module]:
    """Fresh ``(G, D)`` of either family; ``num_classes`` and ``checkpoint_blocks`` of the
    generator config are copied to the discriminator's."""
    d_config = copy.deepcopy(discriminator_config)
    for name in ("num_classes", "checkpoint_blocks"):
        if hasattr(d_config, name):
            setattr(d_config, name, getattr(generator_config, name))
    d_config.__post_init__()
    from imgtx.gan.configs import model_classes

    g_class, d_class = model_classes(generator_config)
    return g_class(generator_config), d_class(d_config)


def _train_source(settings: GANTrainSettings, image_size: int, num_classes: int):
    from imgtx.data import load_images

    source = load_images(settings.data, split="train", image_size=image_size, seed=settings.seed)
    if len(source) < settings.batch_size:
        raise UserError(f"{settings.data} has {len(source)} training images, fewer than the "
                        f"batch size {settings.batch_size}; lower --batch-size")
    if num_classes:
        first = source[0]["label"]
        if not 0 <= int(first) < num_classes:
            raise UserError(f"the config is class-conditional ({num_classes} classes) but "
                            f"{settings.data} gives label {int(first)}; train on labelled data "
                            "(e.g. builtin:digits) or --set num_classes=0")
    return source


StepFunction = Callable[[Run, dict], "dict[str, Any] | None"]


def train_gan(generator_config, discriminator_config, settings: GANTrainSettings, *,
              wrap_step: Callable[[GANStep], StepFunction] | None = None) -> Path:
    """Train a GAN pair on the shared run; returns ``final/`` (the EMA generator's folder).

    Args:
        generator_config, discriminator_config: configs of one family (TransGAN or STrans);
            a conditional generator (``num_classes > 0``) makes both networks conditional and
            takes its labels from the data.
        settings: budget, optimiser, loss, EMA, sample and FID settings (validated here).
        wrap_step: the per-step hook: called once with the :class:`GANStep`, it returns the
            ``step(run, batch) -> figures`` the run calls instead, e.g.
            ``lambda step: RatioProbe(step, every=50)`` (:mod:`imgtx.gan.ratio_logging`).
    """
    from imgtx.data import image_loader
    from imgtx.hub import parameter_count

    settings.validate()
    if settings.fid_every:  # a missing extractor fails now, not after hours of training
        from imgtx.eval.features import get_extractor

        get_extractor(settings.features, "cpu")
    run = Run(settings)  # seeds every generator before the models are built
    num_classes = int(getattr(generator_config, "num_classes", 0) or 0)
    source = _train_source(settings, generator_config.image_size, num_classes)
    loader = image_loader(source, settings.batch_size, shuffle=True,
                          num_workers=settings.num_workers, drop_last=True)
    G, D = build_models(generator_config, discriminator_config)
    lr_d = settings.lr_d or settings.lr
    optimizers = {"G": torch.optim.Adam(G.parameters(), settings.lr, betas=settings.betas),
                  "D": torch.optim.Adam(D.parameters(), lr_d, betas=settings.betas)}
    schedules = {name: Schedule(settings.warmup, "constant") for name in optimizers}
    run.prepare({"G": G, "D": D}, optimizers, schedules, {"G": settings.ema_settings()},
                data=loader)
    run.write_json("settings.json", {"generator": asdict(G.config),
                                     "discriminator": asdict(D.config),
                                     "train": asdict(settings)})
    run.print(f"G {parameter_count(G):,} / D {parameter_count(D):,} parameters; "
              f"{len(source):,} training images; {settings.loss}, n_critic {settings.n_critic}; "
              f"{run.num_processes} process(es)")
    loss = make_loss(settings.loss, **settings.loss_options)
    if getattr(D.config, "aux_classifier", False):
        loss = AuxiliaryClassifierLoss(loss, settings.aux_weight, settings.aux_fade_kimg,
                                       images_seen=lambda: run.state.images_seen)
    step = GANStep(loss, settings.n_critic, settings.clip_grad_norm, G.config.latent_dim,
                   num_classes, g_batch_size=settings.g_batch_size, isolate_d=settings.isolate_d,
                   mode_seeking=settings.mode_seeking, r1_gamma=settings.r1_gamma,
                   r1_every=settings.r1_every)
    if wrap_step is not None:
        step = wrap_step(step)
    record = run.fit(step, evaluate=lambda r: _evaluate(r, settings), samples=(
        (lambda r: _samples(r, settings)) if settings.num_samples else None))
    if settings.fid_every and "fid" not in record and run.is_main_process:  # stopped by time
        record = run.log(_fid_tick(run, settings))
    final = _export(run, settings, record)
    if settings.num_samples:
        run.save_samples(lambda r: _samples(r, settings))
    run.end()
    return final


def train_named(name: str, *, generator: dict | None = None, discriminator: dict | None = None,
                wrap_step: Callable[[GANStep], StepFunction] | None = None, **given: Any) -> Path:
    """Train the registry pair ``name`` (e.g. ``"transgan-cifar10"``); returns ``final/``.

    ``generator`` and ``discriminator`` replace fields of its configs; ``given`` are settings
    on top of its recipe (:func:`settings_from_registry`); ``wrap_step`` as in
    :func:`train_gan`.
    """
    from imgtx.gan.configs import gan_entry

    entry = gan_entry(name)
    settings = settings_from_registry(entry.train, **given)
    return train_gan(dataclasses.replace(entry.config, **(generator or {})),
                     dataclasses.replace(entry.discriminator, **(discriminator or {})),
                     settings, wrap_step=wrap_step)


def _samples(run: Run, settings: GANTrainSettings) -> torch.Tensor:
    """The EMA generator on the run's fixed latents: ``(num_samples, 3, H, W)`` uint8."""
    return run.ema_model("G").generate(settings.num_samples, seed=settings.seed)


def _fid_tick(run: Run, settings: GANTrainSettings) -> dict[str, float]:
    from imgtx.gan.evaluate import evaluate_generator

    result = evaluate_generator(run.ema_model("G"), settings.fid_data or settings.data,
                                settings.fid_split, settings.fid_samples, settings.features,
                                device=run.device, seed=settings.seed)
    keys = ("fid", "kid", "kid_std", "class_accuracy")
    return {key: float(result[key]) for key in keys if key in result}


def _evaluate(run: Run, settings: GANTrainSettings) -> dict[str, float]:
    """``kimg`` always; FID/KID of the EMA G every ``fid_every`` steps and at the end (computed
    on the main process only, so the others log nothing extra)."""
    figures = {"kimg": run.state.images_seen / 1000}
    at_end = run.state.step == settings.max_steps  # a time budget's end: see train_gan
    if settings.fid_every and (run.state.step % settings.fid_every == 0 or at_end):
        if run.is_main_process:
            figures.update(_fid_tick(run, settings))
    return figures


def _export(run: Run, settings: GANTrainSettings, record: dict) -> Path:
    """``final/``: the EMA generator (with a model card) and ``final/discriminator``."""
    metrics = {"training data": settings.data, "loss": settings.loss,
               "D steps": run.state.step,
               "G steps": generator_steps(run.state.step, settings.n_critic),
               "kimg": round(run.state.images_seen / 1000, 2),
               "training hours": round(run.hours(), 3),
               **({"EMA decay per G step": settings.ema_decay} if settings.ema_decay is not None
                  else {"EMA half-life (kimg)": settings.ema_kimg})}
    for key in ("fid", "kid"):
        if key in record:
            metrics[f"{key} ({settings.features}, {settings.fid_samples} samples, "
                    f"{settings.fid_data or settings.data} {settings.fid_split})"] = \
                round(record[key], 4)
    final = run.export("G", ema=True, path=run.out / "final", metrics=metrics)
    run.export("D", path=final / DISCRIMINATOR_DIR)
    return final
