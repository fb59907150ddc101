"""Versions of outputs collections on MongoDB (``superduper.backends.base.OutputLog``).

The counter (``_superduper_output_seq``, one document per outputs collection) is incremented atomically, but
without transactions a write numbered ``n`` may land after one numbered ``n + 1``: readers therefore read again,
at each look, what the look before found new (``ordered = False``), which covers a write landing within a poll
interval of taking its number. Removed outputs leave documents in ``_superduper_output_deletes`` for a day.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

from superduper.backends.base import OUTPUT_SEQ
from superduper.backends.outputs import SOURCE, OutputRows
from superduper.base.keys import dump_key, load_key

if TYPE_CHECKING:
    from superduper.backends.mongodb.protocol import MongoBackend



class MongoOutputLog(OutputRows):
    ordered = False

    def __init__(self, backend: 'MongoBackend'):
        self.backend = backend
        self.counters = backend.database['_superduper_output_seq']
        self.deletes = backend.database['_superduper_output_deletes']
        self._prepared: set[str] = set()

    def prepare(self, table: str) -> None:
        if table in self._prepared:
            return
        self.backend.database[table].create_index(OUTPUT_SEQ)
        self.backend.database[table].create_index(SOURCE)  # a flattening listener's chunks go by their source
        self.deletes.create_index([('tbl', 1), ('seq', 1)])
        self.counters.update_one({'_id': table}, {'$setOnInsert': {'n': 0, 'floor': 0}}, upsert=True)
        self._prepared.add(table)

    def advance(self, conn: Any, table: str) -> int:
        from pymongo import ReturnDocument

        doc = self.counters.find_one_and_update({'_id': table}, {'$inc': {'n': 1}}, upsert=True,
                                                return_document=ReturnDocument.AFTER)
        return int(doc['n'])

    def _log_deletions(self, conn: Any, table: str, seq: int, keys: Sequence[Any]) -> None:
        now = time.time()
        self.deletes.insert_many([{'tbl': table, 'source': dump_key(s), 'seq': seq, 'at': now} for s in keys])

    def head(self, table: str) -> tuple[int, int] | None:
        doc = self.counters.find_one({'_id': table})
        return None if doc is None else (int(doc['n']), int(doc.get('floor', 0)))

    def deleted(self, table: str, since: int, upto: int) -> list[tuple[Any, int]] | None:
        found = [(load_key(d['source']), int(d['seq']))
                 for d in self.deletes.find({'tbl': table, 'seq': {'$gt': since, '$lte': upto}})]
        head = self.head(table)  # after reading: a trim moves the floor before it deletes
        return None if head is None or head[1] > since else found

    def trim(self, older_than: float) -> None:
        cutoff = time.time() - older_than
        cuts = self.deletes.aggregate([{'$match': {'at': {'$lt': cutoff}}},
                                       {'$group': {'_id': '$tbl', 'cut': {'$max': '$seq'}}}])
        for entry in cuts:
            self.counters.update_one({'_id': entry['_id'], 'floor': {'$lt': entry['cut']}},
                                     {'$set': {'floor': entry['cut']}})
            self.deletes.delete_many({'tbl': entry['_id'], 'seq': {'$lte': entry['cut']}})

    def forget(self, table: str) -> None:
        self.counters.delete_one({'_id': table})
        self.deletes.delete_many({'tbl': table})
        self._prepared.discard(table)
