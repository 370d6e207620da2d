"""Spec for imgtx.hub: dataclass config round trips, strict loading, pickle refusal, offline Hub."""

from __future__ import annotations  # string annotations: the case the bare Hub mixin cannot decode

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # read when huggingface_hub is imported

import dataclasses
import json
import pickle
import re
import shlex
import shutil
import struct
import sys
import time
from pathlib import Path
from typing import ClassVar

import huggingface_hub.constants
import pytest
import torch
from hub_cache import write_offline_hub_cache
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from torch import nn

import imgtx.hub.files
import imgtx.hub.weights
from imgtx.errors import UserError
from imgtx.hub import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigMismatchError,
    CorruptCheckpointError,
    HubModel,
    PickleCheckpointError,
    UnsafePathError,
    check_safetensors_file,
    config_from_dict,
    parameter_count,
)


@dataclasses.dataclass
class InnerConfig:
    """A nested config, to check nested dataclasses round-trip."""

    widths: tuple[int, ...] = (2, 3)
    gain: float = 1.0


@dataclasses.dataclass
class TinyConfig:
    """Config of TinyModel: a field of each kind the real configs use."""

    in_features: int = 4
    hidden: int = 6
    scale: float = 0.5
    name: str = "tiny"
    kernel: tuple[int, int] = (3, 3)
    pattern: tuple[str, ...] = ("local_1d", "full")
    dropout: float | None = None
    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)


class TinyModel(HubModel):
    """Two linear layers: (B, in_features) -> (B, in_features)."""

    model_card_tags = ("test-model",)
    model_card_description = "A two-layer MLP used by the hub tests."

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Linear(config.in_features, config.hidden)
        self.decoder = nn.Linear(config.hidden, config.in_features)
        self.register_buffer("offset", torch.arange(config.in_features, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.tanh(self.encoder(x))) * self.config.scale + self.offset


class TinyModelSubclass(TinyModel):
    """A subclass of a subclass: must get config handling without repeating anything."""


@dataclasses.dataclass
class TiedConfig:
    """Config of TiedModel."""

    vocab: int = 5
    dim: int = 3


class TiedModel(HubModel):
    """Embedding and output head sharing one weight; safetensors stores it once."""

    def __init__(self, config: TiedConfig) -> None:
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab, config.dim)
        self.head = nn.Linear(config.dim, config.vocab, bias=False)
        self.head.weight = self.embed.weight


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    # Also force the flag in case another test module imported huggingface_hub before us.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def make_config() -> TinyConfig:
    return TinyConfig(hidden=5, scale=0.25, name="x", kernel=(5, 1), pattern=("full",),
                      dropout=0.1, inner=InnerConfig(widths=(7, 8, 9), gain=2.0))


@pytest.fixture
def saved(tmp_path) -> tuple[TinyModel, Path]:
    torch.manual_seed(0)
    model = TinyModel(make_config())
    model.save_pretrained(tmp_path / "ckpt")
    return model, tmp_path / "ckpt"


def outputs(model: nn.Module) -> torch.Tensor:
    return model(torch.linspace(-1, 1, 12).reshape(3, 4))


def edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


# --- save / round trip -------------------------------------------------------------------------

def test_save_writes_config_weights_and_card(saved):
    model, folder = saved
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json",
                                                        "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config == {"_class_name": "TinyModel",  # the model class, as diffusers records it
                      **json.loads(json.dumps(dataclasses.asdict(model.config)))}
    assert config["kernel"] == [5, 1] and config["inner"]["widths"] == [7, 8, 9]
    assert set(load_file(folder / "model.safetensors")) == set(model.state_dict())


@pytest.mark.parametrize("cls", [TinyModel, TinyModelSubclass])
def test_round_trip_config_and_outputs_exactly(tmp_path, cls):
    torch.manual_seed(1)
    model = cls(make_config())
    model.save_pretrained(tmp_path)
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is cls and type(loaded.config) is TinyConfig
    assert loaded.config == model.config  # tuples are tuples again, nested dataclass rebuilt
    assert isinstance(loaded.config.kernel, tuple) and isinstance(loaded.config.inner, InnerConfig)
    assert isinstance(loaded.config.inner.widths, tuple)
    assert not loaded.training
    assert torch.equal(outputs(loaded), outputs(model))


