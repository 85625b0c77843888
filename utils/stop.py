"""SIGTERM / SIGINT as a request to stop at the next safe point (a cluster's preemption, `scancel`,
`timeout`, Ctrl-C), instead of dying in the middle of a step or a checkpoint write.

``with StopRequest() as stop:`` installs the handlers (in the main thread; the previous ones are
put back at the end). The first signal only sets ``stop.signum`` (and prints one line): the loop
polls it between steps, saves and exits with ``128 + signal`` (143 for SIGTERM, 130 for SIGINT).
A second signal, later than ``REPEAT_S`` after the first, stops at once (``SystemExit``); earlier
repeats are the same request delivered twice (torchrun passes the terminal's Ctrl-C on to its
workers, which the terminal already signalled). Processes forked meanwhile (DataLoader workers)
inherit the handlers and ignore the signals: the main process ends them when it stops.
"""
from __future__ import annotations

import os
import signal
import threading
import time

__all__ = ["StopRequest", "STOP_SIGNALS", "exit_code"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
REPEAT_S = 1.0


def exit_code(signum: int) -> int:
    """The shell's exit status of a process ended by ``signum`` (128 + the signal's number)."""
    return 128 + int(signum)


class StopRequest:
    """The stop flag of one training loop (module docstring). ``announce``: print the line that
    says the request was received (rank 0 only under torchrun)."""

    def __init__(self, announce: bool = True):
        self.signum: int | None = None
        self.announce, self._first, self._pid = announce, 0.0, os.getpid()
        self._previous: dict[int, object] = {}

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGTERM).name

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():   # else signals cannot be set
            for s in STOP_SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()

    def _say(self, text: str) -> None:
        # os.write, not print: a handler may run while the main thread is inside a print to the
        # same stream (the progress bar), and a buffered stream refuses that reentrant call
        if self.announce:
            try:
                os.write(2, f"\n{text}\n".encode("utf-8", "backslashreplace"))
            except OSError:
                pass

    def _handle(self, signum, frame) -> None:
        if os.getpid() != self._pid:    # a forked DataLoader worker: its parent stops it
            return
        now = time.monotonic()
        name = signal.Signals(signum).name
        if self.signum is None:
            self.signum, self._first = signum, now
            self._say(f"{name} received: stopping after the current step, with a checkpoint "
                      f"(send it again to stop at once, without saving)")
        elif now - self._first > REPEAT_S:
            self._say(f"{name} received again: stopping at once, without saving")
            raise SystemExit(exit_code(signum))
