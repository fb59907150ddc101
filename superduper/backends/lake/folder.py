"""A folder as a catalog of tables: every Parquet file, CSV file, folder of Parquet files and Delta Lake table in it.

``orders.parquet``, ``orders.csv``, ``orders/`` (Parquet files) and ``orders/`` (a Delta table: it has a
``_delta_log``) are all table ``orders``; names starting with ``.`` are not tables (``.superduper/`` holds
superduper's own state). Reads take what is there with no conversion step.

Writes go through Delta Lake, whose commits are atomic: a table that is not yet a Delta table becomes one on its
first write, in place:

- ``orders.parquet`` is moved into a new folder ``orders/`` and that folder converted (``convert_to_deltalake``
  writes a ``_delta_log`` over the file as it is: no row is copied). A process dying between the two steps leaves
  ``orders/`` a folder of Parquet files, still the same table, converted by the next write;
- a folder of Parquet files is converted the same way;
- ``orders.csv`` is written as the Delta table ``orders/``, then moved to ``.superduper/converted/orders.csv``
  (where both are found, the Delta table is the table).

Other tools read the result as an ordinary Delta table (pandas through deltalake, Polars, DuckDB, Spark).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import threading
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from superduper.backends.lake.engines import TableSource
from superduper.base.exceptions import UnknownTable

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger('superduper')

STATE = '.superduper'
#: the commit metadata naming the process that made a commit through superduper (``superduper.backends.lake.versions``)
WRITER = 'superduper.writer'
#: this process's token in the commits it makes (a new one in every process)
TOKEN = uuid.uuid4().hex


@dataclass(frozen=True)
class Found:
    """Where a table's data is: ``kind`` is 'delta', 'parquet' (a file), 'parquet_dir' or 'csv'."""

    name: str
    kind: str
    path: str