def test_missing_config_keys_take_defaults(saved):
    model, folder = saved
    edit_json(folder / "config.json", lambda d: (d.pop("name"), d["inner"].pop("gain")))
    loaded = TinyModel.from_pretrained(folder)
    assert loaded.config.name == "tiny" and loaded.config.inner.gain == 1.0
    assert loaded.config.kernel == (5, 1)
    assert torch.equal(outputs(loaded), outputs(model))


@pytest.mark.parametrize("edit, pattern", [
    (lambda d: d.update(future_knob=3), r"\['future_knob'\].*newer imgtx"),
    (lambda d: d["inner"].update(depth=2), r"inner.*\['depth'\]"),
    (lambda d: d.update(hidden="5"), r"hidden should be int, got '5'"),
    (lambda d: d.update(kernel=[1, 2, 3]), r"kernel should be"),
])
def test_bad_config_json_names_the_problem(saved, edit, pattern):
    _, folder = saved
    edit_json(folder / "config.json", edit)
    with pytest.raises(ConfigMismatchError, match=pattern):
        TinyModel.from_pretrained(folder)


def test_int_in_float_field_becomes_float(saved):
    _, folder = saved
    edit_json(folder / "config.json", lambda d: d.update(scale=1))
    scale = TinyModel.from_pretrained(folder).config.scale
    assert scale == 1.0 and type(scale) is float


def test_config_overrides_and_explicit_config(saved):
    model, folder = saved
    assert TinyModel.from_pretrained(folder, config_overrides={"name": "y"}).config.name == "y"
    loaded = TinyModel.from_pretrained(folder, config=dataclasses.replace(model.config, scale=1.0))
    assert loaded.config.scale == 1.0
    with pytest.raises(ConfigMismatchError, match="nope"):
        TinyModel.from_pretrained(folder, config_overrides={"nope": 1})


def test_wrong_config_type_is_refused():
    with pytest.raises(TypeError, match="TinyModel takes a TinyConfig, got TiedConfig"):
        TinyModel(TiedConfig())


def test_tied_weights_round_trip(tmp_path):
    torch.manual_seed(2)
    model = TiedModel(TiedConfig())
    model.save_pretrained(tmp_path)
    assert len(load_file(tmp_path / "model.safetensors")) == 1  # stored once
    loaded = TiedModel.from_pretrained(tmp_path)  # strict, yet the alias is not "missing"
    assert loaded.head.weight is loaded.embed.weight
    assert torch.equal(loaded.head.weight, model.head.weight)


def test_parameter_count():
    model = TinyModel(TinyConfig(in_features=4, hidden=6))
    assert parameter_count(model) == (4 * 6 + 6) + (6 * 4 + 4)  # the buffer is no parameter
    assert parameter_count(TiedModel(TiedConfig(vocab=5, dim=3))) == 15  # tied counts once
    model.encoder.requires_grad_(False)
    assert parameter_count(model, trainable_only=True) == 6 * 4 + 4


def test_device_and_map_location(saved):
    _, folder = saved
    for kwargs in ({"device": "cpu"}, {"map_location": torch.device("cpu")}, {}):
        loaded = TinyModel.from_pretrained(folder, **kwargs)
        assert all(t.device == torch.device("cpu") for t in loaded.state_dict().values())
    with pytest.raises(ValueError, match="disagree"):
        TinyModel.from_pretrained(folder, device="cpu", map_location="meta")


# --- strict loading ----------------------------------------------------------------------------

def test_shape_mismatch_names_key_and_both_shapes(saved):
    _, folder = saved
    with pytest.raises(CheckpointMismatchError) as info:
        TinyModel.from_pretrained(folder, config_overrides={"hidden": 7})
    message = str(info.value)
    assert "encoder.weight: checkpoint (5, 4) vs model (7, 4)" in message
    assert "decoder.weight: checkpoint (4, 5) vs model (4, 7)" in message
    assert "config.json" in message and "different configuration" in message
    assert isinstance(info.value, RuntimeError)
    assert not info.value.missing and not info.value.unexpected


def test_missing_and_unexpected_keys_raise(saved):
    _, folder = saved
    state = load_file(folder / "model.safetensors")
    del state["decoder.bias"]
    state["extra.weight"] = torch.zeros(2)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError) as info:
        TinyModel.from_pretrained(folder)
    assert info.value.missing == ["decoder.bias"] and info.value.unexpected == ["extra.weight"]
    assert re.search(r"missing from the checkpoint \(1\): decoder\.bias", str(info.value))
    assert re.search(r"unexpected in the checkpoint \(1\): extra\.weight", str(info.value))


