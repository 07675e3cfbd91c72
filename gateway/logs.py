"""Structured logs: one JSON object per line, never payload bytes.

Invariants:
- ``JsonLog.event`` accepts only str, int, float, bool and None field values
  (anything else is rejected with ``TypeError``), so an envelope or any other
  ``bytes`` can never reach a log line by accident.
- Drop lines are limited per reason (``DropLog``): the first drops of a burst
  are logged one line each; past ``per_second`` in one second the rest are
  counted and reported in one ``drops_suppressed`` line, so a flood cannot
  fill the disk or slow the relay.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import IO, Callable

__all__ = ["JsonLog", "DropLog", "LEVELS"]

LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_SCALARS = (str, int, float, bool, type(None))


class JsonLog:
    """Writes ``{"ts": ..., "level": ..., "event": ..., **fields}`` lines."""

    def __init__(self, stream: IO[str] | None = None, level: str = "info",
                 component: str = "gateway", clock: Callable[[], float] = time.time) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.level = LEVELS[level]
        self.component = component
        self.clock = clock
        self._lock = threading.Lock()

    def enabled(self, level: str) -> bool:
        return LEVELS[level] >= self.level

    def event(self, event: str, level: str = "info", **fields: object) -> None:
        """Log one event. Raises ``TypeError`` for a non-scalar field value."""
        if LEVELS[level] < self.level:
            return
        for key, value in fields.items():
            if not isinstance(value, _SCALARS):
                raise TypeError(f"log field {key} must be a scalar, not {type(value).__name__}")
        record = {"ts": round(self.clock(), 6), "level": level,
                  "component": self.component, "event": event, **fields}
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"))
        with self._lock:
            try:
                self.stream.write(line + "\n")
                self.stream.flush()
            except (OSError, ValueError):
                pass  # a closed or full log must not stop the relay


class DropLog:
    """The relay's ``on_drop`` hook: logs each drop with its reason, limited
    to ``per_second`` lines per reason."""

    def __init__(self, log: JsonLog, per_second: int = 20,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.per_second = per_second
        self.clock = clock
        self._window: dict[str, list[float | int]] = {}  # reason -> [start, logged, suppressed]
        self._lock = threading.Lock()  # links call the relay from several threads

    def __call__(self, reason: str, arrived_from: str, link: str, size: int,
                 dst: str | None = None) -> None:
        with self._lock:
            self._log_drop(reason, arrived_from, link, size, dst)

    def _log_drop(self, reason: str, arrived_from: str, link: str, size: int,
                  dst: str | None) -> None:
        now = self.clock()
        w = self._window.get(reason)
        if w is None or now - w[0] >= 1.0:
            if w is not None and w[2]:
                self.log.event("drops_suppressed", level="warning", reason=reason,
                               count=int(w[2]), seconds=round(now - w[0], 3))
            w = self._window[reason] = [now, 0, 0]
        if w[1] < self.per_second:
            w[1] += 1
            # The id comes from a topic or a link: bounded, and JSON-escaped.
            # dst where the envelope got that far (unknown_destination, policy):
            # a route named "hub" for a peer called "hub1" shows at once.
            extra = {} if dst is None else {"dst": dst[:64]}
            self.log.event("drop", level="warning", reason=reason,
                           arrived_from=arrived_from[:64], link=link, size=size, **extra)
        else:
            w[2] += 1
