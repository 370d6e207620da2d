"""``imgtx gan``: transformer GANs on the command line.

    imgtx gan info --config NAME|all [--json]

``imgtx.cli`` calls :func:`register` with its subparsers. Parameter counts are taken on the meta
device, so even the 256^2 models are counted without allocating their weights.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

__all__ = ["register", "info_rows", "build_gan"]


def _model_classes(config) -> tuple[type, type]:
    """(generator class, discriminator class) for a generator config of either family."""
    from imgtx.gan.configs import TransGANGeneratorConfig

    if isinstance(config, TransGANGeneratorConfig):
        from imgtx.gan.transgan import TransGANDiscriminator, TransGANGenerator

        return TransGANGenerator, TransGANDiscriminator
    from imgtx.gan.strans import STransDiscriminator, STransGenerator

    return STransGenerator, STransDiscriminator


def build_gan(name: str, device: str | torch.device | None = None, **generator_overrides):
    """Fresh ``(generator, discriminator)`` of a named config (TransGAN or STrans).

    ``device="meta"`` builds them without allocating weights (for counting parameters).
    ``generator_overrides`` replace generator config fields; ``num_classes`` and
    ``checkpoint_blocks`` are passed on to the discriminator too.
    """
    import dataclasses

    from imgtx.gan.configs import gan_entry

    entry = gan_entry(name)
    g_config = dataclasses.replace(entry.config, **generator_overrides)
    d_fields = {f.name for f in dataclasses.fields(entry.discriminator)}
    shared = {k: v for k, v in generator_overrides.items()
              if k in ("num_classes", "checkpoint_blocks") and k in d_fields}
    d_config = dataclasses.replace(entry.discriminator, **shared)
    g_class, d_class = _model_classes(g_config)
    with torch.device(device or "cpu"):
        return g_class(g_config), d_class(d_config)


def info_rows(names: list[str]) -> list[dict]:
    """Per config: name, source, generator/discriminator parameter counts and both configs."""
    from imgtx.gan.configs import gan_entry

    from imgtx.hub import parameter_count

    rows = []
    for name in names:
        entry = gan_entry(name)
        generator, discriminator = build_gan(name, device="meta")
        rows.append({"name": name, "generator_params": parameter_count(generator),
                     "discriminator_params": parameter_count(discriminator),
                     "image_size": entry.config.image_size, "source": entry.source,
                     "generator": asdict(entry.config),
                     "discriminator": asdict(entry.discriminator), "train": entry.train})
    return rows


def _info(args: argparse.Namespace) -> int:
    from imgtx.gan.configs import gan_config_names

    names = gan_config_names() if args.config == "all" else [args.config]
    rows = info_rows(names)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
        return 0
    for row in rows:
        print(f"{row['name']}: {row['image_size']}x{row['image_size']}, G "
              f"{row['generator_params']:,} / D {row['discriminator_params']:,} parameters - "
              f"{row['source']}")
        if len(rows) == 1:
            for part in ("generator", "discriminator"):
                print(f"  {part}:")
                for key, value in row[part].items():
                    print(f"    {key} = {value}")
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``gan`` command group to ``imgtx``'s subparsers; returns the group's parser
    (other modules add their subcommands to ``parser.gan_subparsers``)."""
    parser = subparsers.add_parser("gan", help="transformer GANs (TransGAN, STrans)")
    sub = parser.add_subparsers(dest="gan_command")
    parser.gan_subparsers = sub
    p = sub.add_parser("info", help="parameter counts and settings of named GAN configs")
    p.add_argument("--config", required=True, help="config name, or 'all'")
    p.add_argument("--json", action="store_true", help="print one JSON line")
    p.set_defaults(func=_info)
    return parser
