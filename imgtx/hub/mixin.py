"""``HubModel``: the base of every imgtx model -- a dataclass config plus Hub save/load.

A model is built as ``Model(config)`` where ``config`` is a ``@dataclass``. ``save_pretrained(dir)``
writes ``config.json`` (the dataclass fields), ``model.safetensors`` and a ``README.md`` model card;
``Model.from_pretrained(dir_or_hub_id)`` rebuilds the dataclass (:mod:`imgtx.hub.config`), checks
the safetensors file (:mod:`imgtx.hub.weights`) and loads the weights strictly. It never unpickles
(:mod:`imgtx.hub.files`). The save/push machinery is ``huggingface_hub.PyTorchModelHubMixin``'s.

config.json names its model class (``"_class_name"``, as diffusers' ``ConfigMixin`` writes it), so
``from_pretrained`` on a family's base class builds the subclass that was saved, and refuses a
checkpoint of another family with a message that names the class to use. A config.json written
before the class was recorded loads as the class it is loaded with (or the one its base class's
:meth:`HubModel.legacy_class` picks).
"""

from __future__ import annotations

import dataclasses
import json
import typing
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import PyTorchModelHubMixin
from huggingface_hub.repocard import ModelCard, ModelCardData
from torch import nn

from imgtx.hub.config import CLASS_NAME_KEY, config_from_dict
from imgtx.hub.errors import ConfigMismatchError
from imgtx.hub.files import CONFIG_FILE, config_file, find_weights, hub_options
from imgtx.hub.weights import load_safetensors, load_state_dict_checked, parameter_count

__all__ = ["CARD_MARKER", "HubModel"]

CARD_MARKER = "<!-- written by imgtx.hub: regenerated on every save_pretrained -->"

M = TypeVar("M", bound="HubModel")


