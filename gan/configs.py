"""The GAN registry: every named pair of both families, and the one map from a config to its
model classes.

Each family registers its named configs beside its config dataclasses
(:mod:`imgtx.gan.transgan_configs`, :mod:`imgtx.gan.strans_configs`); this module joins them into
``GAN_CONFIGS``, so ``imgtx gan info|train --config NAME`` finds either family, and
:func:`model_classes` says which generator and discriminator classes a config builds. The
TransGAN names are importable from here too (``from imgtx.gan.configs import
TransGANGeneratorConfig``).
"""

from __future__ import annotations

import importlib

from imgtx.errors import UserError
from imgtx.gan.strans_configs import (
    STRANS_CONFIGS,
    STransDiscriminatorConfig,
    STransGeneratorConfig,
)
from imgtx.gan.transgan_configs import (
    NORMS,
    TRANSGAN_CONFIGS,
    UPSAMPLE_MODES,
    TransGANDiscriminatorConfig,
    TransGANEntry,
    TransGANGeneratorConfig,
    get_transgan_config,
)
from imgtx.registry import RegistryEntry, suggest

__all__ = ["GAN_CONFIGS", "gan_entry", "gan_config_names", "model_classes", "family_classes",
           "TRANSGAN_CONFIGS", "TransGANGeneratorConfig",
           "TransGANDiscriminatorConfig", "TransGANEntry", "get_transgan_config",
           "UPSAMPLE_MODES", "NORMS"]

GAN_CONFIGS: dict[str, RegistryEntry] = {**TRANSGAN_CONFIGS, **STRANS_CONFIGS}

# Per family: (generator config, discriminator config, module, generator class, discriminator
# class). The modules are imported on first use: they import the config modules above.
_FAMILIES = (
    (TransGANGeneratorConfig, TransGANDiscriminatorConfig, "imgtx.gan.transgan",
     "TransGANGenerator", "TransGANDiscriminator"),
    (STransGeneratorConfig, STransDiscriminatorConfig, "imgtx.gan.strans",
     "STransGenerator", "STransDiscriminator"),
)


def gan_config_names() -> list[str]:
    """The names of every registered GAN pair (TransGAN first, then STrans)."""
    return list(GAN_CONFIGS)


def gan_entry(name: str) -> RegistryEntry:
    """The registry entry of a named GAN pair (``config``: the generator's, ``discriminator``,
    ``train``: the recipe); a :class:`UserError` naming the known ones otherwise."""
    if name not in GAN_CONFIGS:
        raise UserError(f"unknown GAN config {name!r}{suggest(name, list(GAN_CONFIGS))}; "
                        f"known: {', '.join(GAN_CONFIGS)}")
    return GAN_CONFIGS[name]


def _families() -> list[tuple[type, type, type, type]]:
    """``(G config, D config, G class, D class)`` of every family."""
    families = []
    for g_config, d_config, module, g_name, d_name in _FAMILIES:
        classes = importlib.import_module(module)
        families.append((g_config, d_config, getattr(classes, g_name), getattr(classes, d_name)))
    return families


def model_classes(config) -> tuple[type, type]:
    """``(generator class, discriminator class)`` of the family of ``config`` (a generator or a
    discriminator config of either family)."""
    for g_config, d_config, generator, discriminator in _families():
        if isinstance(config, (g_config, d_config)):
            return generator, discriminator
    raise UserError(f"{type(config).__name__} is not a GAN config; expected one of "
                    f"{', '.join(f[0].__name__ for f in _FAMILIES)}")


def family_classes() -> list[tuple[type, type]]:
    """``(generator class, discriminator class)`` of every family (TransGAN, STrans)."""
    return [(family[2], family[3]) for family in _families()]