def test_long_mismatch_lists_are_cut(saved):
    _, folder = saved
    state = load_file(folder / "model.safetensors")
    state.update({f"extra.{i}": torch.zeros(1) for i in range(25)})
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"\(25\): .*\(15 more\)"):
        TinyModel.from_pretrained(folder)


def test_strict_false_warns_and_loads_what_matches(saved):
    model, folder = saved
    state = load_file(folder / "model.safetensors")
    del state["decoder.bias"]
    save_file(state, folder / "model.safetensors")
    with pytest.warns(UserWarning, match="decoder.bias"):
        loaded = TinyModel.from_pretrained(folder, strict=False)
    assert torch.equal(loaded.encoder.weight, model.encoder.weight)
    assert torch.equal(loaded.decoder.weight, model.decoder.weight)


# --- pickle ------------------------------------------------------------------------------------

def pickle_only(folder: Path) -> None:
    state = load_file(folder / "model.safetensors")
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()


def never_unpickle(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must never unpickle")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)


def convert_as_told(message: str, monkeypatch, cwd: Path | None = None) -> None:
    """Run the `python -c CODE FOLDER` line that the error message ends with, in-process."""
    words = shlex.split(message[message.index("python -c "):])
    assert words[:2] == ["python", "-c"] and len(words) == 4
    if cwd is not None:
        monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", ["-c", words[3]])
    exec(words[2], {})


def test_pickle_checkpoint_needs_allow_pickle(saved, monkeypatch):
    # imgtx never unpickles: allow_pickle=True no longer loads a pickle; the message's one-line
    # command converts it to safetensors, after which the model loads exactly.
    model, folder = saved
    pickle_only(folder)
    with monkeypatch.context() as patch:
        never_unpickle(patch)
        with pytest.raises(PickleCheckpointError, match="allow_pickle=True") as info:
            TinyModel.from_pretrained(folder)
        with pytest.raises(PickleCheckpointError, match="never unpickles"):
            TinyModel.from_pretrained(folder, allow_pickle=True)
    assert isinstance(info.value, UserError) and "\n" not in str(info.value)
    assert "weights_only=True" in str(info.value)
    convert_as_told(str(info.value), monkeypatch)
    loaded = TinyModel.from_pretrained(folder, allow_pickle=True)
    assert torch.equal(outputs(loaded), outputs(model))


def test_pickle_checkpoint_from_hub_cache_needs_allow_pickle(saved, tmp_path, monkeypatch):
    model, folder = saved
    pickle_only(folder)
    write_offline_hub_cache(folder, "org/pickled", tmp_path / "cache")
    with monkeypatch.context() as patch:
        never_unpickle(patch)
        with pytest.raises(PickleCheckpointError, match="pytorch_model.bin") as info:
            TinyModel.from_pretrained("org/pickled", cache_dir=tmp_path / "cache")
        with pytest.raises(PickleCheckpointError, match="hf download org/pickled"):
            TinyModel.from_pretrained("org/pickled", cache_dir=tmp_path / "cache",
                                      allow_pickle=True)
    shutil.copytree(folder, tmp_path / "pickled")  # what `hf download --local-dir` gives
    convert_as_told(str(info.value), monkeypatch, cwd=tmp_path)
    loaded = TinyModel.from_pretrained(tmp_path / "pickled", allow_pickle=True)
    assert torch.equal(outputs(loaded), outputs(model))


# --- offline Hub -------------------------------------------------------------------------------

def test_offline_hub_cache_round_trip(saved, tmp_path):
    model, folder = saved
    cache = tmp_path / "cache"
    commit = write_offline_hub_cache(folder, "org/name", cache)
    assert re.fullmatch(r"[0-9a-f]{40}", commit)
    assert (cache / "models--org--name" / "refs" / "main").read_text() == commit
    assert (cache / "models--org--name" / "snapshots" / commit / "model.safetensors").is_file()
    assert write_offline_hub_cache(folder, "org/name", cache) == commit  # content-addressed
    loaded = TinyModel.from_pretrained("org/name", cache_dir=cache)
    assert loaded.config == model.config
    assert torch.equal(outputs(loaded), outputs(model))


def test_missing_hub_id_offline_fails_fast_and_clearly(tmp_path):
    start = time.monotonic()
    with pytest.raises(CheckpointNotFoundError, match=r"'org/missing'.*HF_HUB_OFFLINE"):
        TinyModel.from_pretrained("org/missing", cache_dir=tmp_path)
    assert time.monotonic() - start < 5.0


def test_missing_local_path_is_reported(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="local directory"):
        TinyModel.from_pretrained(tmp_path / "no" / "such" / "dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFoundError, match="config.json"):
        TinyModel.from_pretrained(tmp_path / "empty")


# --- model card --------------------------------------------------------------------------------

def test_model_card_has_metadata_config_metrics_and_usage(tmp_path):
    model = TinyModel(make_config())
    model.save_pretrained(tmp_path, metrics={"bits/dim on builtin:photos32 test": 4.12},
                          card_extra="Trained for **3 kimg**.", repo_id="org/tiny")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.library_name == "imgtx"
    assert {"imgtx", "image-generation", "test-model"} <= set(card.data.tags)
    text = card.text
    assert f"from {TinyModel.__module__} import TinyModel" in text
    assert 'model = TinyModel.from_pretrained("org/tiny")' in text
    assert "| kernel | (5, 1) |" in text and "| name | x |" in text
    assert f"Parameters: {parameter_count(model):,}" in text
    assert "| bits/dim on builtin:photos32 test | 4.12 |" in text
    assert "A two-layer MLP used by the hub tests." in text and "Trained for **3 kimg**." in text


def test_model_card_is_regenerated_but_a_foreign_readme_is_kept(tmp_path):
    model = TinyModel(make_config())
    model.save_pretrained(tmp_path, metrics={"bits_per_dim": 3.9})
    model.save_pretrained(tmp_path, metrics={"bits_per_dim": 3.5})
    text = (tmp_path / "README.md").read_text()
    assert "| bits_per_dim | 3.5 |" in text and "3.9" not in text
    (tmp_path / "README.md").write_text("# my notes\n")
    with pytest.warns(UserWarning, match="not written by imgtx"):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "README.md").read_text() == "# my notes\n"


# --- user errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("error, old_base", [
    (CheckpointMismatchError, RuntimeError), (ConfigMismatchError, ValueError),
    (PickleCheckpointError, RuntimeError), (CheckpointNotFoundError, FileNotFoundError),
    (CorruptCheckpointError, ValueError), (UnsafePathError, ValueError),
])
def test_hub_errors_are_user_errors_and_keep_their_old_base(error, old_base):
    assert issubclass(error, UserError) and issubclass(error, old_base)