class HubModel(nn.Module, PyTorchModelHubMixin, library_name="imgtx",
               tags=["imgtx", "image-generation"]):
    """Base of every imgtx model: ``Model(config)`` with a dataclass config, plus Hub save/load.

    Subclasses annotate ``def __init__(self, config: SomeConfig)`` (or set ``config_class``) and
    call ``super().__init__(config)``; they may set ``model_card_tags`` and
    ``model_card_description``. Nothing else is needed, in subclasses of subclasses too.
    """

    config_class: ClassVar[type | None] = None
    model_card_tags: ClassVar[tuple[str, ...]] = ()
    model_card_description: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        super().__init__()
        expected = type(self).resolve_config_class()
        if not isinstance(config, expected):
            raise TypeError(f"{type(self).__name__} takes a {expected.__name__}, "
                            f"got {type(config).__name__}")
        self.config = config

    @classmethod
    def resolve_config_class(cls) -> type:
        """The config dataclass: ``config_class`` if set, else the ``config`` annotation."""
        if cls.config_class is not None:
            return cls.config_class
        try:
            annotation = typing.get_type_hints(cls.__init__).get("config")
        except Exception:
            annotation = None
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(options) == 1:  # Optional[SomeConfig]
            annotation = options[0]
        if not (isinstance(annotation, type) and dataclasses.is_dataclass(annotation)):
            raise TypeError(f"{cls.__name__} must name its config dataclass: annotate "
                            "`def __init__(self, config: SomeConfig)` or set `config_class`.")
        return annotation

    @classmethod
    def from_pretrained(
        cls: type[M],
        pretrained_model_name_or_path: str | Path,
        *,
        config: Any = None,
        config_overrides: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        map_location: str | torch.device | None = None,
        strict: bool = True,
        allow_pickle: bool = False,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> M:
        """Build the model from a ``save_pretrained`` directory or a Hub repo id, in eval mode.

        ``config`` replaces config.json; ``config_overrides`` replaces some of its fields.
        ``device`` (alias ``map_location``, default cpu) is where the weights go. Loading is
        strict (see :func:`load_state_dict_checked`). Pickle weights are never loaded;
        ``allow_pickle`` is accepted for old callers and changes nothing: a lone
        ``pytorch_model.bin`` raises :class:`PickleCheckpointError` with the command that
        converts it. A truncated or inconsistent safetensors file raises
        :class:`CorruptCheckpointError` before anything large is read.
        Without network, set ``HF_HUB_OFFLINE=1`` (or ``local_files_only=True``) so that a cache
        miss fails at once instead of after ~20 s of retries.
        """
        if device is not None and map_location is not None and \
                torch.device(device) != torch.device(map_location):
            raise ValueError(f"device={device!r} and map_location={map_location!r} disagree; "
                             "pass one of them.")
        target = torch.device(device if device is not None else map_location or "cpu")
        model_id = str(pretrained_model_name_or_path)
        hub = hub_options(model_id, revision=revision, cache_dir=cache_dir,
                          force_download=force_download, local_files_only=local_files_only,
                          token=token)
        model_class = cls
        if config is None:
            where = f"{model_id}/{CONFIG_FILE}"
            path = config_file(model_id, hub, cls.__name__)
            try:
                data = json.loads(path.read_text())
            except ValueError as error:  # json.JSONDecodeError, UnicodeDecodeError
                raise ConfigMismatchError(f"{where} is not valid JSON ({error}); fix it, or "
                                          "re-save the model with save_pretrained.") from error
            model_class = cls.saved_class(data, where)
            config = model_class.config_from_saved(data, where)
        if config_overrides:
            config = model_class.override_config(config, config_overrides)
        weights_path = find_weights(model_id, hub)
        state_dict = load_safetensors(weights_path, target)  # header checked before reading
        model = model_class(config).to(target)
        load_state_dict_checked(model, state_dict, strict=strict,
                                source=f"{model_id}/{Path(weights_path).name}")
        return model.eval()

    @classmethod
    def saved_class(cls, data: Mapping[str, Any], where: str = CONFIG_FILE) -> type[HubModel]:
        """The class to build from a config.json ``data``: ``cls`` or the subclass of it that
        ``data["_class_name"]`` names; without that key, :meth:`legacy_class`.

        Raises :class:`ConfigMismatchError` when the named class is not ``cls`` or one of its
        subclasses (a checkpoint of another kind of model), saying which class to load it with.
        """
        name = data.get(CLASS_NAME_KEY) if isinstance(data, Mapping) else None
        if name is None:
            return cls.legacy_class(data)
        if name == cls.__name__:
            return cls
        matches = [c for c in _family(cls) if c.__name__ == name]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise ConfigMismatchError(f"{where} names class {name!r}, which several subclasses "
                                      f"of {cls.__name__} are called: load it with one of "
                                      f"{[f'{c.__module__}.{c.__qualname__}' for c in matches]}.")
        known = [c for c in _family(HubModel) if c.__name__ == name]
        hint = (f"load it with {known[0].__module__}.{name}.from_pretrained" if known else
                f"import the module that defines {name}, or load it with its own class")
        raise ConfigMismatchError(f"{where} holds a {name}, which is not a {cls.__name__}: "
                                  f"{hint}.")

    @classmethod
    def config_from_saved(cls, data: Mapping[str, Any], where: str = CONFIG_FILE) -> Any:
        """This class's config from a config.json ``data`` (see :func:`config_from_dict`). A
        family whose config layout changed overrides this to upgrade old files."""
        return config_from_dict(cls.resolve_config_class(), data, where=where)

    @classmethod
    def override_config(cls, config: Any, overrides: Mapping[str, Any]) -> Any:
        """``config`` with some fields replaced (``from_pretrained(config_overrides=...)``);
        :class:`ConfigMismatchError` for a field the config does not have."""
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(config)})
        if unknown:
            raise ConfigMismatchError(f"config_overrides names fields {unknown} that "
                                      f"{type(config).__name__} does not have.")
        return dataclasses.replace(config, **overrides)

    @classmethod
    def legacy_class(cls, data: Mapping[str, Any]) -> type[HubModel]:
        """The class of a config.json saved before ``_class_name`` was recorded: ``cls``. A
        family's base class whose subclasses must be told apart overrides this (by the keys of
        ``data``), for its old checkpoints only."""
        return cls

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: Any = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        card_extra: str | None = None,
        **push_to_hub_kwargs: Any,
    ) -> str | None:
        """Write config.json, model.safetensors and a README.md model card to ``save_directory``.

        ``metrics`` (name -> value) and ``card_extra`` (markdown) go into the card; through
        ``push_to_hub`` pass them in ``model_card_kwargs``. A README.md that imgtx did not write
        is left unchanged (with a warning). Returns the commit URL when ``push_to_hub=True``.
        """
        card_kwargs = dict(model_card_kwargs or {})
        if metrics is not None:
            card_kwargs["metrics"] = metrics
        if card_extra is not None:
            card_kwargs["card_extra"] = card_extra
        # the id the card's usage snippet loads: the Hub repo when pushing, else this directory
        card_kwargs.setdefault("repo_id", repo_id or (Path(save_directory).name if push_to_hub
                                                      else str(save_directory)))
        card_path = Path(save_directory) / "README.md"
        if card_path.is_file():
            if CARD_MARKER in card_path.read_text(encoding="utf-8"):
                card_path.unlink()
            else:
                warnings.warn(f"{card_path} was not written by imgtx; left unchanged, so the "
                              "model card (and any metrics) was not written.", stacklevel=2)
        config = self._hub_config() if config is None else config
        if dataclasses.is_dataclass(config):  # config.json names the class (CLASS_NAME_KEY)
            config = {CLASS_NAME_KEY: type(self).__name__, **dataclasses.asdict(config)}
        return super().save_pretrained(
            save_directory, config=config,
            repo_id=repo_id, push_to_hub=push_to_hub, model_card_kwargs=card_kwargs,
            **push_to_hub_kwargs)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict[str, Any] | None = None,
                    **kwargs: Any) -> str:
        """Upload to the Hub (see ``PyTorchModelHubMixin.push_to_hub``); the card names repo_id."""
        card_kwargs = {"repo_id": repo_id, **(model_card_kwargs or {})}
        return super().push_to_hub(repo_id, model_card_kwargs=card_kwargs, **kwargs)

    def generate_model_card(self, *, repo_id: str = "<org>/<name>",
                            metrics: Mapping[str, Any] | None = None,
                            card_extra: str | None = None) -> ModelCard:
        """The README.md model card: front matter, usage, config table, size, metrics, extra."""
        data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        data.tags = sorted(set(data.tags or []) | set(type(self).model_card_tags))
        cls, config = type(self), self._hub_config()
        lines = [CARD_MARKER, f"# {cls.__name__}", ""]
        if cls.model_card_description:
            lines += [cls.model_card_description.strip(), ""]
        lines += ["## Usage", "", "```python", f"from {cls.__module__} import {cls.__name__}", "",
                  f'model = {cls.__name__}.from_pretrained("{repo_id}")', "```", "",
                  f"## Configuration (`{type(config).__name__}`)", "", "| field | value |",
                  "|---|---|"]
        lines += [f"| {f.name} | {_cell(getattr(config, f.name))} |"
                  for f in dataclasses.fields(config)]
        lines += ["", f"Parameters: {parameter_count(self):,}", ""]
        if metrics:
            lines += ["## Metrics", "", "| metric | value |", "|---|---|"]
            lines += [f"| {_cell(name)} | {_cell(value)} |" for name, value in metrics.items()]
            lines.append("")
        if card_extra:
            lines += [card_extra.strip(), ""]
        return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))

    def _hub_config(self) -> Any:
        config = self.__dict__.get("config", self._hub_mixin_config)
        if not dataclasses.is_dataclass(config):
            raise TypeError(f"{type(self).__name__} has no dataclass config to save; call "
                            "super().__init__(config) in its __init__.")
        return config


def _family(base: type) -> list[type]:
    """``base`` and every subclass of it defined so far (depth first)."""
    found, stack = [], [base]
    while stack:
        cls = stack.pop()
        if cls not in found:
            found.append(cls)
            stack.extend(cls.__subclasses__())
    return found


def _cell(value: Any) -> str:
    """A value as markdown table text."""
    return (value if isinstance(value, str) else repr(value)).replace("|", "\\|")
