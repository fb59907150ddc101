"""Component metadata in MongoDB collections (``_superduper_components`` ...), next to the data by default.

The same records as the SQL store (``superduper.backends.sql.metadata``): component records are kept as JSON text,
exactly as built, so that any key a component argument holds (dots, dollars) survives the round trip.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import TYPE_CHECKING, Any

from superduper.backends.base import (
    API_KEYS, COMPONENTS, COMPONENTS_VERSION, FAILURES, INDEX_STATES, JOBS, METRICS, SCHEDULE_TICKS, SETTINGS,
)
from superduper.backends.base import Below, OneOf, Where
from superduper.backends.logs import FailureLog, JobLog, TickLog, split_where

if TYPE_CHECKING:
    from superduper.backends.mongodb.protocol import MongoBackend


class MongoMetaDataStore:
    def __init__(self, backend: 'MongoBackend'):
        import pymongo

        self.backend = backend
        self._artifact_refs: Any = None
        database = backend.database
        self.components = database[COMPONENTS]
        self.jobs = database[JOBS]
        self.failures = database[FAILURES]
        self.metrics = database[METRICS]
        self.index_states = database[INDEX_STATES]
        self.settings = database[SETTINGS]
        self.ticks = database[SCHEDULE_TICKS]
        self.components.create_index(
            [('type_id', pymongo.ASCENDING), ('identifier', pymongo.ASCENDING), ('version', pymongo.ASCENDING)],
            unique=True, name='uq_superduper_component_version',
        )
        self.failures.create_index([('listener_uuid', pymongo.ASCENDING)], name='ix_superduper_failures_listener')
        self.ticks.create_index([('status', pymongo.ASCENDING), ('schedule_uuid', pymongo.ASCENDING)],
                                name='ix_superduper_schedule_ticks_status')
        self.records = MongoRecords(database, ids={JOBS: 'id', SCHEDULE_TICKS: 'id', API_KEYS: 'id'})

    def __repr__(self) -> str:
        return f'MongoMetaDataStore({self.backend.uri!r})'

    def job_log(self) -> JobLog:
        return JobLog(self.records)

    def failure_log(self) -> FailureLog:
        return FailureLog(self.records)

    def tick_log(self) -> TickLog:
        return TickLog(self.records)

    # ---- components ------------------------------------------------------------------------------------------
    def create(self, **row: Any) -> None:
        doc = {**row, '_id': row['uuid'], 'record': json.dumps(row['record']), 'created_at': datetime.datetime.now()}
        self.components.insert_one(doc)
        self._changed()

    def _changed(self) -> None:
        self.settings.replace_one({'_id': COMPONENTS_VERSION}, {'value': uuid.uuid4().hex}, upsert=True)

    def replace_record(self, uuid_: str, record: dict) -> None:
        self.components.update_one({'_id': uuid_}, {'$set': {'record': json.dumps(record)}})
        self._changed()

    def components_version(self) -> str | None:
        """A token that changes whenever a component is applied or removed, by any process."""
        return self.setting(COMPONENTS_VERSION)

    def get(self, type_id: str, identifier: str, version: int | None = None) -> dict | None:
        query: dict[str, Any] = {'type_id': type_id, 'identifier': identifier}
        if version is not None:
            query['version'] = version
        found = list(self.components.find(query).sort('version', -1).limit(1))
        return _decode(found[0]) if found else None

    def get_by_uuid(self, uuid: str) -> dict | None:
        found = self.components.find_one({'_id': uuid})
        return _decode(found) if found else None

    def find_by_hash(self, type_id: str, identifier: str, digest: str) -> dict | None:
        found = list(self.components.find({'type_id': type_id, 'identifier': identifier, 'hash': digest})
                     .sort('version', -1).limit(1))
        return _decode(found[0]) if found else None

    def versions(self, type_id: str, identifier: str) -> list[int]:
        docs = self.components.find({'type_id': type_id, 'identifier': identifier}, {'version': 1})
        return sorted(d['version'] for d in docs)

    def identifiers(self, type_id: str) -> list[str]:
        return sorted({d['identifier'] for d in self.components.find({'type_id': type_id}, {'identifier': 1})})

    def all(self) -> list[dict]:
        docs = [_decode(d) for d in self.components.find({})]
        return sorted(docs, key=lambda r: (r['type_id'], r['identifier'], r['version']))

    def delete(self, uuid: str) -> None:
        self.components.delete_one({'_id': uuid})
        self._changed()

    # ---- metrics and vector index states -------------------------------------------------------------------
    def record_metrics(self, model_uuid: str, values: dict[str, float], rows: int) -> None:
        now = datetime.datetime.now()
        for metric, value in values.items():
            self.metrics.replace_one(
                {'_id': {'model_uuid': model_uuid, 'metric': metric}},
                {'model_uuid': model_uuid, 'metric': metric, 'value': value, 'rows': rows, 'measured_at': now},
                upsert=True,
            )

    def metric_values(self, model_uuid: str) -> dict[str, float]:
        return {d['metric']: d['value'] for d in self.metrics.find({'model_uuid': model_uuid})}

    def setting(self, name: str) -> str | None:
        found = self.settings.find_one({'_id': name})
        return found['value'] if found else None

    def set_setting(self, name: str, value: str) -> None:
        self.settings.replace_one({'_id': name}, {'value': value}, upsert=True)

    def index_state(self, index_uuid: str) -> str | None:
        found = self.index_states.find_one({'_id': index_uuid})
        return found['artifact'] if found else None

    def set_index_state(self, index_uuid: str, artifact: str | None) -> None:
        if artifact is None:
            self.index_states.delete_one({'_id': index_uuid})
        else:
            self.index_states.replace_one(
                {'_id': index_uuid}, {'artifact': artifact, 'saved_at': datetime.datetime.now()}, upsert=True
            )

    def replace_index_state(self, index_uuid: str, previous: str | None, artifact: str) -> bool:
        """Make ``artifact`` the index's saved state if ``previous`` still is; returns whether it did."""
        import pymongo.errors

        doc = {'artifact': artifact, 'saved_at': datetime.datetime.now()}
        if previous is not None:
            return self.index_states.update_one({'_id': index_uuid, 'artifact': previous},
                                                {'$set': doc}).matched_count == 1
        try:
            self.index_states.insert_one({'_id': index_uuid, **doc})
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    def artifact_refs(self) -> Any:
        if self._artifact_refs is None:
            from superduper.backends.mongodb.artifact_refs import MongoArtifactRefs

            self._artifact_refs = MongoArtifactRefs(self.backend.database)
        return self._artifact_refs

    def drop(self) -> None:
        self.artifact_refs().drop()
        for collection in (self.components, self.jobs, self.failures, self.metrics, self.index_states, self.settings,
                           self.ticks):
            collection.drop()
        self.records.database[API_KEYS].drop()

    def close(self) -> None:
        self.backend.close()


