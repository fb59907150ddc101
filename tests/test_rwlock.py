"""The readers-writer lock guarding a loaded vector index: searches side by side, updates alone, and an update
waiting is not held off by searches that come after it."""

from __future__ import annotations

import threading

from superduper.base.rwlock import ReadWriteLock


def test_readers_share_and_a_writer_is_alone():
    lock = ReadWriteLock()
    inside = threading.Barrier(3, timeout=10)

    def reader() -> None:
        with lock.read():
            inside.wait()  # three readers in the lock at once, or this times out

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not inside.broken

    order = []
    with lock.read():
        writer = threading.Thread(target=lambda: _hold(lock.write(), order, 'write'))
        writer.start()
        writer.join(0.2)
        assert writer.is_alive() and order == []  # waits for the reader to leave
    writer.join(10)
    assert order == ['write']


def test_a_waiting_writer_goes_before_later_readers():
    lock, order = ReadWriteLock(), []
    first = lock.read()
    first.__enter__()
    writing = threading.Thread(target=lambda: _hold(lock.write(), order, 'write'))
    writing.start()
    while not lock._writers_waiting:  # the writer is waiting
        threading.Event().wait(0.01)
    reading = threading.Thread(target=lambda: _hold(lock.read(), order, 'late read'))
    reading.start()
    reading.join(0.2)
    assert reading.is_alive()  # held back behind the waiting writer
    first.__exit__(None, None, None)
    writing.join(10)
    reading.join(10)
    assert order == ['write', 'late read']


def _hold(context, order: list, name: str) -> None:
    with context:
        order.append(name)
