"""Artifacts are reference-counted by holder (``backends.base.ArtifactRefs``): a component record holds its
artifacts (``component:<uuid>``), a saved vector index state its files (``index:<uuid>:<state>``), a table the
values its rows store in the artifact store (``table:<name>``). Bytes are written only after they are held and
deleted only when nothing holds them, so a collection never takes a blob a concurrent apply, save or insert is
storing.

A table's holds follow its rows by sweeping (``collect_garbage``): rows can be deleted or updated by any program,
so the values still referred to are read from the rows, and a value no row refers to is released once it has not
been held again for the grace period (an insert in flight holds its values before its rows commit).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from typing import Any, Iterable, Iterator

from superduper.backends.artifacts import file_key
from superduper.base import faults
from superduper.base.protocols import Runtime
from superduper.components.component import artifact_keys
from superduper.components.datatype import BLOB_PREFIX, FILE_PREFIX, DataType

log = logging.getLogger('superduper')

ADOPTED = 'artifact_refs'  # the setting that says the records and index states made before refs are held
GRACE_SECONDS = 3600.0


def component_holder(uuid: str, attempt: str) -> str:
    """One apply's hold on a component's artifacts (two processes applying the same component hold separately:
    one that fails releases only its own)."""
    return f'component:{uuid}:{attempt}'


def index_holder(index_uuid: str, state: str) -> str:
    return f'index:{index_uuid}:{state}'


def table_holder(table: str) -> str:
    return f'table:{table}'


class HeldArtifacts:
    """The artifact store as values are encoded for ``holder``: what is put is kept here, then held and written
    by ``flush`` (nothing is written for values that fail to encode)."""

    def __init__(self, store: Any, refs: Any, holder: str):
        self.store = store
        self.refs = refs
        self.holder = holder
        self._blobs: dict[str, bytes] = {}
        self._files: dict[str, str] = {}

    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self._blobs[key] = data
        return key

    def put_file(self, local_path: str) -> str:
        local_path, digest, name = file_key(local_path)
        key = f'{digest}/{name}'
        self._files[key] = local_path
        return key

    def get_bytes(self, key: str) -> bytes:
        return self.store.get_bytes(key)

    def get_file(self, key: str) -> str:
        return self.store.get_file(key)

    def flush(self) -> None:
        if not self._blobs and not self._files:
            return
        self.refs.hold(self.holder, [*self._blobs, *self._files])
        faults.point('holding_artifacts', self.holder.partition(':')[0])
        for data in self._blobs.values():
            self.store.put_bytes(data)
        for local_path in self._files.values():
            self.store.put_file(local_path)
        self._blobs.clear()
        self._files.clear()


class ArtifactCollector:
    """Holds and collects the artifacts of one datalayer."""

    def __init__(self, db: Runtime):
        self.db = db
        self._adopted = False

    @property
    def refs(self) -> Any:
        return self.db.metadata.artifact_refs()

    @contextlib.contextmanager
    def holding(self, table: str) -> Iterator[HeldArtifacts]:
        """An artifact store for encoding values of ``table``: their bytes are held and written when the block
        ends without an error."""
        held = HeldArtifacts(self.db.artifact_store, self.refs, table_holder(table))
        yield held
        held.flush()

    def hold(self, holder: str, keys: Iterable[str]) -> None:
        self.adopt()
        self.refs.hold(holder, keys)

    def release(self, holder: str) -> None:
        """``holder`` no longer refers to its artifacts; delete those nothing else holds."""
        self.collect(self.refs.release(holder))

    def release_all(self, prefix: str) -> None:
        """Release every holder whose name starts with ``prefix`` (all holds of a component or an index)."""
        released: list[str] = []
        for holder in self.refs.holders(prefix):
            released += self.refs.release(holder)
        self.collect(released)

    def collect(self, keys: Iterable[str]) -> list[str]:
        """Delete the artifacts among ``keys`` that nothing holds."""
        return self.refs.collect(keys, self._delete)

    def _delete(self, digest: str) -> None:
        self.db.artifact_store.delete(digest)
        faults.point('collecting_artifact')  # deleted, the collection not yet committed

    def adopt(self) -> None:
        """Hold what component records and saved index states made before refs existed refer to (once per
        database; repeating it is harmless)."""
        if self._adopted:
            return
        metadata = self.db.metadata
        if metadata.setting(ADOPTED) is None:
            for record in metadata.all():
                self.refs.hold(component_holder(record['uuid'], 'adopted'), artifact_keys(record['record']))
            for record in metadata.all():
                if record['type_id'] == 'VectorIndex':
                    state = metadata.index_state(record['uuid'])
                    if state is not None:
                        self.refs.hold(index_holder(record['uuid'], state), self.state_keys(state))
            metadata.set_setting(ADOPTED, '1')
        self._adopted = True

    def state_keys(self, state: str) -> list[str]:
        """The artifacts of a saved index state: its manifest and the folder of files it names."""
        return [state] + list(self.db.vector_indexes.state_files(state))

    def collect_garbage(self, grace_seconds: float = GRACE_SECONDS) -> int:
        """Release and delete what nothing refers to any more: values no row of a table refers to (held for at
        least ``grace_seconds`` without being held again), holds of components that are gone (an apply that
        died) and index states that are no longer current. Returns how many artifacts were deleted."""
        self.adopt()
        before = time.time() - grace_seconds
        metadata = self.db.metadata
        uuids = {r['uuid'] for r in metadata.all()}
        released: list[str] = []
        holders = set(self.refs.holders()) | {table_holder(name) for name in metadata.identifiers('Table')}
        for holder in sorted(holders):
            kind, _, rest = holder.partition(':')
            if kind == 'table':
                released += self._sweep_table(holder, rest, before)
            elif kind == 'component' and rest.partition(':')[0] not in uuids:
                released += self.refs.release_stale(holder, set(), before)
            elif kind == 'index':
                index_uuid, _, state = rest.partition(':')
                if index_uuid not in uuids or metadata.index_state(index_uuid) != state:
                    released += self.refs.release_stale(holder, set(), before)
        return len(self.collect(released))

    def _sweep_table(self, holder: str, table: str, before: float) -> list[str]:
        databackend = self.db.databackend
        if not databackend.has_table(table):
            return self.refs.release_stale(holder, set(), before)
        live = self.live_keys(table)
        self.refs.hold(holder, live)  # adopts values stored before refs; renews those still referred to
        return self.refs.release_stale(holder, live, before)

    def live_keys(self, table: str) -> set[str]:
        """The artifact digests the rows of ``table`` refer to."""
        info = self.db.table_info(table)
        fields = [name for name, ftype in info.schema.types.items()
                  if isinstance(ftype, DataType) and ftype.encodable != 'encodable']
        found: set[str] = set()
        if not fields:
            return found
        for batch in self.db.databackend.select(table, fields, batch_size=self.db.cfg.read_batch_size):
            for row in batch:
                for value in (row.values() if isinstance(row, dict) else row):
                    for prefix in (BLOB_PREFIX, FILE_PREFIX):
                        if isinstance(value, str) and value.startswith(prefix):
                            found.add(value[len(prefix):].partition('/')[0])
        return found
