"""Components in the metadata: apply (a new version only when the declaration changed, all or nothing), load (once
per process and version), show, and remove with what they set up. A version holds its artifacts from before their
bytes are written until it is removed (``runtime.artifact_gc``)."""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any, Callable

from superduper.base import faults
from superduper.base.exceptions import ComponentError, NotFound
from superduper.base.protocols import Runtime
from superduper.components.component import (
    Component, decode_record, encode_component, import_class, ordered_references, references,
)
from superduper.runtime.artifact_gc import ArtifactCollector, component_holder, table_holder
from superduper.runtime.jobs import BackgroundApplies
from superduper.runtime.tables import Tables

log = logging.getLogger('superduper')


class ComponentStore:
    """The components of a datalayer (``db``, handed to each component's lifecycle hooks)."""

    def __init__(self, db: Runtime, tables: Tables, collector: ArtifactCollector):
        self.db = db
        self.collector = collector
        self.tables = tables
        self.metadata = db.metadata
        self.artifact_store = db.artifact_store
        self.databackend = db.databackend
        self._loaded: dict[str, Component] = {}
        self._applying = threading.local()  # what the apply running in this thread has stored (to undo on failure)
        self._token: str | None = None
        self._checked = -math.inf
        self._generation = 0
        self.background = BackgroundApplies(db)

    def generation(self, fresh: bool = False) -> int:
        """A number that grows when components were applied or removed, by this process or another, since the
        last look (the metadata is asked at most once per poll interval, or now if ``fresh``). Caches of
        components compare it."""
        now = time.monotonic()
        if fresh or now - self._checked >= self.db.cfg.poll_interval:
            self._checked = now
            token = self.metadata.components_version()
            if token != self._token:
                if self._token is not None:
                    self._generation += 1
                    self.tables.clear()  # a table may have been typed or re-declared meanwhile
                self._token = token
        return self._generation

    def apply(self, component: Component | Any, wait: bool = True, **variables: str) -> Any:
        """Store a component: a no-op if unchanged since its latest version, else a new version. A ``Template`` is
        built with ``variables`` filled in, and the component it gives is applied. Returns the component; with
        ``wait=False``, ``(jobs, component)`` as soon as the metadata is stored and the backfills are queued (the
        rest runs in the background, ``runtime.jobs``)."""
        from superduper.components.template import Template

        if isinstance(component, Template):
            component = component.build(**variables)
        elif variables:
            raise ComponentError(f'db.apply: variables ({", ".join(variables)}) are only for templates')
        if not isinstance(component, Component):
            raise ComponentError(f'db.apply takes a Component (Table, Model, Listener, ...), got {type(component).__name__}')
        created = getattr(self._applying, 'created', None)
        if created is not None:  # applied while applying another (a listener's outputs table): one unit with it
            return self._apply(component, created)
        created = self._applying.created = []
        deferred = self._applying.deferred = None if wait else []
        try:
            applied = self._apply(component, created)
            if deferred is None:
                return applied
            deferred, job_ids = self._defer(deferred)
        except Exception:  # all or nothing: take back what this apply had stored so far, newest first
            for record in reversed(created):
                still_there = self.metadata.get_by_uuid(record['uuid']) is not None  # a listener takes its outputs
                if still_there and not self._holds_data(record, force=False):
                    self._remove_record(record)
            self._collect_artifacts([r for r in created if self.metadata.get_by_uuid(r['uuid']) is None])
            raise
        finally:
            self._applying.created = self._applying.deferred = None
        return self.background.submit(deferred, job_ids), applied

    def _then(self, component: Component, step: Callable[[Any], None]) -> None:
        """Run what follows storing ``component`` (``on_applied``, ``on_reapplied``) now, or after the apply in the
        background if it does not wait."""
        deferred = getattr(self._applying, 'deferred', None)
        if deferred is None:
            step(self.db)
        else:
            deferred.append((component, step))

    def _defer(self, steps: list[tuple[Component, Callable[[Any], None]]]) -> tuple[list, list[str]]:
        """The steps a non-blocking apply leaves to the background, with the ids of the jobs recording them: from the
        first whose work is a job (a listener's backfill, queued durably here), in order. The steps before it run
        now (a keyword index over the database's own full-text index): there is no job to wait for them by."""
        later: list[tuple[Component, Callable[[Any], None]]] = []
        job_ids: list[str] = []
        for component, step in steps:
            ids = component.on_deferred(self.db)
            if ids or later:
                later.append((component, step))
                job_ids += ids
            else:
                step(self.db)
        return later, list(dict.fromkeys(job_ids))

    def close(self) -> None:
        self.background.close()

    def _apply(self, component: Component, created: list[dict] | None = None) -> Component:
        component.check(self.db)
        for child in component.children():
            self._apply(child, created)
        blobs: dict[str, bytes] = {}
        record, uuid = encode_component(component, None, blobs)
        stored = self.metadata.get_by_uuid(uuid)
        if stored is not None:  # this declaration is already applied (its artifacts are stored with it)
            component.version, component.uuid = stored['version'], uuid
            self._then(component, component.on_reapplied)
            return component
        holder = component_holder(uuid, os.urandom(8).hex())
        self.collector.hold(holder, blobs)  # before the bytes: a concurrent collection keeps them
        faults.point('holding_artifacts', 'component')
        try:
            for data in blobs.values():
                self.artifact_store.put_bytes(data)
            versions = self.metadata.versions(component.type_id, component.identifier)
            component.version = versions[-1] + 1 if versions else 0
            component.uuid = uuid
            component.on_create(self.db)
            self.metadata.create(
                uuid=uuid, type_id=component.type_id, identifier=component.identifier,
                version=component.version, hash=uuid, record=record,
            )
        except BaseException:
            self.collector.release(holder)
            raise
        if created is not None:
            created.append({'uuid': uuid, 'type_id': component.type_id, 'identifier': component.identifier,
                            'version': component.version, 'record': record})
        self._loaded[uuid] = component
        faults.point('after_metadata_commit', component.type_id)
        self._then(component, component.on_applied)
        return component

    def load(self, type_id: str, identifier: str, version: int | None = None) -> Component:
        record = self.metadata.get(type_id, identifier, version)
        if record is None:
            raise NotFound(not_found(self.metadata, type_id, identifier, version))
        return self.load_record(record)

    def load_record(self, record: dict) -> Component:
        cached = self._loaded.get(record['uuid'])
        if cached is not None:
            return cached
        component = decode_record(record['record'], self._load_uuid, self.artifact_store)
        component.version, component.uuid = record['version'], record['uuid']
        component.on_load(self.db)
        self._loaded[record['uuid']] = component
        return component

    def _load_uuid(self, uuid: str) -> Component:
        record = self.metadata.get_by_uuid(uuid)
        if record is None:
            raise NotFound(f'no component with uuid {uuid!r}')
        return self.load_record(record)

    def show(self, type_id: str | None = None, identifier: str | None = None, version: int | None = None) -> Any:
        """``show()`` types and identifiers, ``show(type)`` identifiers, ``show(type, id)`` versions,
        ``show(type, id, version)`` the stored metadata; ``show('Job')`` the jobs."""
        if type_id == 'Job':
            return self.db.jobs()
        if type_id is None:
            return sorted({(r['type_id'], r['identifier']) for r in self.metadata.all()})
        if identifier is None:
            return self.metadata.identifiers(type_id)
        if version is None:
            return self.metadata.versions(type_id, identifier)
        record = self.metadata.get(type_id, identifier, version)
        if record is None:
            raise NotFound(not_found(self.metadata, type_id, identifier, version))
        if type_id == 'Model':
            record['metrics'] = self.metadata.metric_values(record['uuid'])
        return record

    def remove(
        self, type_id: str, identifier: str, version: int | None = None, recursive: bool = False, force: bool = False
    ) -> None:
        """Remove one version, or every version, of a component, with what it set up (a listener's output table,
        failures and jobs) and the artifacts nothing else refers to. Refuses while other components use it,
        unless ``force``; ``recursive`` also removes the components it uses that nothing else uses."""
        versions = self.metadata.versions(type_id, identifier)
        if not versions or (version is not None and version not in versions):
            raise NotFound(not_found(self.metadata, type_id, identifier, version))
        records = [self.metadata.get(type_id, identifier, v) for v in ([version] if version is not None else versions)]
        going = {r['uuid'] for r in records}
        users = [r for r in self.metadata.all() if r['uuid'] not in going and references(r['record']) & going]
        users += self._listeners_reading(type_id, identifier, going)
        if users and not force:
            names = ', '.join(f"{u['type_id']} {u['identifier']!r} (v{u['version']})" for u in users)
            raise ComponentError(f'{type_id} {identifier!r} is used by {names}; remove those first or pass force=True')
        for record in records:
            self._remove_record(record)
        if recursive or import_class(records[0]['record']['_path']).owns_children:
            # dependents before what they depend on: the reverse of the order they were applied in
            children = dict.fromkeys(uuid for r in records for uuid in reversed(ordered_references(r['record'])))
            for child in children:
                child_record = self.metadata.get_by_uuid(child)
                if child_record is None or self._used_by_others(child) or self._holds_data(child_record, force):
                    continue
                self.remove(child_record['type_id'], child_record['identifier'], child_record['version'],
                            recursive=True, force=force)
        self._collect_artifacts(records)

    def _listeners_reading(self, type_id: str, identifier: str, going: set[str]) -> list[dict]:
        """The listeners and schedules whose select reads table ``identifier``."""
        if type_id != 'Table':
            return []
        return [
            r for r in self.metadata.all()
            if r['type_id'] in ('Listener', 'Schedule') and r['uuid'] not in going
            and (r['record'].get('select') or {}).get('_query', {}).get('table') == identifier
        ]

    def _holds_data(self, record: dict, force: bool) -> bool:
        """A table with rows is kept when the component using it goes, unless ``force``: removing an application
        never drops the user's data by surprise."""
        if force or record['type_id'] != 'Table' or not self.databackend.has_table(record['identifier']):
            return False
        if self.databackend.count(record['identifier']) == 0:
            return False
        log.info('kept table %r with its rows; remove it with db.remove("Table", %r)', record['identifier'],
                 record['identifier'])
        return True

    def _used_by_others(self, uuid: str) -> bool:
        return any(uuid in references(r['record']) for r in self.metadata.all())

    def _remove_record(self, record: dict) -> None:
        component = self.load_record(record)
        self.metadata.delete(record['uuid'])
        self._loaded.pop(record['uuid'], None)
        component.on_remove(self.db)
        if record['type_id'] == 'Table' and not self.databackend.has_table(record['identifier']):
            self.collector.release(table_holder(record['identifier']))  # the values of its rows

    def _collect_artifacts(self, removed: list[dict]) -> None:
        """Release the removed records' holds; their artifacts that nothing else holds are deleted."""
        for record in removed:
            self.collector.release_all(component_holder(record['uuid'], ''))


def not_found(metadata: Any, type_id: str, identifier: str, version: int | None) -> str:
    existing = metadata.identifiers(type_id)
    if identifier in existing and version is not None:
        return f'{type_id} {identifier!r} has no version {version}; versions: {metadata.versions(type_id, identifier)}'
    return f'no {type_id} named {identifier!r}; existing: {", ".join(existing) or "(none)"}'
