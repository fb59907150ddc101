"""The in-process change feed (DuckDB, chDB, in-memory SQLite; the base of the polling and MongoDB feeds): queued
work another consumer has taken still counts as pending until it is finished, so a backfill never calls itself
done while a background consumer is computing part of it."""

from __future__ import annotations

import threading

from superduper.backends.inline import InlineFeed
from superduper.backends.sql.sqlite import SQLiteDataBackend
from superduper.components.datatype import resolve_type


class _NoFailures:
    def record(self, *a):
        pass

    def clear(self, *a):
        pass


def test_queued_rows_count_as_pending_while_another_consumer_reads_and_computes_them(tmp_path):
    backend = SQLiteDataBackend(f'sqlite://{tmp_path}/db.sqlite')
    backend.create_table('docs', {'id': resolve_type('int'), 'txt': resolve_type('str')}, 'id')
    with backend.begin() as conn:
        backend.insert(conn, 'docs', ['id', 'txt'], [[1, 2, 3], ['a', 'b', 'c']])
    feed = InlineFeed(backend, _NoFailures())
    reading, go_on = threading.Event(), threading.Event()
    select = backend.select

    def slow_select(*args, **kwargs):  # the other consumer is reading the keys it takes
        reading.set()
        go_on.wait(10)
        yield from select(*args, **kwargs)

    backend.select = slow_select
    assert feed.enqueue('docs', 'listener-1') == 3
    taken = []
    other = threading.Thread(target=lambda: taken.append(feed.claim(10)))
    other.start()
    assert reading.wait(10)
    assert feed.pending_for('listener-1') == 3  # being read: still pending
    assert feed.claim(10, listener='listener-1') is None  # nobody takes the same rows twice
    go_on.set()
    other.join(10)
    (batch,) = taken
    assert sorted(c.key for c in batch.changes) == [1, 2, 3]
    assert feed.pending_for('listener-1') == 3  # taken, not finished: still pending
    backend.select = select
    feed.finish(batch, [], set())
    assert feed.pending_for('listener-1') == 0
    backend.close()


def test_a_batch_given_back_is_pending_again_and_taken_once(tmp_path):
    backend = SQLiteDataBackend(f'sqlite://{tmp_path}/db.sqlite')
    backend.create_table('docs', {'id': resolve_type('int')}, 'id')
    with backend.begin() as conn:
        backend.insert(conn, 'docs', ['id'], [[1, 2, 3, 4, 5]])
    feed = InlineFeed(backend, _NoFailures())
    feed.enqueue('docs', 'listener-1')
    first = feed.claim(2, listener='listener-1')
    assert feed.pending_for('listener-1') == 5
    feed.release(first)
    assert feed.pending_for('listener-1') == 5
    keys = []
    while (batch := feed.claim(2, listener='listener-1')) is not None:
        keys += [c.key for c in batch.changes]
        feed.finish(batch, [], set())
    assert sorted(keys) == [1, 2, 3, 4, 5] and feed.pending_for('listener-1') == 0
    backend.close()
