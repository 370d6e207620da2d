"""Hub save/load for every imgtx model: dataclass configs, strict safetensors loading, model cards.

Where things live: :mod:`imgtx.hub.mixin` (:class:`HubModel`), :mod:`imgtx.hub.config`
(config.json <-> dataclass), :mod:`imgtx.hub.weights` (safetensors checks, strict loading),
:mod:`imgtx.hub.files` (local directory or Hub cache; pickle and path refusals) and
:mod:`imgtx.hub.errors` (the errors, all :class:`imgtx.errors.UserError`).
"""

from __future__ import annotations

from imgtx.hub.config import CLASS_NAME_KEY, config_from_dict
from imgtx.hub.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    ConfigMismatchError,
    CorruptCheckpointError,
    PickleCheckpointError,
    UnsafePathError,
)
from imgtx.hub.files import CONFIG_FILE, PICKLE_WEIGHTS_FILE, WEIGHTS_FILE
from imgtx.hub.mixin import CARD_MARKER, HubModel
from imgtx.hub.weights import (
    check_safetensors_file,
    load_safetensors,
    load_state_dict_checked,
    parameter_count,
)

__all__ = [
    "CARD_MARKER",
    "CLASS_NAME_KEY",
    "CONFIG_FILE",
    "PICKLE_WEIGHTS_FILE",
    "WEIGHTS_FILE",
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "HubModel",
    "PickleCheckpointError",
    "UnsafePathError",
    "check_safetensors_file",
    "config_from_dict",
    "load_safetensors",
    "load_state_dict_checked",
    "parameter_count",
]

