"""Training of the Image Transformer (``imgtx train``): its loss, held-out bits/dim and sample
grids on the shared likelihood loop (:func:`imgtx.training.likelihood.fit`, on
:class:`imgtx.training.Run`). ``imgtx sr train`` is the same loop with the super-resolution
model (:mod:`imgtx.sr.train`).

The loss is the exact negative log-likelihood in bits per subpixel (Parmar et al. 2018, "Image
Transformer": every subpixel a categorical over 256 values, or a discretised mixture of
logistics per pixel).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from imgtx.configs import CONFIGS, ImageTransformerConfig, get_config
from imgtx.errors import UserError
from imgtx.training.likelihood import TrainSettings, fit

__all__ = ["train", "image_transformer_loss", "image_transformer_bits", "config_help",
           "init_from"]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / compile wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def image_transformer_loss(model: nn.Module, batch: dict) -> torch.Tensor:
    """Mean bits/dim of a batch, through ``model(...)`` so that a distributed wrapper sees the
    call (and averages the gradients); ``model`` may be wrapped."""
    labels = batch["label"] if _unwrap(model).config.num_classes else None
    return model(batch["image"], labels, with_loss=True).loss


def image_transformer_bits(model: nn.Module, batch: dict) -> torch.Tensor:
    """Each image's exact bits/dim ``(B,)`` (every subpixel counted once)."""
    labels = batch["label"] if model.config.num_classes else None
    return model.bits_per_dim(batch["image"], labels)


def init_from(model: nn.Module, source: str) -> list[str]:
    """Warm-start ``model`` from a trained Image Transformer (``save_pretrained`` dir or Hub id).

    Every tensor of the source must have a counterpart of the same shape. ``model`` may add
    inputs that start at zero (``neighbour_inputs``; a categorical model's ``predictor`` head),
    so that it begins as the source's function. A DMOL model may also add a ``predictor``: the
    source's means were absolute and become corrections to the prediction, so the head's mean
    rows restart at zero (every mixture centred on the prediction; log-scales, logits and
    coefficients carry over).
    Returns the names of the tensors (or ``head.means``) left at their initialisation; raises a
    ``UserError`` on anything else."""
    from imgtx.model import ImageTransformer

    loaded = ImageTransformer.from_pretrained(source)
    weights = loaded.state_dict()
    target = model.state_dict()
    for name, tensor in weights.items():
        if name not in target or target[name].shape != tensor.shape:
            raise UserError(f"cannot warm-start from {source}: its {name} "
                            f"{tuple(tensor.shape)} has no counterpart of that shape")
    fresh = sorted(set(target) - set(weights))
    if any(not name.startswith(("neighbours.", "predictor_head.")) for name in fresh):
        raise UserError(f"cannot warm-start from {source}: it lacks {', '.join(fresh)}")
    model.load_state_dict(weights, strict=False)
    predictor = getattr(model.config, "predictor", "none")
    if predictor != loaded.config.predictor and model.config.likelihood == "dmol":
        if loaded.config.predictor != "none":
            raise UserError(f"cannot warm-start from {source}: its means are relative to the "
                            f"{loaded.config.predictor!r} predictor, this model's to "
                            f"{predictor!r}")
        k = model.config.num_mixtures
        with torch.no_grad():  # [logits K | means 3K | ...] (imgtx.likelihood)
            model.head.weight[k:4 * k].zero_()
            model.head.bias[k:4 * k].zero_()
        fresh.append("head.means")
    return fresh


def train(config: ImageTransformerConfig | str, settings: TrainSettings,
          init: str | None = None) -> Path:
    """Train an Image Transformer; returns the path of the exported ``final/`` model.

    ``init``: warm-start from a trained model (:func:`init_from`) instead of a fresh one."""
    from imgtx.data import load_images

    if isinstance(config, str):
        config = get_config(config)
    settings.validate()
    train_source = load_images(settings.data, "train", config.image_size)
    eval_source = load_images(settings.eval_data or settings.data, "test", config.image_size,
                              limit=settings.eval_images)
    if config.num_classes and train_source.num_classes is None:
        raise UserError(f"config is class-conditional ({config.num_classes} classes) but "
                        f"{settings.data} has no labels")

    def samples(model: nn.Module, count: int, seed: int) -> torch.Tensor:
        from imgtx.sampling import sample

        labels = torch.arange(count) % config.num_classes if config.num_classes else None
        return sample(model, count, labels=labels, seed=seed, progress=False)

    from imgtx.model import ImageTransformer

    def build() -> ImageTransformer:
        model = ImageTransformer(config)
        if init:
            fresh = init_from(model, init)
            from accelerate import PartialState

            PartialState().print(f"warm-started from {init}; new: {', '.join(fresh) or 'none'}")
        return model

    return fit(build, settings, train_source, eval_source,
               loss=image_transformer_loss, bits=image_transformer_bits, samples=samples)


def config_help() -> str:
    return "; ".join(f"{name} ({entry.source})" for name, entry in CONFIGS.items())
