"""Training of the super-resolution model (``imgtx sr train``) on the shared likelihood loop.

Everything but the model, the loss and the sample grids is :func:`imgtx.training.likelihood.fit`
on :class:`imgtx.training.Run`: the data specs, accelerate, the noam schedule, progress in images
seen, ``metrics.jsonl``, checkpoints (``--resume``) and the Hub-format ``final/`` export.

Pairs are made on the fly: the target is the data set's image brought to the output size (a
centre crop to a square, then an area resize, as :mod:`imgtx.data` does) and the input is its area
downscale (:func:`imgtx.sr.model.make_low_res`; Parmar et al. 2018, "Image Transformer",
super-resolution: 8x8 inputs area-downscaled from 32x32 targets).
"""

from __future__ import annotations

from pathlib import Path

import torch

from imgtx.data import load_images
from imgtx.errors import UserError
from imgtx.eval.image_metrics import upscale_nearest
from imgtx.images import make_grid
from imgtx.sr.configs import SuperResolutionConfig, get_config
from imgtx.sr.evaluate import sr_bits
from imgtx.sr.model import SuperResolutionTransformer, make_anchors, make_low_res
from imgtx.sr.upscale import upscale_batch
from imgtx.training.likelihood import TrainSettings, fit

__all__ = ["train", "pair_loss", "init_decoder_from", "offset_log_prior", "DecoderInitError"]

class DecoderInitError(UserError, ValueError):
    """``--decoder-init`` names a model whose weights do not fit the decoder."""


PRIOR_IMAGES = 2048  # training images whose target - anchor histogram sets the offset prior


def pair_loss(model: SuperResolutionTransformer, batch: dict,
              config: SuperResolutionConfig) -> torch.Tensor:
    """Mean bits/dim of a batch of targets given their downscaled inputs. Goes through
    ``model(...)`` (not a method) so that accelerate's distributed wrapper sees the call."""
    high_res = batch["image"]  # (B, 3, H, W) uint8
    return model(make_low_res(high_res, config), high_res, with_loss=True).loss


