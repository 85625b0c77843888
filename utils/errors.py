"""The project's base class for expected user errors (issue #15 item 11).

Every error a user can cause with a bad file or option (a missing file, a bad dataset, a
checkpoint of another network, an unsafe pickle, an invalid option) derives from
:class:`UserError`. The entry scripts run under :func:`utils.cli.run`, which prints such an
error as one line ``error: <file>: <what is wrong>. <what to do>`` and exits with code 2
(``--debug`` or ``METAHMR_DEBUG=1`` shows the traceback instead).

This module imports nothing, so every layer (``config.py`` included) may import it.
"""
from __future__ import annotations

__all__ = ["UserError", "OptionError", "one_line"]


class UserError(Exception):
    """An expected mistake in the user's files or options; the message says what and what to do."""


class OptionError(UserError, ValueError):
    """An invalid command-line option (or option combination)."""


def one_line(text: str) -> str:
    """``text`` with its lines joined by '; ' (messages are printed as one line)."""
    parts = [p.strip() for p in str(text).splitlines() if p.strip()]
    return "; ".join(parts)
