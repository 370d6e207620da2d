"""Load a GAN generator of either family from a folder or Hub id, and write its samples.

A checkpoint's ``config.json`` says which family it is: the generator classes are tried in turn
and the first whose config dataclass accepts every key builds the model (loading is strict). A
discriminator, an Image Transformer or anything else is refused with a
:class:`~imgtx.errors.UserError` that says what the checkpoint is.

``imgtx gan sample`` writes a grid (``--out``) or ``N`` separate PNGs (``--out-dir``,
``000000.png``, ... : the layout external FID tools read).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from imgtx.errors import UserError
from imgtx.gan.configs import discriminator_classes, generator_classes

__all__ = ["load_generator", "write_samples"]


def _read_config(model: str) -> dict:
    from imgtx.hub.files import config_file, hub_options

    path = config_file(model, hub_options(model), "GAN generator")
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as error:
        raise UserError(f"{model}/config.json is not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise UserError(f"{model}/config.json is not a JSON object")
    return data


def _accepts(cls: type, data: dict) -> bool:
    from imgtx.hub.config import config_from_dict
    from imgtx.hub.errors import ConfigMismatchError

    try:
        config_from_dict(cls.resolve_config_class(), data)
    except (ConfigMismatchError, UserError, TypeError, ValueError):
        return False
    return True


def _closest_class(data: dict) -> type | None:
    """The generator class whose config fields cover most of ``data``'s keys (at least half)."""
    import dataclasses

    best, best_share = None, 0.5
    for cls in generator_classes():
        fields = {field.name for field in dataclasses.fields(cls.resolve_config_class())}
        share = len(fields & set(data)) / max(len(data), 1)
        if share > best_share:
            best, best_share = cls, share
    return best


def load_generator(model: str, device: str | torch.device = "cpu") -> nn.Module:
    """The generator saved in ``model`` (a ``save_pretrained`` folder or a Hub id), in eval mode.

    Raises :class:`UserError` when the checkpoint is not a TransGAN or STrans generator (a
    discriminator, another model family, a config no class accepts).
    """
    data = _read_config(model)
    for cls in generator_classes():
        if _accepts(cls, data):
            return cls.from_pretrained(model, device=device)
    for cls in discriminator_classes():
        if _accepts(cls, data):
            raise UserError(f"{model} is a {cls.__name__}, not a generator; pass the folder of "
                            "the generator (a run's final/, whose discriminator/ holds D)")
    closest = _closest_class(data)
    if closest is not None:  # a generator's config with a bad field: say which one
        from imgtx.hub.config import config_from_dict

        config_from_dict(closest.resolve_config_class(), data, where=f"{model}/config.json")
    names = ", ".join(cls.__name__ for cls in generator_classes())
    raise UserError(f"{model} is not a GAN generator checkpoint: its config.json fits none of "
                    f"{names} (keys: {', '.join(sorted(data)[:8])}, ...). For Image Transformer "
                    "checkpoints use `imgtx sample`")


def write_samples(generator: nn.Module, num: int, *, out: str | Path | None = None,
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
