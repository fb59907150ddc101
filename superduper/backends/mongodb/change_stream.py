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
computed on ``db.apply`` of a listener (backfill) or by ``db.retry``-style recomputation, not as they arrive, and
``db.status()`` says that it cannot count what waits.

Whether the server has change streams is asked again after an error (a restarting server, a failover): a transient
error never turns following off for the life of the process; meanwhile ``problems`` says why nothing is followed.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Sequence

from superduper.backends.base import Batch, Change, Finished, Results
from superduper.backends.feed import chunks
from superduper.backends.inline import InlineFeed, InlineWrites
from superduper.backends.base import COMPONENTS
from superduper.base.keys import dump_key

if TYPE_CHECKING:
    from superduper.backends.mongodb.protocol import MongoBackend, TrackedWrites

log = logging.getLogger('superduper')
STATE = '_superduper_change_streams'
ACKS = '_superduper_acks'
ACK_SECONDS = 3600
OPERATIONS = ['insert', 'update', 'replace', 'delete', 'invalidate']
HISTORY_LOST = (136, 280, 286)  # CappedPositionLost, ChangeStreamFatalError, ChangeStreamHistoryLost
AWAIT_MS = 200
RECHECK_SECONDS = 30.0  # after an error, how long until the server is asked again whether it has change streams


@dataclass
class MongoWrites(InlineWrites):
    conn: Any = None


@dataclass
class StreamPosition:
    """The claim of a batch read from the change stream: the position to save once its results are stored."""

    token: Any
    reload: bool = False  # a component was applied or removed by another process


