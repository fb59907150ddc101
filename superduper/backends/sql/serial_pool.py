"""One connection for the whole process, used by one thread at a time: the pool of databases embedded in the
process (DuckDB, chDB, an in-memory SQLite).

Such a database is opened once per process (an in-memory one exists only on its connection), so every part of
superduper shares one connection. A Python connection to any of them is not safe to use from two threads at once,
and the change poller runs in a thread of its own: a thread checking the connection out holds it until it gives it
back, and another waits meanwhile. A thread that holds it already (a read inside a write transaction) gets the same
checkout again, counted, so nested use neither waits for itself nor ends the outer transaction when it closes (a
plain ``StaticPool`` resets the shared connection, rolling back, whenever any checkout of it is returned).
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy.pool import StaticPool
from sqlalchemy.pool.base import _ConnectionFairy


class SerialPool(StaticPool):
    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._turn = threading.Lock()
        self._held = False  # guarded by ``_turn``'s owner: the connection is checked out
        self._mine = threading.local()  # the checkout the current thread holds, if it holds one

    def status(self) -> str:
        return 'SerialPool'

    def connect(self) -> Any:
        ref = getattr(self._mine, 'fairy', None)
        held = ref() if ref is not None else None
        if held is not None and held._counter > 0 and held.dbapi_connection is not None:
            return _ConnectionFairy._checkout(self, fairy=held)  # counted: returned when the outermost closes
        self._turn.acquire()
        self._held = True
        try:
            fairy = _ConnectionFairy._checkout(self)
        except BaseException:
            self._release()
            raise
        self._mine.fairy = weakref.ref(fairy)
        return fairy

    def _do_return_conn(self, record: Any) -> None:
        super()._do_return_conn(record)
        self._release()

    def _release(self) -> None:
        # possibly from another thread (a checkout garbage-collected unclosed), and at most once per checkout
        if self._held:
            self._held = False
            self._turn.release()
