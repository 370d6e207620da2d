"""The errors of Hub save/load. Each is a :class:`imgtx.errors.UserError` (the ``imgtx`` command
prints its one-line message and exits with status 2) and keeps its historical built-in base, so
``except RuntimeError`` / ``except ValueError`` / ``except FileNotFoundError`` still catch it.
"""

from __future__ import annotations

from imgtx.errors import UserError

__all__ = [
    "CheckpointMismatchError",
    "CheckpointNotFoundError",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "PickleCheckpointError",
    "UnsafePathError",
]


class CheckpointMismatchError(UserError, RuntimeError):
    """The checkpoint's tensors do not match the model: missing, unexpected or wrongly shaped."""

    def __init__(self, message: str, missing: list[str], unexpected: list[str],
                 mismatched: list[str]) -> None:
        super().__init__(message)
        self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched


class ConfigMismatchError(UserError, ValueError):
    """config.json does not fit the model's config dataclass (unknown keys, wrong types)."""


class PickleCheckpointError(UserError, RuntimeError):
    """Only a pickle checkpoint (pytorch_model.bin) exists; imgtx never unpickles."""


class CheckpointNotFoundError(UserError, FileNotFoundError):
    """Neither a local directory nor a reachable or cached Hub repo holds the checkpoint."""


class CorruptCheckpointError(UserError, ValueError):
    """A weights file is not a complete safetensors file (truncated, or a lying header)."""


class UnsafePathError(UserError, ValueError):
    """A Hub id, revision or cached path would reach outside the Hub cache (``..``)."""
