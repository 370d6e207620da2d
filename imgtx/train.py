"""Training loop for the Image Transformer (``imgtx train``), built on accelerate. The loop itself
(:func:`fit`) is shared with super-resolution (``imgtx sr train``).

Defaults follow T2T (DESIGN §3): Adam(0.9, 0.98, eps 1e-9), the noam schedule, no weight decay,
no clipping. ``--lr`` is the *peak* learning rate, reached at the end of warm-up; the noam shape
``peak * min(step/warmup, sqrt(warmup/step))`` equals T2T's ``lr * d^-0.5 * min(step * w^-1.5,
step^-0.5)`` with ``peak = lr * d^-0.5 * w^-0.5``.

Progress is counted in images seen. The run directory holds ``metrics.jsonl`` (one JSON line per
evaluation: step, images seen, hours, train and held-out bits/dim), ``samples/step_*.png``,
``checkpoint/`` (accelerate state, for ``--resume``) and ``final/`` (Hub format).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from imgtx.configs import CONFIGS, ImageTransformerConfig, get_config
from imgtx.data import image_loader, load_images
from imgtx.hub import parameter_count
from imgtx.images import save_grid
from imgtx.model import ImageTransformer

__all__ = ["TrainSettings", "train", "fit", "noam", "evaluate_bits_per_dim", "mean_bits_per_dim",
           "export_run"]


@dataclass
class TrainSettings:
    """Everything ``imgtx train`` takes besides the model config."""

    data: str = "builtin:photos32"
    out: str = "runs/imgtx"
    eval_data: str | None = None  # default: the same spec's test split
    max_steps: int | None = None
    minutes: float | None = None  # wall-clock budget; training stops cleanly when it runs out
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3.5e-3  # peak learning rate (T2T cifar10_base's effective peak)
    warmup: int = 4000
    schedule: str = "noam"  # "noam" | "constant" | "cosine" (to max_steps)
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (accelerate)
    eval_every: int = 200  # optimiser steps between held-out evaluations (0: only at the end)
    eval_images: int = 128
    sample_every: int = 0  # steps between sample grids (0: only at the end)
    num_samples: int = 4
    checkpoint_every: int = 500
    resume: bool = False
    seed: int = 0
    num_workers: int = 0
    threads: int | None = None  # torch CPU threads (default: torch's choice)


def noam(step: int, warmup: int, schedule: str = "noam", total: int | None = None) -> float:
    """Learning-rate multiplier of the peak at optimiser step ``step`` (1-based)."""
    step = max(step, 1)
    warm = min(1.0, step / max(warmup, 1))
    if schedule == "constant":
        return warm
    if schedule == "cosine":
        if not total:
            raise ValueError("the cosine schedule needs max_steps")
        progress = min(1.0, max(0, step - warmup) / max(1, total - warmup))
        return warm * 0.5 * (1 + math.cos(math.pi * progress))
    return min(warm, math.sqrt(warmup / step))


@torch.no_grad()
def mean_bits_per_dim(model: nn.Module, loader, device, limit: int | None,
                      bits: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> float:
    """Mean of ``bits(images, labels)`` ``(B,)`` over ``loader``'s images, up to ``limit``, with
    ``model`` in eval mode (the loop under every held-out bits/dim figure of training)."""
    was_training = model.training
    model.eval()
    total_bits, count = 0.0, 0
    for batch in loader:
        images, labels = batch["image"].to(device), batch["label"].to(device)
        if limit is not None:
            images, labels = images[: limit - count], labels[: limit - count]
        total_bits += bits(images, labels).double().sum().item()
        count += images.shape[0]
        if limit is not None and count >= limit:
            break
    model.train(was_training)
    return total_bits / max(count, 1)


def evaluate_bits_per_dim(model: ImageTransformer, loader, device, limit: int | None = None
                          ) -> float:
    """Exact bits/dim over ``loader`` (every subpixel counted once), up to ``limit`` images."""

    def bits(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return model.bits_per_dim(images, labels if model.config.num_classes else None)

    return mean_bits_per_dim(model, loader, device, limit, bits)


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def _infinite(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def train(config: ImageTransformerConfig | str, settings: TrainSettings) -> Path:
    """Train an Image Transformer; returns the path of the exported ``final/`` model."""
    if isinstance(config, str):
        config = get_config(config)
    train_source = load_images(settings.data, "train", config.image_size)
    eval_source = load_images(settings.eval_data or settings.data, "test", config.image_size,
                              limit=settings.eval_images)
    if config.num_classes and train_source.num_classes is None:
        raise ValueError(f"config is class-conditional ({config.num_classes} classes) but "
                         f"{settings.data} has no labels")

    scorer = ImageTransformer.nll_of_outputs  # needs only the config: fine on a wrapped model

    def loss(model: nn.Module, batch: dict) -> torch.Tensor:
        # Through forward() so that a DDP-wrapped model (multi-GPU accelerate) syncs gradients.
        labels = batch["label"] if config.num_classes else None
        images = batch["image"]
        nats = scorer(_unwrap(model), model(images, labels), images)  # (B, positions)
        return nats.sum(1).mean() / (3 * config.image_size**2 * math.log(2))

    def samples(model: ImageTransformer, count: int, seed: int) -> torch.Tensor:
        from imgtx.sampling import sample

        labels = torch.arange(count) % config.num_classes if config.num_classes else None
        return sample(model, count, labels=labels, seed=seed, progress=False)

    return fit(lambda: ImageTransformer(config), settings, train_source, eval_source,
               loss=loss, held_out=evaluate_bits_per_dim, samples=samples)


def fit(build_model: Callable[[], nn.Module], settings: TrainSettings, train_source,
        eval_source, *, loss: Callable[[nn.Module, dict], torch.Tensor],
        held_out: Callable[..., float],
        samples: Callable[[nn.Module, int, int], torch.Tensor] | None = None) -> Path:
    """The training loop shared by ``imgtx train`` and ``imgtx sr train``.

    Args:
        build_model: makes the model (a HubModel with a dataclass ``config``); called after the
            seed is set, so initialisation is reproducible.
        settings: optimiser, schedule, budget, evaluation and checkpoint settings.
        train_source, eval_source: image sources (see :func:`imgtx.data.load_images`).
        loss: ``loss(model, batch) -> scalar`` training loss in bits/dim; ``batch`` is
            ``{"image": (B, 3, S, S) uint8, "label": (B,)}``.
        held_out: ``held_out(model, loader, device, limit) -> float`` held-out bits/dim.
        samples: ``samples(model, count, seed) -> (count, 3, H, W) uint8`` images for the sample
            grids, or None for no grids.

    Returns the path of the exported ``final/`` model (Hub format).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if settings.threads:
        torch.set_num_threads(settings.threads)
    out = Path(settings.out)
    accelerator = Accelerator(gradient_accumulation_steps=settings.grad_accum,
                              mixed_precision=settings.mixed_precision)
    set_seed(settings.seed)
    train_loader = image_loader(train_source, settings.batch_size, shuffle=True,
                                num_workers=settings.num_workers, drop_last=True)
    eval_loader = image_loader(eval_source, max(settings.batch_size, 16), shuffle=False)
    model = build_model()
    config = model.config
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr, betas=(0.9, 0.98),
                                 eps=1e-9)
    total = settings.max_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: noam(i + 1, settings.warmup, settings.schedule, total))
    model, optimizer, train_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, scheduler)
    state_dir = out / "checkpoint"
    progress_file = out / "progress.json"
    step, images_seen, hours_before = 0, 0, 0.0
    if settings.resume and state_dir.exists():
        accelerator.load_state(str(state_dir))
        saved = json.loads(progress_file.read_text())
        step, images_seen, hours_before = saved["step"], saved["images_seen"], saved["hours"]
        accelerator.print(f"resumed from {state_dir} at step {step} ({images_seen} images)")
    elif settings.resume:
        accelerator.print(f"--resume: nothing to resume in {state_dir}; starting fresh")
    out.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out / "settings.json").write_text(json.dumps(
            {"config": asdict(config), "train": asdict(settings)}, indent=2))
        accelerator.print(f"model: {parameter_count(model):,} parameters; train images: "
                          f"{len(train_source):,}; held-out images: {len(eval_source):,}")

    start = time.time()
    deadline = start + 60 * settings.minutes if settings.minutes else None
    bar = tqdm(total=settings.max_steps, initial=step, desc="train", unit="step",
               disable=not accelerator.is_local_main_process)
    running = None
    batches = _infinite(train_loader)

    def hours() -> float:
        return hours_before + (time.time() - start) / 3600

    def log_eval(train_bpd: float | None) -> None:
        held_out_bpd = held_out(accelerator.unwrap_model(model), eval_loader,
                                accelerator.device, settings.eval_images)
        record = {"step": step, "images_seen": images_seen, "hours": round(hours(), 4),
                  "train_bits_per_dim": train_bpd, "eval_bits_per_dim": held_out_bpd,
                  "lr": scheduler.get_last_lr()[0]}
        if accelerator.is_main_process:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
        bar.write(f"step {step}: held-out {held_out_bpd:.4f} bits/dim ({images_seen} images "
                  "seen)")
        return held_out_bpd

    def save_samples() -> None:
        if not accelerator.is_main_process or not settings.num_samples or samples is None:
            return
        unwrapped = accelerator.unwrap_model(model)
        images = samples(unwrapped, settings.num_samples, settings.seed)
        save_grid(images, out / "samples" / f"step_{step:07d}.png")
        unwrapped.train()

    def save_state() -> None:
        accelerator.save_state(str(state_dir))
        if accelerator.is_main_process:
            progress_file.write_text(json.dumps(
                {"step": step, "images_seen": images_seen, "hours": hours()}))

    model.train()
    held_out_bpd = None
    while True:
        if settings.max_steps is not None and step >= settings.max_steps:
            break
        if deadline is not None and time.time() >= deadline:
            bar.write(f"time budget of {settings.minutes} min used up at step {step}")
            break
        for _ in range(settings.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                batch_loss = loss(model, batch)
                accelerator.backward(batch_loss)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            images_seen += batch["image"].shape[0] * accelerator.num_processes
        step += 1
        value = batch_loss.item()
        running = value if running is None else 0.98 * running + 0.02 * value
        bar.update(1)
        bar.set_postfix(bpd=f"{running:.3f}", img=images_seen,
                        lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if settings.eval_every and step % settings.eval_every == 0:
            held_out_bpd = log_eval(running)
        if settings.sample_every and step % settings.sample_every == 0:
            save_samples()
        if settings.checkpoint_every and step % settings.checkpoint_every == 0:
            save_state()
    bar.close()
    if settings.eval_every == 0 or step % settings.eval_every:
        held_out_bpd = log_eval(running)
    save_state()
    # Export before the (optional) sample grid, so a failure there cannot cost the model.
    final = out / "final"
    if accelerator.is_main_process:
        metrics = {f"held-out bits/dim ({settings.eval_data or settings.data}, "
                   f"{len(eval_source)} test images)": round(held_out_bpd, 4),
                   "training steps": step, "images seen": images_seen,
                   "training hours": round(hours(), 3)}
        accelerator.unwrap_model(model).save_pretrained(final, metrics=metrics)
        accelerator.print(f"exported {final}")
    save_samples()
    accelerator.wait_for_everyone()
    return final


def export_run(final: Path, export: str | Path) -> Path:
    """Copy a run's ``final/`` model to ``export`` (replacing it), with the run's learning curve
    as ``training_curve.jsonl``: how the shipped checkpoints are made."""
    import shutil

    export = Path(export)
    shutil.rmtree(export, ignore_errors=True)
    shutil.copytree(final, export)
    shutil.copy(Path(final).parent / "metrics.jsonl", export / "training_curve.jsonl")
    print(f"copied {final} -> {export}")
    return export


def config_help() -> str:
    return "; ".join(f"{name} ({entry.source})" for name, entry in CONFIGS.items())
