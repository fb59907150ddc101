"""``BackgroundConsumer``: the daemon thread that follows a change feed (SQL change table or MongoDB change stream).

Every background thread superduper starts is stopped and joined when the interpreter exits, whether or not the
program called ``db.close()``: a daemon thread killed in the middle of native code (a model's thread pool) aborts
the process. Work a stopped thread had claimed and not finished goes back to the queue when its lease runs out.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Callable, Protocol

log = logging.getLogger('superduper')
MAX_BACKOFF = 30.0


class Stoppable(Protocol):
    def stop(self) -> None: ...


_running: 'weakref.WeakSet[Stoppable]' = weakref.WeakSet()
#: set when the interpreter exits: work in progress stops between model batches and gives its changes back
exiting = threading.Event()


class Interrupted(Exception):
    """Work stopped because the interpreter is exiting; its changes go back to the queue."""


def stop_at_exit(thing: Stoppable) -> None:
    """Stop (and join) ``thing``'s thread when the interpreter exits, unless it was stopped before."""
    _running.add(thing)


@atexit.register
def _stop_all() -> None:
    exiting.set()
    for thing in list(_running):
        try:
            thing.stop()
        except Exception:  # exiting anyway: say why, stop the others
            log.exception('stopping %r at exit failed', thing)


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
        stop_at_exit(self)

    def _run(self, interval: float) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                taken = self.consume() or self.retry_due()
                failures = 0
            except Interrupted:
                return
            except Exception:
                failures += 1
                log.exception('%s: following changes failed; retrying', self.name)
                taken = 0
            if not taken:
                self._stop.wait(min(interval * 2**failures, MAX_BACKOFF))

    def stop(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=30)  # meanwhile ``start`` sees it alive: the stopping thread cannot start another
        self._thread = None
        _running.discard(self)