def _decode(doc: dict) -> dict:
    row = {k: v for k, v in doc.items() if k != '_id'}
    row['record'] = json.loads(row['record'])
    return row


class MongoRecords:
    """``superduper.backends.base.Records`` in MongoDB collections. Source keys are stored as they are; the field
    ``ids`` names for a collection is kept as ``_id`` (a collection not named there has generated ids, never read)."""

    native_keys = True

    def __init__(self, database: Any, ids: dict[str, str]):
        self.database = database
        self.ids = ids

    def insert(self, name: str, row: dict[str, Any]) -> bool:
        import pymongo.errors

        try:
            self.database[name].insert_one(self._stored(name, row))
        except pymongo.errors.DuplicateKeyError:
            return False
        return True

    def find(self, name: str, where: Where, order_by: str | None = None) -> list[dict[str, Any]]:
        rows = [self._loaded(name, doc) for doc in self.database[name].find(self._filter(name, where))]
        return rows if order_by is None else sorted(rows, key=lambda r: r[order_by])

    def count(self, name: str, where: Where) -> int:
        return self.database[name].count_documents(self._filter(name, where))

    def update(self, name: str, where: Where, values: dict[str, Any]) -> None:
        self.database[name].update_many(self._filter(name, where), {'$set': values})

    def claim_if(self, name: str, where: Where, values: dict[str, Any]) -> bool:
        # one document's update is atomic: matched only if it still holds the values ``where`` names
        return self.database[name].update_one(self._filter(name, where), {'$set': values}).matched_count == 1

    def delete(self, name: str, where: Where) -> None:
        for part in split_where(where):
            self.database[name].delete_many(self._filter(name, part))

    def count_up(self, name: str, where: Where, key: str, rows: list[dict[str, Any]], counter: str) -> None:
        for row in rows:  # each an atomic upsert
            values = {k: v for k, v in row.items() if k not in where and k != key}
            self.database[name].update_one(self._filter(name, {**where, key: row[key]}),
                                           {'$set': values, '$inc': {counter: 1}}, upsert=True)

    def _filter(self, name: str, where: Where) -> dict[str, Any]:
        return {self._field(name, column): _match(value) for column, value in where.items()}

    def _field(self, name: str, column: str) -> str:
        return '_id' if self.ids.get(name) == column else column

    def _stored(self, name: str, row: dict[str, Any]) -> dict[str, Any]:
        return {self._field(name, column): value for column, value in row.items()}

    def _loaded(self, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        found = doc.pop('_id')
        return {self.ids[name]: found, **doc} if name in self.ids else doc


def _match(value: Any) -> Any:
    if isinstance(value, OneOf):
        return {'$in': list(value.values)}
    if isinstance(value, Below):
        return {'$lt': value.value}
    return value
