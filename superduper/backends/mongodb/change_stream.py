"""Following writes made by other clients through MongoDB change streams.

Writes through the superduper API are followed at once in the writing process, on every MongoDB (and mongomock).
Writes by other clients (the mongo shell, another application) are seen through a change stream on the database,
which MongoDB offers on replica sets and sharded clusters (a one-node replica set will do): one stream filtered to
the collections listeners read, consumed in batches by the background thread of the embedded default or by
``superduper start``, its resume token saved after each batch so that a restarted consumer goes on where the last
one stopped (at-least-once; outputs are upserts keyed by the source ``_id``, so reprocessing is harmless). If the
token has fallen off the oplog, every listener is recomputed from the data, then the stream starts afresh.

API writes to a followed collection run in a session; their keys and operation time are written to
``_superduper_acks`` (kept for an hour), and a consumer skips an event whose document was already followed at or
after the event's time, so nobody computes an API write twice.

Fallback: mongomock and standalone servers have no change streams. There only writes through the superduper API
(``insert_one``, ``update_many``, ...) keep outputs current; outputs of documents written by other clients are
computed on ``db.apply`` of a listener (backfill) or by ``db.retry``-style recomputation, not as they arrive.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import logging
import threading
from typing import TYPE_CHECKING, Any, Iterator

from superduper.base.background import BackgroundConsumer
from superduper.backends.sql.metadata import COMPONENTS

if TYPE_CHECKING:
    from superduper.backends.mongodb.data_backend import MongoDataBackend, Writes
    from superduper.base.datalayer import Datalayer

log = logging.getLogger('superduper')
STATE = '_superduper_change_streams'
ACKS = '_superduper_acks'
ACK_SECONDS = 3600
OPERATIONS = ['insert', 'update', 'replace', 'delete', 'invalidate']
HISTORY_LOST = (136, 280, 286)  # CappedPositionLost, ChangeStreamFatalError, ChangeStreamHistoryLost
AWAIT_MS = 200


class ChangeStreamFeed:
    """The MongoDB counterpart of ``superduper.base.changes.ChangeFeed`` (same methods, same callers)."""

    #: no durable queue of changes: a listener's backfill runs where it is applied (``Listening.backfill``)
    enabled = False

    def __init__(self, db: 'Datalayer', backend: 'MongoDataBackend'):
        self.db = db
        self.backend = backend
        self.lock = threading.Lock()
        self._stream: Any = None
        self._watching: tuple[str, ...] = ()
        self._consumer = BackgroundConsumer('superduper-change-stream', self.consume, lambda: db.listening.retry_due())
        self._saved: Any = None  # the token last saved by this process
        self._acks_ready = False

    @functools.cached_property
    def supported(self) -> bool:
        try:
            return self.backend.supports_change_streams()
        except Exception as e:  # no 'hello' (very old server, restricted user): act as a standalone
            log.warning('cannot tell whether %s has change streams (%s); following API writes only', self.backend, e)
            return False

    # ---- which collections are followed ----------------------------------------------------------------------
    def follow(self, table: str) -> None:
        """Mark where following starts (before the backfill), unless a consumer already keeps a position."""
        if self.supported and self._load_token() is None:
            with self._watch([{'$match': {'operationType': 'invalidate'}}]) as stream:
                self._save_token(stream.resume_token)

    def unfollow(self, table: str) -> None:
        """Nothing to undo: the stream is filtered to the followed collections each round."""

    def _followed(self) -> tuple[str, ...]:
        return tuple(sorted({listener.source for listener in self.db.listening.load()}))

    # ---- writes made here -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def own_writes(self, conn: 'Writes', table: str) -> Iterator[list]:
        own: list = []
        if not self.supported or not self.db.listening.followers(table):
            yield own
            return
        conn.track = True
        yield own
        if conn.operation_time is not None:
            own.extend((name, ids, conn.operation_time) for name, ids in conn.written.items())

    def acknowledge(self, own: list) -> None:
        """Record that this process followed these writes (up to their operation time)."""
        if not own:
            return
        from pymongo import UpdateOne

        acks = self.backend.database[ACKS]
        if not self._acks_ready:
            acks.create_index('at', expireAfterSeconds=ACK_SECONDS)
            self._acks_ready = True
        now = datetime.datetime.now(datetime.timezone.utc)
        updates = [
            UpdateOne({'_id': {'c': name, 'k': key}}, {'$max': {'t': time}, '$set': {'at': now}}, upsert=True)
            for name, ids, time in own for key in ids
        ]
        for i in range(0, len(updates), 1000):
            acks.bulk_write(updates[i : i + 1000], ordered=False)

    # ---- status ------------------------------------------------------------------------------------------------
    def pending(self, table: str) -> tuple[int, float | None]:
        """A change stream does not say how much is behind it."""
        return 0, None

    def pending_for(self, listener_uuid: str) -> int:
        return 0

    # ---- consuming ----------------------------------------------------------------------------------------------
    def consume(self, limit: int = 1000) -> int:
        """Follow up to ``limit`` changes from the stream; returns how many were taken."""
        if not self.supported:
            return 0
        with self.lock:
            return self._consume(limit)

    def _consume(self, limit: int) -> int:
        import pymongo.errors

        events: list[dict] = []
        try:
            stream = self._open()  # a token gone from the oplog fails here or on the first read
            if stream is None:
                return 0
            while len(events) < limit:
                event = stream.try_next()
                if event is None:
                    break
                events.append(event)
                if event['operationType'] == 'invalidate':  # the database was dropped or renamed
                    self._close()
                    break
        except pymongo.errors.OperationFailure as e:
            if e.code not in HISTORY_LOST:
                self._close()
                raise
            self._resync(e)
            return 0
        except pymongo.errors.PyMongoError:
            self._close()
            raise
        if events:
            self.apply(events)
        if stream.resume_token != self._saved:  # idle rounds write nothing
            self._save_token(stream.resume_token)
        return len(events)

    def apply(self, events: list[dict]) -> None:
        """Bring listeners up to date with a batch of change events (the last event of a document decides)."""
        latest: dict[str, dict[Any, tuple[str, Any]]] = {}
        reload = False
        for event in events:
            kind = event['operationType']
            if kind == 'invalidate':
                continue
            collection = event['ns']['coll']
            if collection == COMPONENTS:
                reload = True
                continue
            op = 'delete' if kind == 'delete' else 'upsert'
            latest.setdefault(collection, {})[event['documentKey']['_id']] = (op, event.get('clusterTime'))
        listening = self.db.listening
        if reload:
            listening.reload()  # a component was applied or removed by another process
        for collection, changes in latest.items():
            if not listening.followers(collection):
                continue
            done = self._acknowledged(collection, changes)
            upserts = [k for k, (op, _) in changes.items() if op == 'upsert' and k not in done]
            deletes = [k for k, (op, _) in changes.items() if op == 'delete' and k not in done]
            if upserts:
                listening.after_write(collection, upserts)
            if deletes:
                listening.after_write(collection, deletes, deleted=True)

    def _acknowledged(self, collection: str, changes: dict[Any, tuple[str, Any]]) -> set:
        """The documents followed by the process that wrote them, at or after the time of their event here."""
        keys = [{'c': collection, 'k': k} for k in changes]
        done = set()
        for i in range(0, len(keys), 1000):
            for ack in self.backend.database[ACKS].find({'_id': {'$in': keys[i : i + 1000]}}):
                key = ack['_id']['k']
                event_time = changes[key][1]
                if event_time is not None and ack['t'] >= event_time:
                    done.add(key)
        return done

    def _open(self) -> Any:
        followed = self._followed()
        if not followed:
            self._close()
            return None
        if self._stream is not None and self._stream.alive and followed == self._watching:
            return self._stream
        self._close()
        token = self._load_token()
        pipeline = [{'$match': {'ns.coll': {'$in': [*followed, COMPONENTS]}, 'operationType': {'$in': OPERATIONS}}}]
        options = {'start_after': token} if token is not None else {}
        self._stream = self._watch(pipeline, max_await_time_ms=AWAIT_MS, **options)
        self._watching = followed
        return self._stream

    def _watch(self, pipeline: list[dict], **options: Any) -> Any:
        """A change stream on the database (the one call that needs a server: tests stand in for it)."""
        return self.backend.database.watch(pipeline, **options)

    def _close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(Exception):
                self._stream.close()
        self._stream = None
        self._watching = ()

    def _resync(self, error: Exception) -> None:
        """The saved position is gone from the oplog: changes were missed, so recompute every listener's outputs
        from the data, having started a new stream first so that nothing written meanwhile is missed."""
        log.warning('the change stream cannot resume (%s); recomputing the outputs of every listener', error)
        self._close()
        self._save_token(None)
        self.follow('')
        for listener in self.db.listening.load():
            self.db.listening.backfill(listener)

    # ---- the saved position ---------------------------------------------------------------------------------
    def _load_token(self) -> Any:
        found = self.backend.database[STATE].find_one({'_id': 'resume'})
        return None if found is None else found['token']

    def _save_token(self, token: Any) -> None:
        self._saved = token
        state = self.backend.database[STATE]
        if token is None:
            state.delete_one({'_id': 'resume'})
        else:
            state.replace_one({'_id': 'resume'}, {'token': token, 'at': datetime.datetime.now(datetime.timezone.utc)},
                              upsert=True)

    # ---- the background consumer --------------------------------------------------------------------------------
    def start(self, interval: float) -> None:
        """Follow the change stream in a daemon thread (only where the server has change streams); the stream
        resumes after a lost connection or a failover."""
        if self.supported:
            self._consumer.start(interval)

    def stop(self) -> None:
        self._consumer.stop()
        with self.lock:
            self._close()
