"""Progress of a long loop (issue #13 point 1): a live bar in a terminal, lines in a log file.

In a terminal (stderr is a tty) :class:`Progress` shows a tqdm bar that stays on screen when
the loop ends, with the running values after it. When stderr is not a terminal (output
redirected to a file, a batch job) there is no bar: every ``log_freq`` iterations, and after
the last one, one line ``[<desc>] <i>/<total>: <name> <value>, ...`` goes to ``log``.
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

__all__ = ["Progress", "is_terminal"]


def is_terminal(stream=None) -> bool:
    """Whether ``stream`` (default stderr, where tqdm draws) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class Progress:
    """Iterate ``iterable`` with a bar (terminal) or periodic log lines (no terminal).

    Args:
        total: the number of iterations (for the bar and the ``i/total`` of the lines).
        desc: the name shown before the bar / at the start of each line.
        log_freq: iterations between lines when not in a terminal (0 = no lines).
        log: where lines go (default ``print``).
        interactive: force the bar on / off (default: :func:`is_terminal`).
    """

    def __init__(self, iterable: Iterable, total: int, desc: str, log_freq: int = 0,
                 log: Callable[[str], object] | None = None, unit: str = "it",
                 interactive: bool | None = None, leave: bool = True):
        from tqdm import tqdm
        self.total, self.desc, self.log_freq = int(total), desc, int(log_freq or 0)
        self.log = log or print
        self.interactive = is_terminal() if interactive is None else bool(interactive)
        self.bar = tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave,
                        dynamic_ncols=True, disable=not self.interactive)

    def __iter__(self):
        return iter(self.bar)

    def update(self, i: int, values: dict[str, str]) -> None:
        """After iteration ``i`` (1-based): show ``values`` (already formatted strings)."""
        if self.interactive:
            self.bar.set_postfix(values, refresh=True)
        elif self.log_freq and (i % self.log_freq == 0 or i == self.total):
            self.log(f"[{self.desc}] {i}/{self.total}: "
                     + ", ".join(f"{k} {v}" for k, v in values.items()))

    def write(self, message: str) -> None:
        """A message that does not break the bar (``tqdm.write``) or a plain log line."""
        if self.interactive:
            self.bar.write(message)
        else:
            self.log(message)

    def close(self) -> None:
        self.bar.close()
