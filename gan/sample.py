"""Load a GAN generator of either family from a folder or Hub id, and write its samples.

A checkpoint's ``config.json`` names its class (``_class_name``), so
:meth:`imgtx.gan.base.Generator.from_pretrained` builds the generator that was saved (folders
saved before the name was recorded are told apart by their config keys). A discriminator, an
Image Transformer or anything else is refused with a :class:`~imgtx.errors.UserError` that says
what the checkpoint is.

``imgtx gan sample`` writes a grid (``--out``) or ``N`` separate PNGs (``--out-dir``,
``000000.png``, ... : the layout external FID tools read).
"""

from __future__ import annotations

from pathlib import Path

import torch

from imgtx.errors import UserError
from imgtx.gan.base import Generator

__all__ = ["load_generator", "write_samples"]


def load_generator(model: str, device: str | torch.device = "cpu") -> Generator:
    """The generator saved in ``model`` (a ``save_pretrained`` folder or a Hub id), in eval mode:
    ``Generator.from_pretrained(model, device=device)``.

    Raises :class:`UserError` when the checkpoint is not a TransGAN or STrans generator (a
    discriminator, another model family, a config no class accepts).
    """
    return Generator.from_pretrained(model, device=device)


def write_samples(generator: Generator, num: int, *, out: str | Path | None = None,
                  out_dir: str | Path | None = None, seed: int = 0,
                  class_label: int | None = None, batch_size: int = 64,
                  scale: int = 1) -> dict:
    """``num`` samples of ``generator`` as one grid PNG (``out``) or ``num`` PNGs in ``out_dir``
    (``000000.png``, ...); returns a summary (paths, count, image size)."""
    from imgtx.images import save_grid, save_image

    if (out is None) == (out_dir is None):
        raise UserError("give exactly one of --out (a grid) and --out-dir (one PNG per sample)")
    num_classes = int(getattr(generator.config, "num_classes", 0) or 0)
    if class_label is not None and not 0 <= class_label < max(num_classes, 1):
        raise UserError(f"--class-label {class_label}: the generator has {num_classes} classes"
                        if num_classes else "--class-label: this generator is unconditional")
    labels = class_label if num_classes else None
    images = generator.generate(num, labels=labels, seed=seed, batch_size=batch_size)
    summary = {"num_images": num, "image_size": int(images.shape[-1]), "seed": seed}
    if out is not None:
        summary["out"] = str(save_grid(images, out, scale=scale))
    else:
        folder = Path(out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for index, image in enumerate(images):
            save_image(image, folder / f"{index:06d}.png")
        summary["out_dir"] = str(folder)
    return summary
