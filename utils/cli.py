"""Entry-script wrapper: expected user errors as one line, exit code 2 (issue #15 item 11)."""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from utils.errors import UserError

__all__ = ["run"]


def run(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> object:
    """``main(argv)`` (default ``sys.argv[1:]``) with one-line errors; returns what it returns.

    A :class:`UserError`, or a ``SystemExit`` whose message starts with ``error:``, prints one
    line ``error: <message>`` (its lines joined by '; ') and raises ``SystemExit(2)``; Ctrl-C
    prints ``interrupted`` and raises ``SystemExit(130)``; anything else (a bug) propagates.
    ``--debug`` in argv (removed before ``main``) or ``METAHMR_DEBUG`` set (not empty, not 0)
    re-raises instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("METAHMR_DEBUG", "") not in ("", "0")
    try:
        return main([a for a in argv if a != "--debug"])
    except (UserError, SystemExit, KeyboardInterrupt) as e:
        message = e.code if isinstance(e, SystemExit) else e
        if debug or isinstance(e, SystemExit) and not (
                isinstance(message, str) and message.startswith("error:")):
            raise
        if isinstance(e, KeyboardInterrupt):   # Ctrl-C outside a loop that handles it
            print("\ninterrupted (Ctrl-C)", file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        text = "; ".join(p.strip() for p in str(message).splitlines() if p.strip())
        text = text or type(message).__name__
        print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