@torch.no_grad()
def offset_log_prior(source, config: SuperResolutionConfig, limit: int = PRIOR_IMAGES,
                     smoothing: float = 0.5) -> torch.Tensor:
    """Log-probabilities ``(511,)`` of ``target - anchor`` (offsets -255..255) over up to
    ``limit`` images of ``source`` spread evenly through it, with ``smoothing`` added to every
    count so that no offset is impossible. Sets an anchored model's offset prior
    (:meth:`imgtx.ImageTransformer.set_offset_prior`) before training."""
    if config.anchor == "none":
        raise ValueError("offset_log_prior needs a config with an anchor")
    stride = max(1, len(source) // limit)
    counts = torch.full((511,), smoothing, dtype=torch.float64)
    indices = list(range(0, len(source), stride))[:limit]
    for start in range(0, len(indices), 256):
        high_res = torch.stack([source[i]["image"] for i in indices[start : start + 256]])
        anchors = make_anchors(make_low_res(high_res, config), config)
        offsets = high_res.long() - anchors.long() + 255
        counts += torch.bincount(offsets.flatten(), minlength=511).double()
    return (counts / counts.sum()).log().float()


def init_decoder_from(model: SuperResolutionTransformer, image_transformer: str, *,
                      freeze: bool = False) -> int:
    """Warm-start the decoder from a trained unconditional Image Transformer of the same decoder
    shape (``save_pretrained`` dir or Hub id). Cross-attention and the encoder keep their fresh
    initialisation. Returns the number of tensors copied; raises if any shape differs.

    The decoder's layers add cross-attention (and its ``cross_norm``) to the Image
    Transformer's; every other name is the same. An anchored categorical decoder keeps its
    own (zero) value head: the unconditional model's next-value logits, added to the anchor's
    offset prior, start it far worse (5.9 vs 5.2 bits/dim, 21.9 vs 26.9 dB at temperature 0 on
    held-out photos) than the prior alone.

    A DMOL decoder takes the whole source, head included, and starts its cross-attention
    outputs (and anchor inputs) at zero: the warm-started model is then exactly the source's
    function, with the source's bits/dim, and training only adds what the input tells it.

    ``freeze``: the copied tensors stop taking gradients, so training moves only the encoder,
    cross-attention and anchor inputs (an adapter on a fixed unconditional model).
    """
    from imgtx.model import ImageTransformer

    source = ImageTransformer.from_pretrained(image_transformer).state_dict()
    target = model.decoder.state_dict()
    # An anchored decoder has an offset head (older versions also said so in `anchored`).
    anchored = bool(getattr(model.decoder, "anchored", hasattr(model.decoder, "offset_head")))
    copied = {}
    for name, tensor in source.items():
        if anchored and name.startswith("head."):
            continue
        if name not in target or target[name].shape != tensor.shape:
            raise DecoderInitError(f"cannot warm-start the decoder from {image_transformer}: "
                                   f"{name} has no counterpart of shape {tuple(tensor.shape)}")
        copied[name] = tensor
    model.decoder.load_state_dict(copied, strict=False)
    if model.config.decoder.likelihood == "dmol":
        with torch.no_grad():
            for layer in model.decoder.layers:
                layer.cross_attn.proj.weight.zero_()
                layer.cross_attn.proj.bias.zero_()
    if freeze:
        for name, parameter in model.decoder.named_parameters():
            if name in copied:
                parameter.requires_grad_(False)
    return len(copied)


def init_model_from(config: SuperResolutionConfig, source: str) -> SuperResolutionTransformer:
    """A super-resolution model of ``config`` starting from the trained model ``source``: the
    same config, or the same plus ``predictor`` (whose head starts at zero, so the model begins
    as the source's function). Anything else raises a :class:`DecoderInitError`."""
    trained = SuperResolutionTransformer.from_pretrained(source)
    if trained.config == config:
        return trained
    if (trained.config.decoder.predictor != "none"
            or config.updated(predictor="none") != trained.config):
        raise DecoderInitError(f"{source} has another config than the one being trained: "
                               f"{trained.config} != {config}")
    model = SuperResolutionTransformer(config)
    missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
    if unexpected or any(not name.startswith("decoder.predictor_head.") for name in missing):
        raise DecoderInitError(f"cannot grow {source} by a predictor: missing {missing}, "
                               f"unexpected {unexpected}")
    return model


def train(config: SuperResolutionConfig | str, settings: TrainSettings,
          decoder_init: str | None = None, model_init: str | None = None,
          freeze_decoder: bool = False) -> Path:
    """Train a super-resolution model; returns the path of the exported ``final/`` model.

    ``decoder_init``: warm-start the decoder from an unconditional Image Transformer (see
    :func:`init_decoder_from`; ``freeze_decoder`` keeps the copied weights fixed). An anchored
    model's offset prior is set from the training data
    (:func:`offset_log_prior`). ``model_init``: start instead from a whole trained
    super-resolution model of the same config (fine-tuning it on ``settings.data``; its
    offset prior is kept). Sample grids (``samples/step_*.png``) show, per held-out image, a
    column of nearest-neighbour input, model upscale (``config.sampling_temperature``) and ground
    truth.
    """
    if isinstance(config, str):
        config = get_config(config)
    settings.validate()
    size = config.output_size
    train_source = load_images(settings.data, "train", size)
    eval_source = load_images(settings.eval_data or settings.data, "test", size,
                              limit=settings.eval_images)

    def loss(model: SuperResolutionTransformer, batch: dict) -> torch.Tensor:
        return pair_loss(model, batch, config)

    def samples(model: SuperResolutionTransformer, count: int, seed: int) -> torch.Tensor:
        count = min(count, len(eval_source))
        device = next(model.parameters()).device
        high_res = torch.stack([eval_source[i]["image"] for i in range(count)])
        low_res = make_low_res(high_res, config)
        generator = torch.Generator(device).manual_seed(seed)
        output = upscale_batch(model, low_res, generator=generator).cpu()
        rows = torch.cat([upscale_nearest(low_res, config.scale), output, high_res])
        return make_grid(rows, columns=count)[None]  # (1, 3, ., .) one pre-arranged grid

    if model_init and decoder_init:
        raise ValueError("pass decoder_init or model_init, not both")
    if freeze_decoder and not decoder_init:
        raise ValueError("freeze_decoder needs decoder_init (the weights to keep fixed)")
    prior = None
    if config.anchor != "none" and config.decoder.likelihood == "cat" and not model_init:
        prior = offset_log_prior(train_source, config)

    def build() -> SuperResolutionTransformer:
        if model_init:
            return init_model_from(config, model_init).train()
        model = SuperResolutionTransformer(config)
        if decoder_init:
            count = init_decoder_from(model, decoder_init, freeze=freeze_decoder)
            from accelerate import PartialState

            PartialState().print(f"decoder warm-started from {decoder_init} ({count} tensors)")
        if prior is not None:
            model.decoder.set_offset_prior(prior)
        return model

    return fit(build, settings, train_source, eval_source, loss=loss, bits=sr_bits,
               samples=samples)
