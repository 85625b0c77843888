"""Entry-script wrapper: expected user errors as one line, exit code 2 (issue #15 item 11).

``run(main)`` calls ``main(argv)``; a :class:`utils.errors.UserError` (bad file, bad option,
unsafe pickle, ...) or a ``SystemExit("error: ...")`` raised on the way prints one line
``error: <message>`` on stderr and exits with code 2, never a traceback. ``--debug`` anywhere on
the command line (removed before ``main`` sees it) or the environment variable
``METAHMR_DEBUG=1`` re-raises instead, with the full traceback.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from utils.errors import UserError, one_line

__all__ = ["run", "debug_requested", "EXIT_USER_ERROR"]

EXIT_USER_ERROR = 2


def debug_requested(argv: Sequence[str]) -> bool:
    """True with ``--debug`` in ``argv`` or ``METAHMR_DEBUG`` set to a non-empty, non-0 value."""
    return "--debug" in argv or os.environ.get("METAHMR_DEBUG", "") not in ("", "0")


def _message(exc: BaseException) -> str:
    text = one_line(str(exc)) or type(exc).__name__
    return text if text.startswith("error:") else f"error: {text}"


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> object:
    """Run ``main(argv)`` (default ``sys.argv[1:]`` without ``--debug``) with one-line errors.

    Returns what ``main`` returns. Raises ``SystemExit(2)`` after printing ``error: ...`` for a
    :class:`UserError` or a ``SystemExit`` whose message starts with ``error:``; any other
    exception propagates unchanged (a bug: its traceback is wanted).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        return main(argv)
    except UserError as e:
        if debug:
            raise
        print(_message(e), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
    except SystemExit as e:
        if debug or not (isinstance(e.code, str) and e.code.startswith("error:")):
            raise
        print(_message(e.code), file=sys.stderr, flush=True)
        raise SystemExit(EXIT_USER_ERROR) from None
