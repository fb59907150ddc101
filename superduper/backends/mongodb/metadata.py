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
    COMPONENTS, COMPONENTS_VERSION, FAILURES, INDEX_STATES, JOBS, METRICS, SETTINGS,
)
from superduper.base.counts import RecentCounts

if TYPE_CHECKING:
    from superduper.backends.mongodb.data_backend import MongoDataBackend


class MongoMetaDataStore:
    def __init__(self, backend: 'MongoDataBackend'):
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
        self.components.create_index(
            [('type_id', pymongo.ASCENDING), ('identifier', pymongo.ASCENDING), ('version', pymongo.ASCENDING)],
            unique=True, name='uq_superduper_component_version',
        )
        self.failures.create_index([('listener_uuid', pymongo.ASCENDING)], name='ix_superduper_failures_listener')

    def __repr__(self) -> str:
        return f'MongoMetaDataStore({self.backend.uri!r})'

    def job_log(self) -> 'MongoJobLog':
        return MongoJobLog(self)

    def failure_log(self) -> 'MongoFailureLog':
        return MongoFailureLog(self)

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
        for collection in (self.components, self.jobs, self.failures, self.metrics, self.index_states, self.settings):
            collection.drop()

    def close(self) -> None:
        self.backend.close()


def _decode(doc: dict) -> dict:
    row = {k: v for k, v in doc.items() if k != '_id'}
    row['record'] = json.loads(row['record'])
    return row


class MongoJobLog:
    """Jobs (backfills, training) and their progress, in ``_superduper_jobs``."""

    def __init__(self, store: MongoMetaDataStore):
        self.collection = store.jobs

    def start(self, kind: str, component: Any, total: int | None, job_id: str | None = None) -> str | None:
        """A new running job; ``None`` if a job with ``job_id`` exists already (someone else started it)."""
        import pymongo.errors

        job_id = job_id or uuid.uuid4().hex
        try:
            self.collection.insert_one({
                '_id': job_id, 'kind': kind, 'type_id': component.type_id, 'identifier': component.identifier,
                'component_uuid': component.ensure_uuid(), 'status': 'running', 'done': 0, 'total': total,
                'failed': 0, 'error': None, 'started_at': datetime.datetime.now(), 'finished_at': None,
            })
        except pymongo.errors.DuplicateKeyError:
            return None
        return job_id

    def get(self, job_id: str) -> dict | None:
        found = self.collection.find_one({'_id': job_id})
        return None if found is None else {'id': found.pop('_id'), **found}

    def progress(self, job_id: str, done: int, failed: int) -> None:
        self.collection.update_one({'_id': job_id}, {'$set': {'done': done, 'failed': failed}})

    def finish(self, job_id: str, error: str | None = None) -> None:
        values = {'status': 'failed' if error else 'success', 'error': error, 'finished_at': datetime.datetime.now()}
        self.collection.update_one({'_id': job_id}, {'$set': values})

    def list(self, component_uuid: str | None = None) -> list[dict]:
        query = {} if component_uuid is None else {'component_uuid': component_uuid}
        jobs = [{'id': d.pop('_id'), **d} for d in self.collection.find(query)]
        return sorted(jobs, key=lambda j: j['started_at'])

    def delete(self, component_uuid: str) -> None:
        self.collection.delete_many({'component_uuid': component_uuid})


class MongoFailureLog:
    """Rows a listener's model failed on, with the error, in ``_superduper_failures`` (keys stored as they are)."""

    def __init__(self, store: MongoMetaDataStore):
        self.collection = store.failures
        self._counts = RecentCounts()

    def invalidate(self) -> None:
        """Forget the counts kept: other processes (Dask workers) recorded or cleared failures just now."""
        self._counts.forget()

    def count(self, listener_uuid: str) -> int:
        return self._counts.get(listener_uuid, lambda: self.collection.count_documents({'listener_uuid': listener_uuid}))

    def record(self, listener_uuid: str, failures: list[tuple[Any, str]]) -> None:
        if not failures:
            return
        now = datetime.datetime.now()
        for source, error in failures:
            self.collection.update_one(
                {'listener_uuid': listener_uuid, 'source': source},
                {'$set': {'error': error[:10000], 'failed_at': now}, '$inc': {'attempts': 1}},
                upsert=True,
            )
        self._counts.forget(listener_uuid)

    def clear(self, listener_uuid: str, sources: list[Any] | None = None) -> None:
        if sources is not None and (not sources or not self.count(listener_uuid)):
            return
        if sources is None:
            self.collection.delete_many({'listener_uuid': listener_uuid})
        else:
            for i in range(0, len(sources), 1000):
                self.collection.delete_many({'listener_uuid': listener_uuid, 'source': {'$in': sources[i : i + 1000]}})
        self._counts.forget(listener_uuid)

    def due(self, listener_uuid: str, max_attempts: int, delay: float) -> list[Any]:
        """Failed rows whose next try is due: fewer than ``max_attempts`` tries, ``delay * 2**(tries - 1)`` seconds
        after the last."""
        if not self.count(listener_uuid):
            return []
        now = datetime.datetime.now()
        docs = self.collection.find({'listener_uuid': listener_uuid, 'attempts': {'$lt': max_attempts}})
        return [d['source'] for d in docs
                if (now - d['failed_at']).total_seconds() >= delay * 2 ** (d['attempts'] - 1)]

    def list(self, listener_uuid: str) -> list[dict]:
        docs = self.collection.find({'listener_uuid': listener_uuid}, {'_id': 0})
        return sorted(docs, key=lambda d: str(d['source']))
