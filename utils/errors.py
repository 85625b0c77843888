"""The base class of expected user errors (issue #15 item 11): a missing or bad file, a
checkpoint of another network, an unsafe pickle, an invalid option. :func:`utils.cli.run` prints
one as a one-line ``error: ...`` and exits with code 2. Imports nothing (``config.py`` uses it).
"""
from __future__ import annotations

__all__ = ["UserError", "OptionError"]


class UserError(Exception):
    """An expected mistake in the user's files or options; the message says what and what to do."""


class OptionError(UserError, ValueError):
    """An invalid command-line option (or option combination)."""
