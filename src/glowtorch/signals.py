"""SIGINT/SIGTERM as a request to stop after the current step (the training loop checks it)."""

from __future__ import annotations

import signal

__all__ = ["StopRequest"]


class StopRequest:
    """A context manager that turns SIGINT/SIGTERM into ``self.signal`` (the signal's number) instead of
    an exception; the previous handlers come back on exit. Off the main thread it installs nothing."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame) -> None:
        self.signal = signum

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
