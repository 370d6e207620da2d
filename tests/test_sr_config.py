"""SuperResolutionConfig holds its decoder's ImageTransformerConfig; flat config.json files written
before that load as the same model (every shipped SR checkpoint is flat: see also
tests/test_shipped_outputs.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from imgtx.configs import ImageTransformerConfig
from imgtx.sr.configs import DECODER_FIELDS, SuperResolutionConfig, get_config
from imgtx.sr.model import SuperResolutionTransformer

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"
SHIPPED = ["sr-photos-8to32-small", "sr-corpus-8to32-small", "sr-corpus-8to32-dmol"]


def flat_dict(config: SuperResolutionConfig) -> dict:
    """The config as the flat config.json of earlier versions wrote it."""
    data = {k: v for k, v in dataclasses.asdict(config).items() if k != "decoder"}
    data.update({flat: getattr(config.decoder, nested) for flat, nested in DECODER_FIELDS.items()})
    return json.loads(json.dumps(data))


def test_the_decoder_is_an_image_transformer_config_of_the_output_size():
    config = get_config("tiny", input_size=2, likelihood="dmol", neighbour_inputs=True)
    assert isinstance(config.decoder, ImageTransformerConfig)
    assert config.decoder.image_size == 8 and config.decoder.num_classes == 0
    assert config.decoder.likelihood == "dmol" and config.likelihood == "dmol"
    assert config.decoder_layers == config.decoder.num_layers == 2
    assert config.decoder_config() == config.decoder and config.decoder_config() is not \
        config.decoder


@pytest.mark.parametrize("name", ["tiny", "tiny-2d", "corpus-8to32-dmol", "celeba-8to32-2d"])
def test_a_flat_config_upgrades_to_the_nested_one(name):
    config = get_config(name)
    data = flat_dict(config)
    assert "decoder" not in data and "num_layers" not in data
    assert SuperResolutionConfig.from_dict(data) == config
    nested = json.loads(json.dumps(dataclasses.asdict(config)))
    assert SuperResolutionConfig.from_dict(nested) == config


def test_missing_flat_keys_take_the_flat_defaults_of_their_time():
    """Flat configs left out what equalled the flat defaults (e.g. 8 heads, not the Image
    Transformer's 4)."""
    config = SuperResolutionConfig.from_dict({"input_size": 4, "scale": 4, "hidden_size": 64,
                                              "backend": "auto"})
    assert config.decoder.num_heads == 8 and config.decoder.num_layers == 8
    assert config.decoder.block_length == 128 and config.decoder.memory_flange == (8, 64)
    assert config.decoder.hidden_size == 64 and config.decoder.image_size == 16
    with pytest.raises(ValueError, match="does not define"):
        SuperResolutionConfig.from_dict({"input_size": 4, "hidden_size": 64, "colour": "red"})


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_flat_checkpoints_load_and_save_nested(name, tmp_path):
    folder = CHECKPOINTS / name
    if not (folder / "model.safetensors").exists():
        pytest.skip("the shipped checkpoint is not in this checkout")
    assert "decoder" not in json.loads((folder / "config.json").read_text())  # flat
    model = SuperResolutionTransformer.from_pretrained(folder)
    model.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert saved["decoder"]["num_layers"] == model.config.decoder.num_layers
    assert not set(saved) & set(DECODER_FIELDS)
    loaded = SuperResolutionTransformer.from_pretrained(tmp_path / "again")
    assert loaded.config == model.config
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor)


def test_flat_names_set_the_decoder_in_place():
    config = get_config("tiny")
    config.block_length = 8  # what `imgtx sr train --set block_length=8` does
    assert config.decoder.block_length == 8
    assert config.updated(decoder_layers=3, anchor="bicubic").decoder.num_layers == 3
