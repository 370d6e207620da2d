"""The one user-error base class of imgtx.

Every error a user can act on (a missing path, a wrong image size, an unknown config name, a
checkpoint of the wrong family, a nonsensical number) derives from :class:`UserError`. The ``imgtx``
command catches exactly this class: it prints one line and exits with status 2. Any other exception
is a bug and shows its traceback. ``IMGTX_DEBUG=1`` shows the traceback of user errors too.
"""

from __future__ import annotations

__all__ = ["UserError", "check_positive", "check_at_least"]


class UserError(Exception):
    """An error caused by the user's input, with a message that says what to do."""


def check_positive(name: str, value: float | int | None) -> None:
    """Raise :class:`UserError` unless ``value`` is ``None`` or > 0."""
    if value is not None and not value > 0:
        raise UserError(f"{name} must be > 0, got {value}")


def check_at_least(name: str, value: float | int | None, minimum: float | int) -> None:
    """Raise :class:`UserError` unless ``value`` is ``None`` or >= ``minimum``."""
    if value is not None and not value >= minimum:
        raise UserError(f"{name} must be >= {minimum}, got {value}")
