"""Artifact references in a MongoDB collection: one document per (digest, holder), and a lock document per digest
(holder ``''``).

MongoDB gives no lock to wait on, so a collection announces itself: it marks the digest's lock document
``collecting`` (only if unmarked), counts the holders and, with none, deletes the bytes and the lock document;
otherwise it clears the mark. A holder records its documents first and then looks for marks on its digests: a
collection that marked before that look is waited for (the bytes are written after it ends); one that marks after
it counts the new holder and keeps the bytes. A mark older than ``STALE_MARK`` seconds is from a collector that
died; a holder clears it.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable

from superduper.backends.base import ARTIFACT_REFS, artifact_digest

if TYPE_CHECKING:
    from pymongo.database import Database

LOCK = ''
STALE_MARK = 60.0
WAIT = 0.05


class MongoArtifactRefs:
    def __init__(self, database: 'Database'):
        import pymongo

        self.refs = database[ARTIFACT_REFS]
        self.refs.create_index([('digest', pymongo.ASCENDING), ('holder', pymongo.ASCENDING)], unique=True,
                               name='uq_superduper_artifact_refs')

    def hold(self, holder: str, keys: Iterable[str]) -> None:
        digests = sorted({artifact_digest(k) for k in keys})
        if digests:
            self._ensure(holder, digests, renew=True)
            self._wait_for_collections(digests)

    def _ensure(self, holder: str, digests: list[str], renew: bool) -> None:
        """Documents for ``holder`` on each digest (their ``held_at`` set to now if ``renew``)."""
        import pymongo.errors

        now = time.time()
        query = {'holder': holder, 'digest': {'$in': digests}}
        existing = {d['digest'] for d in self.refs.find(query, {'digest': 1})}
        if existing and renew:
            self.refs.update_many({'holder': holder, 'digest': {'$in': sorted(existing)}}, {'$set': {'held_at': now}})
        new = [{'digest': d, 'holder': holder, 'held_at': now} for d in digests if d not in existing]
        if new:
            try:
                self.refs.insert_many(new, ordered=False)
            except pymongo.errors.BulkWriteError:  # made meanwhile by another process: there, as wanted
                pass

    def _wait_for_collections(self, digests: list[str]) -> None:
        while True:
            self._ensure(LOCK, digests, renew=False)  # a collection that finished took the lock document with it
            now = time.time()
            marked = list(self.refs.find({'digest': {'$in': digests}, 'holder': LOCK, 'collecting': {'$ne': None}}))
            if not marked:
                return
            for doc in marked:
                if now - doc['collecting'] > STALE_MARK:  # its collector died
                    self.refs.update_one({'_id': doc['_id'], 'collecting': doc['collecting']},
                                         {'$set': {'collecting': None}})
            time.sleep(WAIT)

    def release(self, holder: str, keys: Iterable[str] | None = None) -> list[str]:
        query: dict[str, Any] = {'holder': holder}
        if keys is not None:
            query['digest'] = {'$in': sorted({artifact_digest(k) for k in keys})}
        released = [d['digest'] for d in self.refs.find(query, {'digest': 1})]
        self.refs.delete_many(query)
        return released

    def release_stale(self, holder: str, live: set[str], before: float) -> list[str]:
        stale = [d['digest'] for d in self.refs.find({'holder': holder, 'held_at': {'$lt': before}}, {'digest': 1})
                 if d['digest'] not in live]
        if stale:
            self.refs.delete_many({'holder': holder, 'digest': {'$in': stale}, 'held_at': {'$lt': before}})
        return stale

    def held_by(self, holder: str) -> list[str]:
        return sorted(d['digest'] for d in self.refs.find({'holder': holder}, {'digest': 1}))

    def holders(self, prefix: str = '') -> list[str]:
        named = {'$regex': '^' + re.escape(prefix)} if prefix else {'$ne': LOCK}
        return sorted(h for h in self.refs.distinct('holder', {'holder': named}) if h != LOCK)

    def collect(self, keys: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        return [d for d in sorted({artifact_digest(k) for k in keys}) if self._collect_one(d, delete)]

    def _collect_one(self, digest: str, delete: Callable[[str], None]) -> bool:
        mark = time.time()
        lock = self.refs.find_one_and_update({'digest': digest, 'holder': LOCK, 'collecting': None},
                                             {'$set': {'collecting': mark}})
        if lock is None:  # not recorded, or another collection is at it
            return False
        if self.refs.count_documents({'digest': digest, 'holder': {'$ne': LOCK}}, limit=1):
            self.refs.update_one({'_id': lock['_id'], 'collecting': mark}, {'$set': {'collecting': None}})
            return False
        delete(digest)
        self.refs.delete_one({'_id': lock['_id'], 'collecting': mark})
        return True

    def drop(self) -> None:
        self.refs.drop()
