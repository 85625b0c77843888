"""Progress of a long loop (issue #13 point 1): a live bar in a terminal, lines in a log file."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

__all__ = ["Progress"]


class Progress:
    """Iterate ``iterable`` with a tqdm bar when stderr is a terminal (it stays on screen, the
    running values after it), else with a line ``[<desc>] <i>/<total>: <name> <value>, ...``
    to ``log`` (default ``print``) every ``log_freq`` iterations (0: none) and after the last.
    ``interactive`` forces the bar on or off."""

    def __init__(self, iterable: Iterable, total: int, desc: str, log_freq: int = 0,
                 log: Callable[[str], object] | None = None, unit: str = "it",
                 interactive: bool | None = None, leave: bool = True):
        from tqdm import tqdm
        self.total, self.desc, self.log_freq = int(total), desc, int(log_freq or 0)
        self.log = log or print
        if interactive is None:
            try:
                interactive = sys.stderr.isatty()
            except (AttributeError, ValueError):
                interactive = False
        self.interactive = bool(interactive)
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
