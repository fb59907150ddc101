"""``BackgroundConsumer``: the daemon thread that follows a change feed (SQL change table or MongoDB change stream).

Every background thread superduper starts is stopped and joined when the interpreter exits, whether or not the
program called ``db.close()``: a daemon thread killed in the middle of native code (a model's thread pool) aborts
the process. Work a stopped thread had claimed and not finished goes back to the queue when its lease runs out.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from concurrent.futures import Future
from typing import Any, Callable, Protocol

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


class SerialWorker:
    """Runs the tasks handed to it one after another, in a daemon thread of its own started with the first. ``stop``
    cancels the tasks not started (unless ``finish``: they run first) and joins the thread (the running task ends as
    its own code decides: between model batches when the interpreter exits)."""

    def __init__(self, name: str):
        self.name = name
        self._tasks: 'queue.SimpleQueue[tuple[Callable[[], Any], Future] | None]' = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # ``submit`` against ``stop``: never held while waiting on anything
        self._stopped = False

    def submit(self, task: Callable[[], Any]) -> Future:
        future: Future = Future()
        with self._lock:
            if self._stopped:
                raise RuntimeError(f'{self.name}: stopped (the datalayer was closed)')
            self._tasks.put((task, future))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
                stop_at_exit(self)
        return future

    def _run(self) -> None:
        while (item := self._tasks.get()) is not None:
            task, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(task())
            except BaseException as e:  # the future carries it to whoever waits
                future.set_exception(e)

    def stop(self, timeout: float | None = 30, finish: bool = False) -> None:
        with self._lock:
            self._stopped = True
            thread, self._thread = self._thread, None
        while not finish:
            try:
                item = self._tasks.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[1].cancel()
        self._tasks.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        _running.discard(self)
