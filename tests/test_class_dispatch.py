"""config.json names its model class (``_class_name``, as diffusers records it), and
``from_pretrained`` on a base class builds the class that was saved.

Spec:
* ``save_pretrained`` writes ``_class_name``; ``Base.from_pretrained`` of a saved subclass builds
  that subclass, and ``HubModel.from_pretrained`` builds any imgtx model.
* A checkpoint of another kind of model is refused with a message naming the class to use.
* Every shipped checkpoint (saved before the class was recorded; never rewritten) still loads as
  the class it holds, and loads as the same model once ``_class_name`` is added to a copy.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from imgtx.hub import ConfigMismatchError, HubModel, config_from_dict
from imgtx.model import ImageTransformer

CHECKPOINTS = Path(__file__).resolve().parent.parent / "checkpoints"


def _classes() -> dict[str, type]:
    from imgtx.gan.strans import STransDiscriminator, STransGenerator
    from imgtx.gan.transgan import TransGANDiscriminator, TransGANGenerator
    from imgtx.sr.model import SuperResolutionTransformer

    return {"ImageTransformer": ImageTransformer,
            "SuperResolutionTransformer": SuperResolutionTransformer,
            "TransGANGenerator": TransGANGenerator,
            "TransGANDiscriminator": TransGANDiscriminator,
            "STransGenerator": STransGenerator, "STransDiscriminator": STransDiscriminator}


# Every shipped Hub-format model folder, with the class it holds.
SHIPPED = {
    "imgtx-photos32-small": "ImageTransformer",
    "imgtx-photos-dmol-small": "ImageTransformer",
    "sr-photos-8to32-small": "SuperResolutionTransformer",
    "sr-corpus-8to32-small": "SuperResolutionTransformer",
    "sr-corpus-8to32-dmol": "SuperResolutionTransformer",
    "transgan-photos32-small": "TransGANGenerator",
    "transgan-photos32-small/discriminator": "TransGANDiscriminator",
    "strans-digits32-cond": "STransGenerator",
    "strans-digits32-cond/discriminator": "STransDiscriminator",
    "strans-corpus32": "STransGenerator",
    "strans-corpus32/discriminator": "STransDiscriminator",
}
# Shipped folders that are not Hub-format models (their own loader and class).
OTHER_FORMATS = {"imgtx-features-small"}


def _shipped_folders() -> set[str]:
    return {str(p.parent.relative_to(CHECKPOINTS)) for p in CHECKPOINTS.rglob("config.json")}


def test_the_table_covers_every_shipped_checkpoint():
    assert _shipped_folders() == set(SHIPPED) | OTHER_FORMATS


@pytest.mark.parametrize("folder", sorted(SHIPPED))
def test_a_shipped_checkpoint_loads_as_its_class_and_again_with_its_class_named(folder, tmp_path):
    cls = _classes()[SHIPPED[folder]]
    source = CHECKPOINTS / folder
    data = json.loads((source / "config.json").read_text())
    # older folders were shipped before config.json named its class; newer ones name the right one
    assert data.pop("_class_name", cls.__name__) == cls.__name__
    copy = tmp_path / "copy"
    copy.mkdir()
    shutil.copy(source / "model.safetensors", copy / "model.safetensors")
    (copy / "config.json").write_text(json.dumps(data))  # without the name, as older folders
    old = cls.from_pretrained(copy)
    assert type(old) is cls and not old.training
    (copy / "config.json").write_text(json.dumps({"_class_name": cls.__name__, **data}))
    for base in (cls, HubModel):
        named = base.from_pretrained(copy)
        assert type(named) is cls and named.config == old.config
        new_state = named.state_dict()
        assert all(torch.equal(value, new_state[key]) for key, value in old.state_dict().items())


def test_the_shipped_feature_network_loads_as_its_class():
    from imgtx.eval.features import SmallFeatureNet, load_small_feature_net

    net = load_small_feature_net(CHECKPOINTS / "imgtx-features-small")
    assert type(net) is SmallFeatureNet and not net.training


# --------------------------------------------------------------------------------------------
# Dispatch on a toy family
# --------------------------------------------------------------------------------------------


@dataclass
class ToyConfig:
    width: int = 3


class ToyBase(HubModel):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.linear = nn.Linear(config.width, config.width)


class ToyDouble(ToyBase):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.linear(x)


class Unrelated(HubModel):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__(config)
        self.scale = nn.Parameter(torch.ones(config.width))


def test_save_records_the_class_and_the_base_class_builds_it(tmp_path):
    torch.manual_seed(0)
    model = ToyDouble(ToyConfig(4))
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"_class_name": "ToyDouble", "width": 4}
    for base in (ToyBase, ToyDouble, HubModel):
        loaded = base.from_pretrained(tmp_path)
        assert type(loaded) is ToyDouble and loaded.config == ToyConfig(4)
        x = torch.randn(2, 4)
        assert torch.equal(loaded(x), model(x))


def test_another_kind_of_model_is_refused_with_the_class_to_use(tmp_path):
    Unrelated(ToyConfig()).save_pretrained(tmp_path / "unrelated")
    with pytest.raises(ConfigMismatchError, match=r"config.json holds a Unrelated, which is not a "
                       r"ToyBase: load it with .*test_class_dispatch.Unrelated.from_pretrained"):
        ToyBase.from_pretrained(tmp_path / "unrelated")
    data = {"_class_name": "NoSuchModel", "width": 3}
    (tmp_path / "unknown").mkdir()
    (tmp_path / "unknown" / "config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigMismatchError, match="import the module that defines NoSuchModel"):
        ToyBase.saved_class(data, "unknown/config.json")


def test_an_image_transformer_refuses_a_super_resolution_checkpoint_by_name(tmp_path):
    from imgtx.sr.configs import get_config
    from imgtx.sr.model import SuperResolutionTransformer

    SuperResolutionTransformer(get_config("tiny")).save_pretrained(tmp_path)
    with pytest.raises(ConfigMismatchError, match="holds a SuperResolutionTransformer, which is "
                       "not a ImageTransformer: load it with imgtx.sr.model"):
        ImageTransformer.from_pretrained(tmp_path)


def test_a_config_without_the_class_loads_as_the_class_asked_or_the_legacy_choice(tmp_path):
    ToyDouble(ToyConfig()).save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    del data["_class_name"]
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert type(ToyBase.from_pretrained(tmp_path)) is ToyBase  # the class it is loaded with

    class Chooser(ToyBase):
        @classmethod
        def legacy_class(cls, data):
            return ToyDouble if data.get("width") == 3 else cls

    assert Chooser.saved_class(data) is ToyDouble
    assert Chooser.saved_class({"width": 5}) is Chooser


def test_the_class_name_is_not_a_config_field():
    assert config_from_dict(ToyConfig, {"_class_name": "ToyDouble", "width": 2}) == ToyConfig(2)
