"""The worker loop of ``superduper start`` (and of ``superduper serve --worker``): follow every recorded change,
retry failed rows when their backoff has passed, and run schedules' ticks, until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

log = logging.getLogger('superduper')

#: the longest pause after repeated errors (the database restarting, a lost connection)
MAX_BACKOFF = 30.0


def work_round(db: Any, batch: int) -> int:
    """One round: up to ``batch`` changes (or due retries), then due schedule ticks; returns how much was done."""
    taken = db.listening.work(batch) or db.listening.retry_due()
    if not taken:  # idle: finish index switches whose applying process died once their outputs are stored
        taken = db.vector_indexes.switches.advance()
    return taken + db.schedules.run_due()  # every round: a tick is not kept waiting behind changes


def run(db: Any, stop: threading.Event, batch: int = 1000, interval: float = 0.5,
        done: Callable[[], bool] | None = None, report: Callable[[str], None] = log.warning) -> None:
    """Work until ``stop`` is set, or until an idle round finds ``done()`` true. An error is reported and retried
    with a backoff (doubling from ``interval`` up to ``MAX_BACKOFF``): a worker outlives a database restart."""
    failures = 0
    while not stop.is_set():
        try:
            taken = work_round(db, batch)
            failures = 0
        except Exception as e:
            failures += 1
            report(f'worker: {type(e).__name__}: {e}; retrying')
            stop.wait(min(interval * 2**failures, MAX_BACKOFF))
            continue
        if not taken:
            if done is not None and done():
                return
            stop.wait(interval)


def in_background(db: Any, batch: int = 1000, interval: float = 0.5) -> tuple[threading.Thread, threading.Event]:
    """The worker loop in a daemon thread of this process; set the event to stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(db, stop, batch, interval), name='superduper-worker', daemon=True)
    thread.start()
    return thread, stop


def wait_stopped(thread: threading.Thread, timeout: float = 30.0) -> None:
    started = time.monotonic()
    thread.join(timeout)
    if thread.is_alive():
        log.warning('the worker thread did not stop within %.0f s', time.monotonic() - started)
