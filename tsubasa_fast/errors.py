"""Errors for bad input that name the argument or field they came from.

Library code names its own arguments (``user``, ``history``, ``method``), never command-line
flags; the CLI shows ``field`` as the flag of the same name (``--user``) when it has one.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; ``field`` is the argument or field at fault (None when the message places it)."""

    def __init__(self, message: str, field: str | None = None):
        self.message = message
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class StageError(RuntimeError):
    """A pipeline stage ran but produced nothing the next stage can use (e.g. no QA pair kept)."""
