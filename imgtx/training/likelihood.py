"""Training of a likelihood model (one model, Adam, a peak-LR schedule) on the shared :class:`Run`.

``imgtx train`` (the Image Transformer) and ``imgtx sr train`` (super-resolution) are this loop
with their own model, loss, per-image bits and sample grids. The optimiser is that of
Vaswani et al. 2017, "Attention Is All You Need", sec. 5.3, which T2T's Image Transformer
hyper-parameters keep (``optimizer_adam_beta2=0.98``, ``optimizer_adam_epsilon=1e-9``):
Adam(0.9, 0.98, eps 1e-9), the noam schedule, no weight decay, no clipping. ``lr`` is the *peak*
learning rate, reached at the end of warm-up (:mod:`imgtx.training.schedules`).

The run directory holds ``metrics.jsonl`` (one line per evaluation: ``step``, ``images_seen``,
``hours``, ``train_bits_per_dim``, ``eval_bits_per_dim``, ``lr``), ``metrics.png``,
``samples/step_*.png``, ``progress.json``, ``checkpoint/`` (for ``resume``) and ``final/`` (Hub
format).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from imgtx.errors import UserError, check_at_least, check_positive
from imgtx.training.run import Run
from imgtx.training.schedules import SCHEDULES, Schedule
from imgtx.training.settings import RunSettings

__all__ = ["TrainSettings", "fit"]


@dataclass
class TrainSettings(RunSettings):
    """Everything ``imgtx train`` and ``imgtx sr train`` take besides the model config."""

    data: str = "builtin:photos32"
    eval_data: str | None = None  # default: the same spec's test split
    lr: float = 3.5e-3  # peak learning rate (T2T cifar10_base's effective peak)
    warmup: int = 4000  # optimiser steps of linear warm-up
    schedule: str = "noam"  # "noam" | "constant" | "cosine" (to max_steps)
    eval_images: int = 128  # held-out images per evaluation
    num_samples: int = 4  # images per sample grid (0: no grids)
    hflip: bool = False  # mirror each training image left-right with probability 1/2
    grey: float = 0.0  # turn each training image grey (BT.601 luma) with this probability

    def validate(self) -> None:
        super().validate()
        check_positive("lr", self.lr)
        check_at_least("warmup", self.warmup, 0)
        check_at_least("eval_images", self.eval_images, 1)
        check_at_least("num_samples", self.num_samples, 0)
        if not 0.0 <= self.grey <= 1.0:
            raise UserError(f"grey={self.grey} is a probability: give a value in [0, 1]")
        if self.schedule not in SCHEDULES:
            raise UserError(f"schedule={self.schedule!r} is not one of {list(SCHEDULES)}")
        if self.schedule == "cosine" and self.max_steps is None:
            raise UserError("the cosine schedule decays to 0 at max_steps: give max_steps")


def fit(build_model: Callable[[], nn.Module], settings: TrainSettings, train_source,
        eval_source, *, loss: Callable[[nn.Module, dict], torch.Tensor],
        bits: Callable[[nn.Module, dict], torch.Tensor],
        samples: Callable[[nn.Module, int, int], torch.Tensor] | None = None) -> Path:
    """Train a likelihood model on the shared run; returns the path of the exported ``final/``.

    Args:
        build_model: makes the model (a HubModel with a dataclass ``config``); called after the
            run has seeded every generator, so initialisation is reproducible.
        settings: optimiser, schedule, budget, evaluation and checkpoint settings.
        train_source, eval_source: image sources (see :func:`imgtx.data.load_images`).
        loss: ``loss(model, batch) -> scalar`` training loss in bits/dim; ``model`` may be the
            distributed wrapper, so call its ``forward``; ``batch`` is ``{"image": (B, 3, S, S)
            uint8, "label": (B,)}`` on the run's device.
        bits: ``bits(model, batch) -> (B,)`` each held-out image's bits/dim (unwrapped model).
        samples: ``samples(model, count, seed) -> (count, 3, H, W) uint8`` images for the sample
            grids, or None for no grids.

    A run that fails before its first checkpoint removes the run directory it made
    (:meth:`imgtx.training.Run.fit`).
    """
    from imgtx.data import image_loader
    from imgtx.eval.bits_per_dim import mean_bits_per_dim
    from imgtx.hub import parameter_count

    run = Run(settings)
    images = _length(train_source)
    if images is not None and images < settings.batch_size * run.num_processes:
        raise UserError(f"the training data has {images} images, fewer than one batch "
                        f"({settings.batch_size} per process x {run.num_processes} processes): "
                        "lower --batch-size or give more images")
    train_loader = image_loader(train_source, settings.batch_size, shuffle=True,
                                num_workers=settings.num_workers, drop_last=True)
    eval_loader = image_loader(eval_source, max(settings.batch_size, 16), shuffle=False)
    model = build_model()
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.98), eps=1e-9)
    schedule = Schedule(settings.warmup, settings.schedule, settings.max_steps)
    run.prepare({"model": model}, {"model": optimizer}, {"model": schedule}, data=train_loader)
    eval_loader = run.prepare_loader(eval_loader)
    run.write_json("settings.json", {"config": asdict(model.config), "train": asdict(settings)})
    run.print(f"model: {parameter_count(model):,} parameters; train images: "
              f"{len(train_source):,}; held-out images: {len(eval_source):,}; processes: "
              f"{run.num_processes}")

    def step(run: Run, batch: dict) -> dict:
        if settings.hflip:
            batch = mirror_half(batch)
        if settings.grey:
            batch = make_grey(batch, settings.grey)
        batch_loss = loss(run.models["model"], batch)
        run.backward(batch_loss)
        run.optimizer_step("model")
        return {"train_bits_per_dim": batch_loss.detach()}

    def evaluate(run: Run) -> dict:
        return {"eval_bits_per_dim": mean_bits_per_dim(
            run.unwrap("model"), eval_loader, bits, accelerator=run.accelerator,
            limit=settings.eval_images)}

    def grid(run: Run) -> torch.Tensor:
        return samples(run.unwrap("model"), settings.num_samples, settings.seed)

    make_grid = grid if samples is not None and settings.num_samples else None
    record = run.fit(step, evaluate=evaluate, samples=make_grid)
    # Export before the (optional) sample grid, so a failure there cannot cost the model.
    metrics = {f"held-out bits/dim ({settings.eval_data or settings.data}, "
               f"{len(eval_source)} test images)": round(record["eval_bits_per_dim"], 4),
               "training steps": run.state.step, "images seen": run.state.images_seen,
               "training hours": round(run.hours(), 3)}
    final = run.export("model", metrics=metrics)
    run.save_samples(make_grid)
    run.end()
    return final


def mirror_half(batch: dict) -> dict:
    """The batch with each image mirrored left-right with probability 1/2 (torch's global
    generator, which the run seeds and checkpoints, so a resumed run draws the same)."""
    images = batch["image"]  # (B, 3, H, W)
    mirror = torch.rand(images.shape[0], device=images.device) < 0.5
    return {**batch, "image": torch.where(mirror[:, None, None, None], images.flip(-1), images)}


def make_grey(batch: dict, probability: float) -> dict:
    """The batch with each image made grey with ``probability``: its ITU-R BT.601 luma
    ``0.299 r + 0.587 g + 0.114 b``, rounded, in all three channels (black-and-white photographs
    are stored so; a model must learn that g and b then copy r exactly)."""
    images = batch["image"]  # (B, 3, H, W) uint8
    r, g, b = images.long().unbind(1)
    luma = (299 * r + 587 * g + 114 * b + 500) // 1000  # integer: no float rounding ties
    grey = luma[:, None].to(images.dtype).expand_as(images)
    chosen = torch.rand(images.shape[0], device=images.device) < probability
    return {**batch, "image": torch.where(chosen[:, None, None, None], grey, images)}


def _length(source) -> int | None:
    """The number of images of a map-style source; None for a stream."""
    try:
        return len(source)
    except TypeError:
        return None