class ChangeStreamFeed(InlineFeed):
    """API writes and queued work as ``InlineFeed``; writes by other clients from the change stream."""

    def __init__(self, backend: 'MongoBackend', failures: Any):
        super().__init__(backend, failures)
        self._stream: Any = None
        self._watching: tuple[str, ...] = ()
        self._saved: Any = None  # the token last saved by this process
        self._acks_ready = False
        self._supported: bool | None = None
        self._recheck_at = 0.0
        self.problem: str | None = None  # why writes by other clients are not followed now

    @property
    def supported(self) -> bool:
        """Whether the server has change streams; an error leaves the question open, to be asked again."""
        if self._supported is None and time.monotonic() >= self._recheck_at:
            try:
                self._supported = self.backend.supports_change_streams()
                self.problem = None if self._supported else 'the server has no change streams (not a replica set)'
            except Exception as e:  # a server restarting, a restricted user: ask again later
                self._recheck_at = time.monotonic() + RECHECK_SECONDS
                self.problem = f'cannot tell whether the server has change streams: {type(e).__name__}: {e}'
                log.warning('%s; asking again in %.0f s', self.problem, RECHECK_SECONDS)
        return bool(self._supported)

    @supported.setter
    def supported(self, value: bool) -> None:
        self._supported = value

    # ---- which collections are followed ----------------------------------------------------------------------
    def follow(self, table: str, key: Sequence[str]) -> None:
        """Mark where following starts (before the backfill), unless a consumer already keeps a position."""
        if self.supported and self._load_token() is None:
            with self._watch([{'$match': {'operationType': 'invalidate'}}]) as stream:
                self._save_token(stream.resume_token)

    # ---- writes made here -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def writing(self, conn: 'TrackedWrites', table: str, key: Sequence[str]) -> Iterator[MongoWrites]:
        conn.track = self.supported
        yield MongoWrites(table, conn=conn)

    def written(self, handle: MongoWrites) -> Batch | None:
        self._acknowledge(handle.conn)
        return super().written(handle)

    @contextlib.contextmanager
    def _writes(self) -> Iterator[Any]:
        with self.backend.begin() as conn:
            conn.track = self.supported
            yield conn
        self._acknowledge(conn)

    def _acknowledge(self, conn: 'TrackedWrites') -> None:
        """Record that this process followed these writes (up to their operation time): a stream consumer skips
        their events."""
        if conn is None or conn.operation_time is None or not conn.written:
            return
        from pymongo import UpdateOne

        acks = self.backend.database[ACKS]
        if not self._acks_ready:
            acks.create_index('at', expireAfterSeconds=ACK_SECONDS)
            self._acks_ready = True
        now = datetime.datetime.now(datetime.timezone.utc)
        updates = [
            UpdateOne({'_id': {'c': name, 'k': key}}, {'$max': {'t': conn.operation_time}, '$set': {'at': now}},
                      upsert=True)
            for name, ids in conn.written.items() for key in ids
        ]
        for part in chunks(updates):
            acks.bulk_write(part, ordered=False)

    # ---- consuming ----------------------------------------------------------------------------------------------
    def claim(self, limit: int, listener: str | None = None) -> Batch | None:
        """Queued work first (backfills, retries), then the change stream's next events."""
        queued = super().claim(limit, listener)
        if queued is not None or listener is not None or not self.supported:
            return queued
        return self._read_stream(limit)

    def _read_stream(self, limit: int) -> Batch | None:
        import pymongo.errors

        events: list[dict] = []
        try:
            stream = self._open()  # a token gone from the oplog fails here or on the first read
            if stream is None:
                return None
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
            return super().claim(limit)
        except pymongo.errors.PyMongoError:
            self._close()
            raise
        position = StreamPosition(stream.resume_token)
        changes = self._changes(events, position)
        if not changes:
            if position.token != self._saved:  # idle rounds write nothing
                self._save_token(position.token)
            if not position.reload:
                return None
        return Batch(stamp=next(self._stamps), changes=changes, claim=position, reload=position.reload)

    def _changes(self, events: list[dict], position: StreamPosition) -> list[Change]:
        """The last event of each document decides; documents already followed by their writer are skipped."""
        latest: dict[str, dict[Any, Any]] = {}
        for event in events:
            if event['operationType'] == 'invalidate':
                continue
            collection = event['ns']['coll']
            if collection == COMPONENTS:
                position.reload = True
                continue
            latest.setdefault(collection, {})[event['documentKey']['_id']] = event.get('clusterTime')
        changes = []
        for collection, times in latest.items():
            done = self._acknowledged(collection, times)
            changes.extend(Change(collection, key, None, dump_key(key)) for key in times if key not in done)
        return changes

    def _acknowledged(self, collection: str, times: dict[Any, Any]) -> set:
        """The documents followed by the process that wrote them, at or after the time of their event here."""
        keys = [{'c': collection, 'k': k} for k in times]
        done = set()
        for part in chunks(keys):
            for ack in self.backend.database[ACKS].find({'_id': {'$in': part}}):
                key = ack['_id']['k']
                if times[key] is not None and ack['t'] >= times[key]:
                    done.add(key)
        return done

    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Finished:
        finished = super().finish(batch, results, followed, handed)
        if isinstance(batch.claim, StreamPosition):
            self._save_token(batch.claim.token)
        return finished

    def release(self, batch: Batch) -> None:
        if isinstance(batch.claim, StreamPosition):
            self._close()  # read again from the saved position
        else:
            super().release(batch)

    def _open(self) -> Any:
        followed = tuple(sorted({table for table, _ in self.listeners()}))
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
        """The saved position is gone from the oplog: changes were missed, so queue every followed collection's
        documents to be computed again, having started a new stream first so that nothing written meanwhile is
        missed."""
        log.warning('the change stream cannot resume (%s); recomputing the outputs of every listener', error)
        self._close()
        self._save_token(None)
        self.follow('', ())
        for table, listener in self.listeners():
            self.enqueue(table, listener)

    # ---- status ------------------------------------------------------------------------------------------------
    def problem_with(self, table: str) -> str | None:
        self.supported  # noqa: B018 (asks the server, or again after an error)
        return self.problem

    def pending(self, table: str) -> tuple[int | None, float | None]:
        """A change stream does not say how many events wait: ``None``, never a made-up 0."""
        return None, None

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

    def close(self) -> None:
        self._close()
