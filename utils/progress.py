"""Progress of a long loop (issue #13 point 1): a live bar in a terminal, lines in a log file."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable

__all__ = ["Progress"]


class Progress:
    """Iterate ``iterable`` with a tqdm bar when stderr is a terminal (it stays on screen, the
    running values after it), else with a line ``[<desc>] <i>/<total>: <name> <value>, ...``
    to ``log`` (default ``print``) every ``log_freq`` iterations (0: none) and after the last."""

    def __init__(self, iterable: Iterable, total: int, desc: str, log_freq: int = 0,
                 log: Callable[[str], object] | None = None, unit: str = "it"):
        from tqdm import tqdm
        self.total, self.desc, self.log_freq, self.log = total, desc, log_freq, log or print
        try:
            self.interactive = sys.stderr.isatty()
        except (AttributeError, ValueError):   # no stderr, or a closed one
            self.interactive = False
        self.bar = tqdm(iterable, total=total, desc=desc, unit=unit, dynamic_ncols=True,
                        disable=not self.interactive)

    def __iter__(self):
        return iter(self.bar)

    def update(self, i: int, values: dict[str, str]) -> None:
        """After iteration ``i`` (1-based): show ``values`` (already formatted strings)."""
        if self.interactive:
            self.bar.set_postfix(values, refresh=True)
        elif self.log_freq and (i % self.log_freq == 0 or i == self.total):
            self.log(f"[{self.desc}] {i}/{self.total}: "
                     + ", ".join(f"{k} {v}" for k, v in values.items()))

    def close(self) -> None:
        self.bar.close()