class Folder:
    """The tables of one folder, their current data (``source``) and their Delta tables for writes."""

    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        self.state = os.path.join(self.path, STATE)
        os.makedirs(self.state, exist_ok=True)
        self._sources: dict[str, tuple[Any, TableSource]] = {}  # name -> (version or mtime, source)
        self._deltas: dict[str, Any] = {}  # name -> DeltaTable kept for reads (updated incrementally)
        self._lock = threading.Lock()

    # ---- what is there -------------------------------------------------------------------------------------
    def tables(self) -> dict[str, Found]:
        names = {os.path.splitext(e)[0] if os.path.isfile(os.path.join(self.path, e)) else e
                 for e in os.listdir(self.path) if not e.startswith('.')}
        found = {name: self.find(name) for name in sorted(names)}
        return {name: f for name, f in found.items() if f is not None}

    def find(self, name: str) -> Found | None:
        """Where table ``name`` is: a Delta table first, then a Parquet file, a CSV file, a folder of Parquet files
        (a few file-system checks, no listing of the folder)."""
        if name.startswith('.') or os.sep in name:
            return None
        full = os.path.join(self.path, name)
        if os.path.isdir(os.path.join(full, '_delta_log')):
            return Found(name, 'delta', full)
        for ext, kind in (('.parquet', 'parquet'), ('.csv', 'csv')):
            if os.path.isfile(full + ext):
                return Found(name, kind, full + ext)
        if os.path.isdir(full) and glob.glob(os.path.join(glob.escape(full), '*.parquet')):
            return Found(name, 'parquet_dir', full)
        return None

    def get(self, name: str) -> Found:
        found = self.find(name)
        if found is None:
            visible = [t for t in self.tables() if not t.startswith('_')]
            raise UnknownTable(f'table {name!r} does not exist in {self.path}; tables: '
                               f'{", ".join(visible) or "(none)"}')
        return found

    def delta_path(self, name: str) -> str:
        return os.path.join(self.path, name)

    # ---- reads ---------------------------------------------------------------------------------------------
    def source(self, name: str) -> TableSource:
        """The table's current data, made again only when it changed (a new Delta version, a newer file)."""
        found = self.get(name)
        if found.kind == 'delta':
            table = self._delta(name, found.path)
            version: Any = ('delta', table.version())
        else:
            version = (found.kind, _mtime(found.path))
        with self._lock:
            cached = self._sources.get(name)
        if cached is not None and cached[0] == version:
            return cached[1]
        source = self._make_source(found, table if found.kind == 'delta' else None)
        with self._lock:
            self._sources[name] = (version, source)
        return source

    def _delta(self, name: str, path: str) -> Any:
        """The table at its latest version (the log read incrementally since the last look)."""
        from deltalake import DeltaTable

        with self._lock:
            table = self._deltas.get(name)
        if table is None:
            table = DeltaTable(path)
        else:
            table.update_incremental()
        with self._lock:
            self._deltas[name] = table
        return table

    @staticmethod
    def _make_source(found: Found, delta: Any) -> TableSource:
        import pyarrow as pa
        import pyarrow.dataset as pads

        if found.kind == 'delta':
            files = tuple(_local_path(uri) for uri in delta.file_uris())
            schema = plain_types(pa.schema(delta.schema().to_arrow()))
            if delta.metadata().partition_columns:  # partition values are in paths, not files: deltalake reads them
                return TableSource(found.name, delta.to_pyarrow_dataset(schema=schema))
            # the files as one dataset of the table's plain types (a file deltalake wrote may hold string views)
            return TableSource(found.name, pads.dataset(list(files), schema=schema, format='parquet'), files)
        if found.kind == 'csv':
            return TableSource(found.name, pads.dataset(found.path, format='csv'))
        files = (found.path,) if found.kind == 'parquet' else tuple(sorted(glob.glob(os.path.join(found.path, '*.parquet'))))
        return TableSource(found.name, pads.dataset(list(files), format='parquet'), files)

    def schema(self, name: str) -> 'pa.Schema':
        return self.source(name).dataset.schema

    def forget(self, name: str) -> None:
        with self._lock:
            self._sources.pop(name, None)
            self._deltas.pop(name, None)

    # ---- writes --------------------------------------------------------------------------------------------
    def as_delta(self, name: str) -> str:
        """The path of the table as a Delta table, converting it first if it is not one (see the module's doc)."""
        found = self.get(name)
        if found.kind == 'delta':
            self._put_aside_csv(name)
            return found.path
        from deltalake import convert_to_deltalake, write_deltalake

        target = self.delta_path(name)
        if found.kind == 'csv':
            import pyarrow.csv

            write_deltalake(target, pyarrow.csv.read_csv(found.path))
            self._put_aside_csv(name)
        else:
            if found.kind == 'parquet':
                os.makedirs(target, exist_ok=True)
                os.replace(found.path, os.path.join(target, f'{name}.parquet'))
            convert_to_deltalake(target)
        self.forget(name)
        return target

    def _put_aside_csv(self, name: str) -> None:
        csv = os.path.join(self.path, f'{name}.csv')
        if os.path.exists(csv):
            aside = os.path.join(self.state, 'converted')
            os.makedirs(aside, exist_ok=True)
            os.replace(csv, os.path.join(aside, f'{name}.csv'))

    def create(self, name: str, schema: 'pa.Schema') -> None:
        from deltalake import write_deltalake

        write_deltalake(self.delta_path(name), schema.empty_table())
        self.forget(name)

    def add_columns(self, name: str, fields: list['pa.Field']) -> None:
        from deltalake import DeltaTable, Field

        DeltaTable(self.as_delta(name)).alter.add_columns([Field.from_arrow(f) for f in fields])
        self.forget(name)

    def append(self, name: str, data: 'pa.Table') -> None:
        """One commit adding the rows."""
        from deltalake import write_deltalake

        path = self.as_delta(name)
        _retried(lambda: write_deltalake(path, data, mode='append', schema_mode='merge', commit_properties=_ours()))
        self.forget(name)

    def merge(self, name: str, data: 'pa.Table', key: str, update: bool = False, insert: bool = False,
              delete: bool = False) -> None:
        """One commit: the rows of ``data`` whose ``key`` is stored update the stored ones (their columns in
        ``data``) or delete them; the others are inserted (``insert``)."""
        from deltalake import DeltaTable

        path = self.as_delta(name)

        def run() -> None:
            merge = DeltaTable(path).merge(data, predicate=f't.{_quoted(key)} = s.{_quoted(key)}', source_alias='s',
                                           target_alias='t', commit_properties=_ours())
            if update:
                merge = merge.when_matched_update({_quoted(c): f's.{_quoted(c)}' for c in data.column_names
                                                   if c != key})
            if delete:
                merge = merge.when_matched_delete()
            if insert:
                merge = merge.when_not_matched_insert_all()
            merge.execute()

        _retried(run)
        self.forget(name)

    # ---- versions (``superduper.backends.lake.versions``) --------------------------------------------------------
    def version(self, name: str) -> int:
        return self._delta(name, self.get(name).path).version()

    def commit(self, name: str, version: int) -> Any:
        """The log entry of one version of a Delta table (``None``: no such version yet)."""
        return read_commit(self.delta_path(name), version)

    def changed_keys(self, name: str, commit: Any, key: str, present: Callable[[list], set]) -> list:
        """The keys of the rows one commit inserted, updated or deleted: rows of the files it added that are not
        in the files it removed as they are, and keys of removed rows in no added file that ``present`` (the keys
        of these still in the table) leaves out."""
        try:
            removed = _rows_by_key(commit.removed, key)
        except FileNotFoundError:
            log.warning('table %r, version %d: the files it replaced are gone (vacuumed): rows it deleted are '
                        'not seen', name, commit.version)
            removed = None
        changed: list = []
        added_keys: set = set()
        for path, marks_deleted in commit.added:
            for k, row in _rows_by_key([path], key).items():
                added_keys.add(k)
                if marks_deleted or removed is None or removed.get(k) != row:
                    changed.append(k)
        gone = [k for k in (removed or {}) if k not in added_keys]
        if gone:
            still = present(gone)
            changed += [k for k in gone if k not in still]
        return list(dict.fromkeys(changed))

    def drop(self, name: str) -> None:
        found = self.find(name)
        if found is not None:
            if os.path.isdir(found.path):
                shutil.rmtree(found.path)
            else:
                os.remove(found.path)
        self.forget(name)


