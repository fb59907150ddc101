"""``BackgroundConsumer``: the daemon thread that follows a change feed (SQL change table or MongoDB change stream)."""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger('superduper')
MAX_BACKOFF = 30.0


class BackgroundConsumer:
    """Calls ``consume()`` (then ``retry_due()`` when there was nothing to consume) until stopped; waits ``interval``
    seconds when idle, and backs off exponentially after errors (a lost connection, a restarting server)."""

    def __init__(self, name: str, consume: Callable[[], int], retry_due: Callable[[], int]):
        self.name = name
        self.consume, self.retry_due = consume, retry_due
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self, interval: float) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, args=(interval,), name=self.name, daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                taken = self.consume() or self.retry_due()
                failures = 0
            except Exception:
                failures += 1
                log.exception('%s: following changes failed; retrying', self.name)
                taken = 0
            if not taken:
                self._stop.wait(min(interval * 2**failures, MAX_BACKOFF))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
