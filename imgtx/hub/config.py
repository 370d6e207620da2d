"""config.json <-> config dataclass.

We decode the config ourselves instead of using ``PyTorchModelHubMixin``'s ``coders=`` (which
subclasses do not inherit) or its dataclass support (which silently drops unknown keys, keeps lists
where the field is a tuple, and gives up on string annotations from
``from __future__ import annotations``).

Fields that a config class no longer has but that old config.json files still carry are listed in
the class's ``IGNORED_CONFIG_FIELDS`` ClassVar (a tuple of names; absent means none): they are
dropped before validation. A run-time choice that was once saved (e.g. an attention ``backend``)
is the typical case. Any other unknown or ill-typed field is a :class:`ConfigMismatchError`.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Mapping
from typing import Any

from huggingface_hub import constants

from imgtx.hub.errors import ConfigMismatchError

__all__ = ["CLASS_NAME_KEY", "IGNORED_FIELDS_ATTRIBUTE", "config_from_dict"]

logger = logging.getLogger(__name__)

IGNORED_FIELDS_ATTRIBUTE = "IGNORED_CONFIG_FIELDS"
# The model class a config.json belongs to, as diffusers' ConfigMixin records it (``_class_name``):
# written by HubModel.save_pretrained, read by from_pretrained to pick the class, and never a
# field of the config dataclass.
CLASS_NAME_KEY = "_class_name"


def config_from_dict(config_class: type, data: Mapping[str, Any],
                     where: str = constants.CONFIG_NAME) -> Any:
    """Build ``config_class`` from a JSON dict.

    ``_class_name`` (the model class, :data:`CLASS_NAME_KEY`) and the keys named in
    ``config_class.IGNORED_CONFIG_FIELDS`` are dropped; other unknown keys raise
    :class:`ConfigMismatchError`; missing keys take the dataclass defaults. Values are rebuilt
    from the field annotations: JSON lists become tuples where the field is a tuple, nested dicts
    become nested dataclasses, ints become floats for float fields.
    """
    if not isinstance(data, Mapping):
        raise ConfigMismatchError(f"{where}: expected a JSON object for {config_class.__name__}, "
                                  f"got {type(data).__name__}")
    data = {key: value for key, value in data.items() if key != CLASS_NAME_KEY}
    ignored = set(getattr(config_class, IGNORED_FIELDS_ATTRIBUTE, ()))
    dropped = sorted(ignored & set(data))
    if dropped:
        logger.info("%s: ignoring %s (no longer part of %s)", where, dropped,
                    config_class.__name__)
        data = {key: value for key, value in data.items() if key not in ignored}
    fields = {f.name: f for f in dataclasses.fields(config_class) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigMismatchError(
            f"{where} has keys that {config_class.__name__} does not define: {unknown}. It is "
            "either another kind of model's config (load it with that model's class) or was saved "
            "by a newer imgtx (upgrade imgtx, or delete these keys if you are sure they do not "
            "change the model).")
    required = [name for name, f in fields.items() if name not in data
                and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if required:
        raise ConfigMismatchError(f"{where} lacks {required}, which {config_class.__name__} "
                                  "needs and has no default for.")
    try:
        hints = typing.get_type_hints(config_class)
    except Exception:  # unresolvable forward reference: fall back to the raw annotations
        hints = {name: f.type for name, f in fields.items()}
    return config_class(**{name: _decode(hints.get(name, Any), value, f"{where}: {name}",
                                         fields[name])
                           for name, value in data.items()})


def _decode(annotation: Any, value: Any, where: str, field: dataclasses.Field | None = None) -> Any:
    """Rebuild one JSON value as ``annotation`` describes it (see :func:`config_from_dict`)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if isinstance(annotation, str):  # unresolved annotation: go by the default's type
        default = field.default if field is not None else dataclasses.MISSING
        return tuple(value) if isinstance(default, tuple) and isinstance(value, list) else value
    if value is None or annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _decode(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(annotation) and isinstance(value, Mapping):
        return config_from_dict(annotation, value, where)
    if annotation is tuple or origin is tuple:
        _expect(isinstance(value, (list, tuple)), annotation, value, where)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) == len(value):
            return tuple(_decode(a, v, f"{where}[{i}]")
                         for i, (a, v) in enumerate(zip(args, value)))
        _expect(not args, annotation, value, where)
        return tuple(value)
    if annotation is list or origin is list:
        _expect(isinstance(value, list), annotation, value, where)
        return [_decode(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        _expect(isinstance(value, Mapping), annotation, value, where)
        return {k: _decode(args[1] if args else Any, v, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _expect(is_number, float, value, where)
        return float(value)
    if annotation in (int, str, bool):
        _expect(isinstance(value, annotation) and (annotation is bool
                                                   or not isinstance(value, bool)),
                annotation, value, where)
    return value


def _expect(ok: bool, annotation: Any, value: Any, where: str) -> None:
    if not ok:
        name = getattr(annotation, "__name__", str(annotation))
        raise ConfigMismatchError(f"{where} should be {name}, got {value!r}; "
                                  "fix the value in config.json.")

