"""The GAN base classes (``imgtx.gan.base``): ``Generator`` / ``Discriminator.from_pretrained``
build the class config.json names, old folders without the name load as the right class, and
``generate`` and the discriminators' input handling are written once.

Spec:
* ``Generator.from_pretrained`` of a saved TransGAN or STrans generator builds that class, with or
  without ``_class_name`` in config.json (old folders: told apart by their config keys; every
  registry config is told apart so); likewise ``Discriminator``.
* A discriminator's folder given as a generator (and the reverse), or another family's model, is
  refused with one line saying what the folder holds.
* Both generators use ``Generator.generate``; both discriminators use ``Discriminator.forward``,
  which checks the shape and applies DiffAugment when asked, then runs the family's features and
  head.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from imgtx.errors import UserError
from imgtx.gan.base import Discriminator, GANModel, Generator
from imgtx.gan.configs import GAN_CONFIGS, model_classes
from imgtx.gan.diffaugment import diff_augment
from imgtx.gan.sample import load_generator
from imgtx.gan.strans import STransDiscriminator, STransGenerator
from imgtx.gan.transgan import TransGANDiscriminator, TransGANGenerator

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
# The shipped GAN folders; the test strips the class name that newer folders record.
SHIPPED = {"transgan-photos32-small": (TransGANGenerator, TransGANDiscriminator),
           "strans-digits32-cond": (STransGenerator, STransDiscriminator)}


def tiny(name: str) -> tuple[Generator, Discriminator]:
    entry = copy.deepcopy(GAN_CONFIGS[name])  # tests may edit the configs: never the registry's
    g_class, d_class = model_classes(entry.config)
    torch.manual_seed(0)
    return g_class(entry.config).eval(), d_class(entry.discriminator).eval()


def strip_class_name(folder: Path) -> Path:
    """``folder`` as it would have been saved before ``_class_name`` was recorded."""
    config = folder / "config.json"
    data = json.loads(config.read_text())
    del data["_class_name"]
    config.write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_folders_without_a_class_name_load_as_their_class(name, tmp_path):
    g_class, d_class = SHIPPED[name]
    source = CHECKPOINTS / name
    if not (source / "model.safetensors").is_file():
        pytest.skip(f"{name} is not shipped in this checkout")
    folder = tmp_path / name  # as saved before config.json named its class
    shutil.copytree(source, folder)
    for path in (folder, folder / "discriminator"):
        data = json.loads((path / "config.json").read_text())
        data.pop("_class_name", None)
        (path / "config.json").write_text(json.dumps(data))
    generator = Generator.from_pretrained(folder)
    assert type(generator) is g_class and not generator.training
    assert type(load_generator(str(folder))) is g_class
    assert type(Discriminator.from_pretrained(folder / "discriminator")) is d_class
    assert type(GANModel.from_pretrained(folder / "discriminator")) is d_class
    # the same weights as the class's own loader
    own = g_class.from_pretrained(folder)
    assert all(torch.equal(a, b) for a, b in zip(own.state_dict().values(),
                                                 generator.state_dict().values()))


@pytest.mark.parametrize("name", sorted(GAN_CONFIGS))
def test_every_registry_config_is_told_apart_by_its_keys(name):
    entry = GAN_CONFIGS[name]
    g_class, d_class = model_classes(entry.config)
    generator_keys = dataclasses.asdict(entry.config)
    discriminator_keys = dataclasses.asdict(entry.discriminator)
    assert Generator.legacy_class(generator_keys) is g_class
    assert Discriminator.legacy_class(discriminator_keys) is d_class
    assert GANModel.legacy_class(discriminator_keys) is d_class
    # a concrete class loads an old file as itself (HubModel's rule)
    assert g_class.legacy_class(discriminator_keys) is g_class


@pytest.mark.parametrize("name", ["transgan-tiny", "strans-tiny"])
def test_from_pretrained_on_the_base_builds_the_saved_class(name, tmp_path):
    generator, discriminator = tiny(name)
    generator.save_pretrained(tmp_path / "g")
    discriminator.save_pretrained(tmp_path / "d")
    old = strip_class_name(Path(shutil.copytree(tmp_path / "g", tmp_path / "old")))
    for folder in (tmp_path / "g", old):
        loaded = Generator.from_pretrained(folder)
        assert type(loaded) is type(generator) and loaded.config == generator.config
        assert torch.equal(loaded.generate(3, seed=5), generator.generate(3, seed=5))
    loaded = Discriminator.from_pretrained(tmp_path / "d")
    assert type(loaded) is type(discriminator) and loaded.config == discriminator.config


def test_the_wrong_role_or_family_is_refused_in_one_line(tmp_path):
    generator, discriminator = tiny("transgan-tiny")
    generator.save_pretrained(tmp_path / "g")
    discriminator.save_pretrained(tmp_path / "d")
    strip_class_name(Path(shutil.copytree(tmp_path / "d", tmp_path / "old_d")))
    for folder in (tmp_path / "d", tmp_path / "old_d"):
        with pytest.raises(UserError, match="holds a TransGANDiscriminator, not a generator"):
            Generator.from_pretrained(folder)
    with pytest.raises(UserError, match="holds a TransGANGenerator, not a discriminator"):
        Discriminator.from_pretrained(tmp_path / "g")
    with pytest.raises(UserError, match="which is not a STransGenerator"):
        STransGenerator.from_pretrained(tmp_path / "g")
    image_transformer = CHECKPOINTS / "imgtx-photos32-small"
    if (image_transformer / "model.safetensors").is_file():
        with pytest.raises(UserError, match="not a GAN generator checkpoint"):
            load_generator(str(image_transformer))


def test_an_old_generator_config_with_a_bad_key_names_the_key(tmp_path):
    generator, _ = tiny("strans-tiny")
    generator.save_pretrained(tmp_path / "g")
    folder = strip_class_name(tmp_path / "g")
    data = json.loads((folder / "config.json").read_text())
    data["windw"] = 4
    (folder / "config.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="windw"):
        Generator.from_pretrained(folder)


def test_generate_and_the_discriminator_opening_are_written_once():
    for cls in (TransGANGenerator, STransGenerator):
        assert "generate" not in vars(cls) and cls.generate is Generator.generate
    for cls in (TransGANDiscriminator, STransDiscriminator):
        assert "forward" not in vars(cls) and cls.forward is Discriminator.forward


@pytest.mark.parametrize("name", ["transgan-tiny", "strans-tiny"])
def test_discriminator_forward_checks_augments_then_scores(name):
    _, discriminator = tiny(name)
    discriminator.config.diffaug = "translation,cutout,color"
    size = discriminator.config.image_size
    images = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        plain = discriminator.head(discriminator.features(images), None, False)
        assert torch.equal(discriminator(images), plain)  # eval mode: no augmentation
        torch.manual_seed(4)
        augmented = discriminator(images, augment=True)
        torch.manual_seed(4)
        expected = discriminator.head(discriminator.features(
            diff_augment(images, discriminator.config.diffaug)), None, False)
    assert augmented.shape == (3,) and torch.equal(augmented, expected)
    assert not torch.allclose(augmented, plain)  # control: the augmentation changed the input
    with pytest.raises(UserError, match=f"takes \\(B, 3, {size}, {size}\\) images"):
        discriminator(images[:, :, :-1])
