"""In-memory tables: the pandas and Polars DataFrames (or Arrow tables) given to ``superduper({'orders': df})``, held
as Arrow tables, with the writes of ``superduper.backends.lake.folder.Folder`` done in memory, each under a lock."""

from __future__ import annotations

import threading
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from superduper.backends.lake.engines import TableSource
from superduper.base.exceptions import QueryError, UnknownTable


def as_arrow(name: str, frame: Any) -> pa.Table:
    """A pandas or Polars DataFrame, or an Arrow table, as an Arrow table (a pandas index with a name is kept)."""
    if isinstance(frame, pa.Table):
        return frame
    module = type(frame).__module__.split('.')[0]
    if module == 'pandas':
        return pa.Table.from_pandas(frame, preserve_index=None if frame.index.name else False)
    if module == 'polars':
        return frame.to_arrow()
    raise QueryError(f'table {name!r}: expected a pandas or Polars DataFrame or an Arrow table, '
                     f'got {type(frame).__name__}')


class Frames:
    def __init__(self, frames: dict[str, Any]):
        self._tables = {str(name): as_arrow(str(name), frame) for name, frame in frames.items()}
        self._sources: dict[str, TableSource] = {}
        self._lock = threading.Lock()

    def tables(self) -> dict[str, pa.Schema]:
        with self._lock:
            return {name: table.schema for name, table in self._tables.items()}

    def find(self, name: str) -> pa.Schema | None:
        return self.tables().get(name)

    def _table(self, name: str) -> pa.Table:
        table = self._tables.get(name)
        if table is None:
            raise UnknownTable(f'table {name!r} does not exist among the DataFrames; tables: '
                               f'{", ".join(n for n in self._tables if not n.startswith("_")) or "(none)"}')
        return table

    def source(self, name: str) -> TableSource:
        with self._lock:
            source = self._sources.get(name)
            if source is None:
                source = self._sources[name] = TableSource(name, pads.dataset(self._table(name)))
            return source

    def schema(self, name: str) -> pa.Schema:
        with self._lock:
            return self._table(name).schema

    def forget(self, name: str) -> None:
        pass  # every write makes a new source itself

    def _set(self, name: str, table: pa.Table) -> None:
        self._tables[name] = table
        self._sources.pop(name, None)

    def create(self, name: str, schema: pa.Schema) -> None:
        with self._lock:
            self._set(name, schema.empty_table())

    def add_columns(self, name: str, fields: list[pa.Field]) -> None:
        with self._lock:
            table = self._table(name)
            for f in fields:
                table = table.append_column(f, pa.nulls(table.num_rows, f.type))
            self._set(name, table)

    def append(self, name: str, data: pa.Table) -> None:
        with self._lock:
            table = self._table(name)
            self._set(name, pa.concat_tables([table, data.cast(table.schema)]))

    def merge(self, name: str, data: pa.Table, key: str, update: bool = False, insert: bool = False,
              delete: bool = False) -> None:
        """As ``Folder.merge``: rows of ``data`` whose key is stored update (their columns) or delete the stored
        rows; the others are inserted (``insert``)."""
        with self._lock:
            table = self._table(name)
            keys = data.column(key).cast(table.schema.field(key).type)
            matched = pc.is_in(table.column(key), value_set=keys)
            if update:
                at = pc.index_in(table.column(key), value_set=keys)
                for column in data.column_names:
                    if column != key:
                        i = table.schema.get_field_index(column)
                        new = pc.take(data.column(column), at).cast(table.schema.field(i).type)
                        table = table.set_column(i, table.schema.field(i), pc.if_else(matched, new, table.column(i)))
            if delete:
                table = table.filter(pc.invert(matched))
            if insert:
                fresh = data.filter(pc.invert(pc.is_in(keys, value_set=table.column(key))))
                table = pa.concat_tables([table, fresh.select(table.column_names).cast(table.schema)])
            self._set(name, table)

    def drop(self, name: str) -> None:
        with self._lock:
            self._tables.pop(name, None)
            self._sources.pop(name, None)
