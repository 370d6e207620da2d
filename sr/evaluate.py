"""Evaluation of a super-resolution model on held-out images (``imgtx sr eval``).

Each held-out image is the high-resolution target; its input is the area-downscaled version
(:func:`imgtx.sr.model.make_low_res`, as in training). Reported, per image then averaged (with 95%
confidence half-widths from :func:`imgtx.eval.stats.mean_and_ci95`):

* ``bits_per_dim``: exact ``-log2 p(high | low)`` over all 3*H*W output subpixels, each counted
  once, divided by 3*H*W;
* ``psnr`` / ``ssim`` (scikit-image, via :mod:`imgtx.eval.image_metrics`) of the model's upscale
  at the chosen temperature against the target, side by side with bicubic and nearest-neighbour
  upscales of the same inputs. A PSNR of an exact reconstruction (infinite) counts as
  ``PSNR_CAP`` dB.
* ``psnr_minus_bicubic`` / ``ssim_minus_bicubic``: the mean per-image difference between the
  model and bicubic, with its own (paired) confidence interval;
* optionally ``unconditional_bits_per_dim``: an unconditional Image Transformer's bits/dim of the
  same targets, to show how much the low-resolution input helps.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from imgtx.data import ImageDataError, image_loader, load_images
from imgtx.errors import UserError
from imgtx.eval.bits_per_dim import mean_bits_per_dim, per_image_values
from imgtx.eval.image_metrics import psnr, ssim, upscale_bicubic, upscale_nearest
from imgtx.eval.stats import mean_and_ci95
from imgtx.images import make_grid, save_image
from imgtx.sr.model import SuperResolutionTransformer, make_low_res
from imgtx.sr.upscale import upscale_batch

__all__ = ["held_out_bits_per_dim", "sr_bits", "evaluate", "evaluate_model", "PSNR_CAP"]

PSNR_CAP = 100.0  # dB; stands in for the infinite PSNR of an exact reconstruction


def sr_bits(model: SuperResolutionTransformer, batch: dict) -> torch.Tensor:
    """Each target's conditional bits/dim ``(B,)`` given its area-downscaled input."""
    high_res = batch["image"]  # (B, 3, H, W) uint8
    return model.bits_per_dim(make_low_res(high_res, model.config), high_res)


def held_out_bits_per_dim(model: SuperResolutionTransformer, loader, *, accelerator=None,
                          limit: int | None = None) -> float:
    """Mean conditional bits/dim over ``loader``'s images (targets; inputs made from them), up
    to ``limit`` images, through the one bits/dim loop
    (:func:`imgtx.eval.bits_per_dim.mean_bits_per_dim`). The held-out metric of
    ``imgtx sr train``."""
    return mean_bits_per_dim(model, loader, sr_bits, accelerator=accelerator, limit=limit)