def test_config_json_that_is_not_json_is_a_config_error(saved):
    _, folder = saved
    (folder / "config.json").write_text('{"hidden": 5,')
    with pytest.raises(ConfigMismatchError, match="config.json is not valid JSON"):
        TinyModel.from_pretrained(folder)


# --- fields dropped from a config class --------------------------------------------------------

@dataclasses.dataclass
class RetiredFieldConfig:
    """A config that once saved `backend` (a run-time choice) and no longer has it."""

    IGNORED_CONFIG_FIELDS: ClassVar[tuple[str, ...]] = ("backend",)
    width: int = 2
    inner: InnerConfig = dataclasses.field(default_factory=InnerConfig)


@dataclasses.dataclass
class PlainConfig:
    """The same field without the ClassVar: nothing is ignored."""

    width: int = 2


def test_ignored_config_fields_are_dropped_before_validation():
    old = {"width": 3, "backend": "xformers", "inner": {"gain": 2}}
    assert config_from_dict(RetiredFieldConfig, old) == RetiredFieldConfig(
        width=3, inner=InnerConfig(gain=2.0))
    with pytest.raises(ConfigMismatchError, match=r"\['backend'\]"):
        config_from_dict(PlainConfig, {"width": 3, "backend": "xformers"})
    with pytest.raises(ConfigMismatchError, match=r"\['bogus'\]"):  # others stay errors
        config_from_dict(RetiredFieldConfig, {"backend": "sdpa", "bogus": 1})
    with pytest.raises(ConfigMismatchError, match="width should be int"):
        config_from_dict(RetiredFieldConfig, {"backend": "sdpa", "width": "3"})
    with pytest.raises(ConfigMismatchError, match=r"inner.*\['backend'\]"):  # not inherited
        config_from_dict(RetiredFieldConfig, {"inner": {"backend": "sdpa"}})


