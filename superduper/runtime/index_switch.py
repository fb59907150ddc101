"""Changing a vector index's model without downtime.

Applying a new version of a ``VectorIndex`` whose previous version serves searches (its indexing listener has a new
model, or it points at another listener) is a *switch*: before anything is stored, the version searches use is
written down (one metadata setting per index, read by every process); the new listener's outputs are backfilled and
the new index is built and saved while searches go on with that version; then one write makes the new version the
one searched, and the old version with its listener's outputs is removed (which tells every process to reopen the
index: the removal changes the components' version token).

A process that dies midway leaves the old version serving: applying the same declaration again (or a worker's round,
``advance``) finishes what was left. Removing the new version before the switch cancels it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from typing import TYPE_CHECKING

from superduper.base.exceptions import ComponentError, NotFound
from superduper.components.component import references

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.vector_index import VectorIndex

log = logging.getLogger('superduper')


def setting_name(identifier: str) -> str:
    """The setting holding an index's switch (names are short in the settings table: a hash of the identifier)."""
    return 'index_switch:' + hashlib.sha1(identifier.encode()).hexdigest()[:20]


class IndexSwitches:
    def __init__(self, db: 'Runtime'):
        self.db = db

    # ---- the state every process reads ---------------------------------------------------------------------------
    def read(self, identifier: str) -> dict | None:
        value = self.db.metadata.setting(setting_name(identifier))
        return json.loads(value) if value else None

    def _write(self, identifier: str, state: dict) -> None:
        self.db.metadata.set_setting(setting_name(identifier), json.dumps({'index': identifier, **state}))

    def serving(self, identifier: str) -> dict | None:
        """The metadata record of the version searches use: the one a switch under way keeps, else the latest."""
        state = self.read(identifier)
        if state is not None and state.get('serving'):
            record = self.db.metadata.get_by_uuid(state['serving'])
            if record is not None:
                return record
        return self.db.metadata.get('VectorIndex', identifier)

    def served_listeners(self) -> set[str]:
        """The uuids of the listeners that indexes under a switch still search (their outputs stay current)."""
        found = set()
        for identifier in self.db.metadata.identifiers('VectorIndex'):
            state = self.read(identifier)  # the new listener may be stored before the new index version
            record = self.db.metadata.get_by_uuid(state['serving']) if state and state.get('serving') else None
            if record is not None:
                found |= {u for u in references(record['record'].get('indexing_listener'))}
        return found

    # ---- the steps of a switch -----------------------------------------------------------------------------------
    def begin(self, index: 'VectorIndex') -> None:
        """Before a new version of ``index`` is stored: keep searches on the version they use now."""
        current = self.serving(index.identifier)
        if current is None or current['uuid'] == index.ensure_uuid():
            return
        state = self.read(index.identifier) or {}
        if state.get('serving') and self.db.metadata.get_by_uuid(state['serving']) is not None:
            return  # a switch is under way (or was cut short): it keeps the version it keeps
        latest = self.db.metadata.versions('VectorIndex', index.identifier)[-1]
        self._write(index.identifier, {'serving': current['uuid'], 'from': current['version'], 'to': latest + 1,
                                       'listener': index.indexing_listener.identifier, 'state': 'backfilling',
                                       'listener_uuid': index.indexing_listener.ensure_uuid(),
                                       'at': _now()})

    def complete(self, index: 'VectorIndex') -> bool:
        """The new version's outputs are stored: build and save its index, make it the one searched, and remove the
        old one. ``False`` if no switch was under way for this version (the caller builds the index as usual)."""
        state = self.read(index.identifier)
        if state is None or not state.get('serving') or state['serving'] == index.uuid:
            return False
        if self.db.metadata.get_by_uuid(state['serving']) is None:  # the old version went meanwhile
            self._write(index.identifier, {**state, 'serving': None, 'state': 'switched', 'to': index.version,
                                           'at': _now()})
            return False
        self._write(index.identifier, {**state, 'to': index.version, 'state': 'building', 'at': _now()})
        self.db.vector_indexes.build(index, attach=False)
        if self.db.metadata.get_by_uuid(index.uuid) is None:  # removed while it was built: cancelled
            return True
        self._write(index.identifier, {**state, 'serving': None, 'to': index.version, 'state': 'switched',
                                       'at': _now()})
        log.info('vector index %r: switched from v%s to v%s', index.identifier, state['from'], index.version)
        self._remove_old(index, state['serving'])
        return True

    def _remove_old(self, index: 'VectorIndex', old_uuid: str) -> None:
        """The versions before ``index`` go, with the listeners only they used (their outputs tables too)."""
        old = self.db.metadata.get_by_uuid(old_uuid)
        listeners = references(old['record'].get('indexing_listener')) if old is not None else set()
        for version in self.db.metadata.versions('VectorIndex', index.identifier):
            if version < index.version:
                self._remove('VectorIndex', index.identifier, version)
        for uuid in listeners - {index.indexing_listener.uuid}:
            record = self.db.metadata.get_by_uuid(uuid)
            if record is not None:
                self._remove(record['type_id'], record['identifier'], record['version'])

    def _remove(self, type_id: str, identifier: str, version: int) -> None:
        try:
            self.db.remove(type_id, identifier, version)
        except NotFound:  # another process finishing the same switch removed it first
            pass
        except ComponentError as e:  # still used by another component: kept
            log.info('kept %s %r v%s after the switch: %s', type_id, identifier, version, e)

    def cancelled(self, index: 'VectorIndex') -> None:
        """A version of ``index`` was removed: a switch to it stops; searches stay on the version they use."""
        state = self.read(index.identifier)
        if state is None:
            return
        latest = self.db.metadata.get('VectorIndex', index.identifier)
        if latest is None:
            self.db.metadata.set_setting(setting_name(index.identifier), '')
        elif state.get('serving') and state['serving'] in (latest['uuid'], index.uuid):
            done = 'cancelled' if state['serving'] == latest['uuid'] else state['state']
            self._write(index.identifier, {**state, 'serving': None, 'state': done, 'at': _now()})

    def advance(self) -> int:
        """Finish the switches whose new outputs are all stored (their applying process died, say); returns how
        many were finished here."""
        finished = 0
        for identifier in self.db.metadata.identifiers('VectorIndex'):
            if len(self.db.metadata.versions('VectorIndex', identifier)) < 2:
                continue
            state = self.read(identifier)
            if not state or not state.get('serving'):
                continue
            index = self.db.load('VectorIndex', identifier)
            if index.uuid == state['serving'] or self.db.changes.pending_for(index.indexing_listener.uuid):
                continue
            finished += self.complete(index)
        return finished

    # ---- what status shows ---------------------------------------------------------------------------------------
    def describe(self) -> dict[str, str]:
        """Per listener identifier: the switch of the index it feeds, in words."""
        found = {}
        for identifier in self.db.metadata.identifiers('VectorIndex'):
            state = self.read(identifier)
            if not state or not state.get('listener'):
                continue
            to = '?' if state.get('to') is None else state['to']
            if state['state'] == 'switched':
                text = f"VectorIndex {identifier!r} switched from v{state['from']} to v{to} at {state['at']}"
            elif state['state'] == 'cancelled':
                text = f"VectorIndex {identifier!r}: switch from v{state['from']} cancelled at {state['at']}"
            elif self._abandoned(identifier, state):
                text = (f"VectorIndex {identifier!r}: the apply of v{to} stopped before its listener was stored "
                        f"(searches use v{state['from']}); apply it again")
            else:
                text = (f"VectorIndex {identifier!r} {state['state']} v{to} since {state['at']} "
                        f"(searches use v{state['from']})")
            found[state['listener']] = text
        return found

    def _abandoned(self, identifier: str, state: dict) -> bool:
        """An apply that failed (and took back what it stored) or died before storing the new listener."""
        latest = self.db.metadata.get('VectorIndex', identifier)
        return (latest is not None and latest['uuid'] == state.get('serving') and bool(state.get('listener_uuid'))
                and self.db.metadata.get_by_uuid(state['listener_uuid']) is None)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M:%S')