@torch.no_grad()
def evaluate(model: SuperResolutionTransformer, loader, *, temperature: float | None = None,
             seed: int = 0, unconditional=None, grid_path: str | None = None,
             grid_images: int = 8, progress: bool = False, accelerator=None) -> dict:
    """Bits/dim, PSNR and SSIM of ``model`` on ``loader``'s images, with bicubic and nearest
    baselines (see the module docstring). ``unconditional`` is an optional
    :class:`imgtx.ImageTransformer` of the output size. ``grid_path`` writes the first
    ``grid_images`` images as rows of (nearest input, bicubic, model, truth). With an
    ``accelerator`` (and a loader it prepared) the images are shared between processes and the
    per-image figures gathered (:func:`imgtx.eval.bits_per_dim.per_image_values`)."""
    config = model.config
    temperature = config.sampling_temperature if temperature is None else temperature
    device = next(model.parameters()).device
    generator = torch.Generator(device).manual_seed(seed)
    model.eval()
    shown: list[torch.Tensor] = []
    start = time.time()

    def score(batch: dict) -> dict[str, torch.Tensor]:
        high_res = batch["image"]  # (B, 3, H, W) uint8
        low_res = make_low_res(high_res, config)  # (B, 3, h, w)
        values = {"bits_per_dim": model.bits_per_dim(low_res, high_res)}
        if unconditional is not None:
            values["unconditional_bits_per_dim"] = unconditional.bits_per_dim(high_res)
        high_res, low_res = high_res.cpu(), low_res.cpu()
        output = upscale_batch(model, low_res, temperature=temperature,
                               generator=generator).cpu()
        baselines = {"": output, "bicubic_": upscale_bicubic(low_res, config.scale),
                     "nearest_": upscale_nearest(low_res, config.scale)}
        for prefix, images in baselines.items():
            values[prefix + "psnr"] = torch.from_numpy(np.minimum(
                np.asarray(psnr(images, high_res, per_image=True), dtype=np.float64), PSNR_CAP))
            values[prefix + "ssim"] = torch.from_numpy(
                np.asarray(ssim(images, high_res, per_image=True), dtype=np.float64))
        if grid_path and len(shown) < 4 * grid_images:
            for i in range(min(len(high_res), grid_images - len(shown) // 4)):
                shown.extend([baselines["nearest_"][i], baselines["bicubic_"][i], output[i],
                              high_res[i]])
        return {name: value.reshape(-1).to(device) for name, value in values.items()}

    show = progress and (accelerator is None or accelerator.is_main_process)
    bar = tqdm(desc="sr eval", unit="img", disable=not show)
    try:
        per_image = per_image_values(loader, score, accelerator=accelerator, device=device,
                                     bar=bar)
    finally:
        bar.close()
    if not per_image or per_image["bits_per_dim"].numel() == 0:
        raise ImageDataError("no images to evaluate: the data split is empty")
    # Paired per-image differences: tighter than comparing two means with their own intervals.
    for metric in ("psnr", "ssim"):
        per_image[f"{metric}_minus_bicubic"] = per_image[metric] - per_image[f"bicubic_{metric}"]
    result: dict = {}
    for name, values in per_image.items():
        mean, half_width = mean_and_ci95(values.numpy())
        result[name] = round(mean, 5)
        result[name + "_ci95"] = round(half_width, 5)
    result.update(num_images=int(per_image["bits_per_dim"].numel()),
                  temperature=temperature, seed=seed, scale=config.scale,
                  input_size=config.input_size, output_size=config.output_size,
                  seconds=round(time.time() - start, 2))
    if grid_path and shown and (accelerator is None or accelerator.is_main_process):
        save_image(make_grid(torch.stack(shown), columns=4), grid_path)
        result["grid"] = str(grid_path)
    return result


def evaluate_model(model_id: str, data: str, split: str = "test", *, limit: int | None = None,
                   batch_size: int = 64, temperature: float | None = None, seed: int = 0,
                   device: str | None = None, image_column: str | None = None,
                   on_error: str = "raise", unconditional_model: str | None = None,
                   grid_path: str | None = None, progress: bool = True,
                   accelerator=None) -> dict:
    """Load a model (directory or Hub id) and data spec and run :func:`evaluate`.

    The data's images are brought to the model's output size as ``imgtx.data`` does (centre crop
    to a square, area resize): that is the task's target (Parmar et al. 2018, "Image Transformer",
    super-resolution: area-downscaled 8x8 inputs of 32x32 targets), so unlike ``imgtx eval-bpd``
    other sizes are not an error. ``unconditional_model`` names an Image Transformer checkpoint
    whose bits/dim on the same targets is reported as ``unconditional_bits_per_dim``. ``device``
    defaults to CUDA when available. With an ``accelerator`` the images are shared between the
    processes of a ``torchrun`` / ``accelerate launch`` job.
    """
    if accelerator is not None:  # its CPU device is "cpu:0", which safetensors refuses
        device = "cpu" if accelerator.device.type == "cpu" else str(accelerator.device)
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SuperResolutionTransformer.from_pretrained(model_id, device=device)
    size = model.config.output_size
    source = load_images(data, split, size, limit=limit, image_column=image_column,
                         on_error=on_error)
    unconditional = None
    if unconditional_model:
        from imgtx.model import ImageTransformer

        unconditional = ImageTransformer.from_pretrained(unconditional_model, device=device)
        if unconditional.config.image_size != size or unconditional.config.num_classes:
            raise UserError(
                f"--unconditional-model {unconditional_model} models "
                f"{unconditional.config.image_size}x{unconditional.config.image_size} images "
                f"(num_classes={unconditional.config.num_classes}); it must be an unconditional "
                f"model of the super-resolution output size {size}x{size}")
    loader = image_loader(source, batch_size, shuffle=False)
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    result = evaluate(model, loader, temperature=temperature, seed=seed,
                      unconditional=unconditional, grid_path=grid_path, progress=progress,
                      accelerator=accelerator)
    return {"model": str(model_id), "data": data, "split": split, **result}