# --- safetensors files that lie about their size -----------------------------------------------

def no_safetensors_read(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the file must be refused before safetensors reads it")

    monkeypatch.setattr(imgtx.hub.weights, "load_file", refuse)


def test_truncated_safetensors_is_refused_before_reading(saved, monkeypatch):
    _, folder = saved
    weights = folder / "model.safetensors"
    check_safetensors_file(weights)  # the intact file passes
    weights.write_bytes(weights.read_bytes()[:-10])  # cut inside the last tensor
    no_safetensors_read(monkeypatch)
    with pytest.raises(CorruptCheckpointError, match=r"declares \d+ bytes .* holds \d+") as info:
        TinyModel.from_pretrained(folder)
    assert "download it again" in str(info.value) and isinstance(info.value, UserError)


@pytest.mark.parametrize("content, pattern", [
    (b"\x01\x02", "fewer than the 8-byte header length"),
    (struct.pack("<Q", 1 << 62) + b"{}", "header length says"),  # 4 EiB header
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_broken_safetensors_headers_are_refused(tmp_path, content, pattern):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match=pattern):
        check_safetensors_file(tmp_path / "model.safetensors")


def test_header_declaring_a_huge_tensor_is_refused_quickly(saved, monkeypatch):
    _, folder = saved
    huge = 1 << 40  # 1 TiB of float32 declared in a file of a few hundred bytes
    header = {"encoder.weight": {"dtype": "F32", "shape": [huge // 4],
                                 "data_offsets": [0, huge]}}
    encoded = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"0")
    no_safetensors_read(monkeypatch)
    start = time.monotonic()
    with pytest.raises(CorruptCheckpointError, match=f"declares {huge} bytes .* holds 1"):
        TinyModel.from_pretrained(folder)
    assert time.monotonic() - start < 2.0
    header["encoder.weight"]["shape"] = [3]  # offsets that disagree with dtype x shape
    encoded = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(encoded)) + encoded)
    with pytest.raises(CorruptCheckpointError, match="needs 12 bytes but its offsets span"):
        TinyModel.from_pretrained(folder)


# --- paths that escape the Hub cache -----------------------------------------------------------

@pytest.mark.parametrize("model_id", ["org/../../etc", "../../outside/repo", "..\\..\\x"])
def test_hub_id_with_parent_components_is_refused(tmp_path, model_id):
    with pytest.raises(UnsafePathError, match="outside the Hub cache"):
        TinyModel.from_pretrained(model_id, cache_dir=tmp_path)


def test_local_directory_with_parent_components_still_loads(saved, monkeypatch):
    model, folder = saved
    monkeypatch.chdir(folder)
    loaded = TinyModel.from_pretrained(Path("..") / folder.name)
    assert torch.equal(outputs(loaded), outputs(model))


def test_revision_with_parent_components_is_refused(saved, tmp_path):
    _, folder = saved
    write_offline_hub_cache(folder, "org/name", tmp_path / "cache")
    with pytest.raises(UnsafePathError, match="revision '../../x'"):
        TinyModel.from_pretrained("org/name", cache_dir=tmp_path / "cache", revision="../../x")


def test_tampered_cache_ref_pointing_outside_is_refused(saved, tmp_path):
    _, folder = saved
    cache = tmp_path / "cache"
    write_offline_hub_cache(folder, "org/name", cache)
    shutil.copytree(folder, tmp_path / "outside")  # a planted checkpoint outside the cache
    (cache / "models--org--name" / "refs" / "main").write_text("../../../outside")
    with pytest.raises(UnsafePathError, match="'org/name'.*outside the cache"):
        TinyModel.from_pretrained("org/name", cache_dir=cache)


def test_downloaded_path_outside_the_cache_is_refused(saved, tmp_path, monkeypatch):
    _, folder = saved  # whatever huggingface_hub returns, imgtx checks it lies in the cache
    escaped = str(tmp_path / "cache" / ".." / "elsewhere" / "config.json")
    monkeypatch.setattr(imgtx.hub.files, "hf_hub_download", lambda **kwargs: escaped)
    with pytest.raises(UnsafePathError, match="points outside the cache"):
        TinyModel.from_pretrained("org/name", cache_dir=tmp_path / "cache")
