"""Named configurations of every family, and the one path from a recipe to training settings.

A family keeps a ``dict[str, RegistryEntry]`` of named sizes (DiT's ``DiT_models``): the model
config, where its settings come from, and a suggested training recipe. :func:`lookup` returns a
fresh copy of a named config; :func:`settings_from_recipe` turns a recipe plus the user's flags into
a settings dataclass. A recipe is strict: every key must be a field of the settings class, so a key
that nothing reads is an error where the registry is read, never a silently dropped setting.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, TypeVar

from imgtx.errors import UserError

__all__ = ["RegistryEntry", "lookup", "check_recipe", "settings_from_recipe", "suggest"]

Settings = TypeVar("Settings")


@dataclass
class RegistryEntry:
    """One named configuration of a family's registry.

    ``config`` is the model's config dataclass, ``source`` where its values come from (a paper,
    official code at a commit, or imgtx's own choice), and ``train`` the suggested training recipe:
    keys that are fields of the family's settings dataclass.
    """

    config: Any
    source: str
    note: str = ""
    train: dict = field(default_factory=dict)


def suggest(name: str, known: list[str] | tuple[str, ...]) -> str:
    """``"; did you mean 'x'?"`` for the closest known name, or ``""``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def lookup(registry: dict[str, RegistryEntry], name: str, what: str = "config", **overrides):
    """A fresh deep copy of ``registry[name].config`` with field overrides (nested configs, such
    as a super-resolution model's decoder, are copies too, so editing one never edits the registry).

    Raises ``KeyError`` naming the known entries (and the closest one) for an unknown name.
    """
    if name not in registry:
        raise KeyError(f"unknown {what} {name!r}{suggest(name, list(registry))} "
                       f"known: {', '.join(registry)}")
    return dataclasses.replace(copy.deepcopy(registry[name].config), **overrides)


def check_recipe(settings_class: type, recipe: dict, where: str = "recipe") -> None:
    """Raise ``UserError`` if ``recipe`` has a key that is not a field of ``settings_class``."""
    names = {f.name for f in dataclasses.fields(settings_class)}
    unknown = sorted(set(recipe) - names)
    if unknown:
        hints = "".join(suggest(key, sorted(names)) for key in unknown[:1])
        raise UserError(f"{where}: unknown training setting(s) {', '.join(unknown)} for "
                        f"{settings_class.__name__}{hints}")


def settings_from_recipe(settings_class: type[Settings], recipe: dict | None = None,
                         defaults: dict | None = None, *, recipe_name: str = "",
                         **given: Any) -> Settings:
    """``settings_class`` built from ``defaults``, then ``recipe`` (a registry entry's ``train``
    dict), then ``given`` (the user's flags; ``None`` means "not given" and is skipped).

    Every key of ``defaults``, ``recipe`` and ``given`` must be a field of ``settings_class``
    (``UserError`` otherwise; ``recipe_name`` names the registry entry in that message).
    The result is validated when the class has ``validate()``.
    """
    recipe = dict(recipe or {})
    check_recipe(settings_class, dict(defaults or {}), "defaults")
    check_recipe(settings_class, recipe,
                 f"registry recipe of {recipe_name!r}" if recipe_name else "registry recipe")
    flags = {k: v for k, v in given.items() if v is not None}
    check_recipe(settings_class, flags, "arguments")
    settings = settings_class(**{**(defaults or {}), **recipe, **flags})
    if hasattr(settings, "validate"):
        settings.validate()
    return settings