def plain_types(schema: 'pa.Schema') -> 'pa.Schema':
    """``schema`` with Arrow's view types (which deltalake reads) as the plain ones every engine takes."""
    import pyarrow as pa

    plain = {pa.string_view(): pa.string(), pa.binary_view(): pa.binary()}
    return pa.schema([f.with_type(plain.get(f.type, f.type)) for f in schema])


#: how many times a commit that lost to another writer's is made again (on the table as it is then)
COMMIT_TRIES = 20


def _retried(commit: Callable[[], None]) -> None:
    """Run a commit, again while another program's commit conflicts with it (Delta's optimistic concurrency)."""
    import random
    import time

    from deltalake.exceptions import CommitFailedError

    for attempt in range(COMMIT_TRIES):
        try:
            return commit()
        except CommitFailedError:
            if attempt == COMMIT_TRIES - 1:
                raise
            time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))


def _ours() -> Any:
    """Commit properties marking a commit as this process's."""
    from deltalake import CommitProperties

    return CommitProperties(custom_metadata={WRITER: TOKEN})


def _rows_by_key(paths: list[str], key: str) -> dict:
    """Each row of these Parquet files by its key, as a dict of its values."""
    import pyarrow.parquet as pq

    rows: dict = {}
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            rows[row.get(key)] = row
    return rows


def _quoted(name: str) -> str:
    """A column name in a Delta ``MERGE`` expression."""
    return '`' + name.replace('`', '``') + '`'


def _local_path(uri: str) -> str:
    """A file URI deltalake gives (percent-encoded, maybe ``file://``) as the path engines open."""
    import urllib.parse

    if uri.startswith('file://'):
        uri = uri[len('file://'):]
    return urllib.parse.unquote(uri) if '://' not in uri else uri


def _mtime(path: str) -> float:
    if os.path.isdir(path):
        return max([os.path.getmtime(path)] + [os.path.getmtime(f) for f in glob.glob(os.path.join(path, '*'))])
    return os.path.getmtime(path)


# ---- the Delta log ---------------------------------------------------------------------------------------------
def commit_path(table_path: str, version: int) -> str:
    return os.path.join(table_path, '_delta_log', f'{version:020d}.json')


@dataclass
class Commit:
    """One version's entry in a Delta log: the data files it added (with whether rows of them are marked deleted)
    and removed, and its ``commitInfo``."""

    version: int
    added: list[tuple[str, bool]]
    removed: list[str]
    info: dict


def read_commit(table_path: str, version: int) -> Commit | None:
    """The commit of ``version``, or ``None`` if the table has no such version (yet)."""
    try:
        with open(commit_path(table_path, version)) as f:
            lines = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return None
    added, removed, info = [], [], {}
    for action in lines:
        if 'add' in action:
            added.append((_data_path(table_path, action['add']['path']), bool(action['add'].get('deletionVector'))))
        elif 'remove' in action:
            removed.append(_data_path(table_path, action['remove']['path']))
        elif 'commitInfo' in action:
            info = action['commitInfo']
    return Commit(version, added, removed, info)


def _data_path(table_path: str, path: str) -> str:
    import urllib.parse

    path = urllib.parse.unquote(path)
    return path if os.path.isabs(path) or '://' in path else os.path.join(table_path, path)
