"""Hub save/load for every imgtx model: dataclass configs, strict safetensors loading, model cards.

Where things live: :mod:`imgtx.hub.mixin` (:class:`HubModel`), :mod:`imgtx.hub.config`
(config.json <-> dataclass), :mod:`imgtx.hub.weights` (safetensors checks, strict loading),
:mod:`imgtx.hub.files` (local directory or Hub cache; pickle and path refusals) and
:mod:`imgtx.hub.errors` (the errors, all :class:`imgtx.errors.UserError`).
"""

from __future__ import annotations

from typing import Any

from imgtx.hub.config import config_from_dict
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


def __getattr__(name: str) -> Any:
    # write_offline_hub_cache is a test helper and now lives in tests/hub_cache.py. This keeps the
    # old import working from a source checkout until every test imports it from there.
    if name == "write_offline_hub_cache":
        import importlib.util
        from pathlib import Path

        helper = Path(__file__).resolve().parents[2] / "tests" / "hub_cache.py"
        if helper.is_file():
            spec = importlib.util.spec_from_file_location("_imgtx_tests_hub_cache", helper)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            spec.loader.exec_module(module)  # type: ignore[union-attr]
            return module.write_offline_hub_cache
    raise AttributeError(f"module 'imgtx.hub' has no attribute {name!r}")
