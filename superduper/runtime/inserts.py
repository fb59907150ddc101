"""Inserting rows: keys and folds filled in, values encoded column by column in batches, database-generated keys
asked back, rows naming different fields inserted group by group."""

from __future__ import annotations

import os
import zlib
from typing import Any, Callable, ContextManager, Mapping

from superduper.base.config import Config
from superduper.base.exceptions import QueryError
from superduper.runtime.tables import TableInfo


class Inserter:
    def __init__(self, databackend: Any, holding: Callable[[str], ContextManager[Any]], cfg: Config):
        self.databackend = databackend
        self.holding = holding  # an artifact store for encoding a table's values (``ArtifactCollector.holding``)
        self.cfg = cfg

    def prepare(self, info: TableInfo, rows: list[dict]) -> Callable[[Any], list]:
        """Check and encode ``rows`` for ``info``'s table, outside any transaction: the artifacts their values
        store are held and written here (a table's transaction must not wait on the metadata's). Returns the
        write, to run in a transaction, which returns the ids."""
        if not rows:
            return lambda conn: []
        keys = _union_keys(rows)
        info.schema.check_fields(info.name, keys)
        with self.holding(info.name) as artifacts:
            if not info.auto_id and not set(info.primary_key) <= set(keys):
                return self._returning(info, rows, artifacts)
            if set(map(len, rows)) != {len(keys)} and (not info.auto_id or info.schema.open):
                return self._by_key_set(info, rows, artifacts)
            return self._columns(info, keys, rows, artifacts)

    def _columns(self, info: TableInfo, keys: list[str], rows: list[dict], artifacts: Any) -> Callable[[Any], list]:
        """Rows with these keys, column by column, missing ids and folds filled in."""
        columns = [[r.get(k) for r in rows] for k in keys]
        if info.auto_id and info.primary_key[0] not in keys:
            keys = keys + [info.primary_key[0]]
            columns.append([None] * len(rows))
        pk_columns = [keys.index(k) for k in info.primary_key]
        if info.auto_id:
            _fill_ids(columns[pk_columns[0]], self._id_maker(info))
            if '_fold' in info.schema.types:
                if '_fold' not in keys:
                    keys = keys + ['_fold']
                    columns.append([None] * len(rows))
                _fill_folds(columns[keys.index('_fold')], columns[pk_columns[0]], self.cfg.valid_fraction)
        step = self.cfg.insert_batch_size
        chunks = [info.schema.encode_columns(info.name, keys, [c[start : start + step] for c in columns], artifacts,
                                             first_row=start) for start in range(0, len(rows), step)]
        ids = columns[pk_columns[0]] if len(pk_columns) == 1 else list(zip(*[columns[i] for i in pk_columns]))

        def write(conn: Any) -> list:
            self.databackend.insert_batches(conn, info.name, keys, chunks)
            return ids

        return write

    def _id_maker(self, info: TableInfo) -> Any:
        """Hex strings for a string key, else the database's own kind of key (MongoDB's ObjectId)."""
        return _hex_ids if info.schema.types[info.primary_key[0]].name == 'str' else self.databackend.new_ids

    def _by_key_set(self, info: TableInfo, rows: list[dict], artifacts: Any) -> Callable[[Any], list]:
        """Rows naming different fields (a table of someone else's with defaults, documents of a collection):
        insert each group as given, so a field a row lacks stays absent."""
        groups: dict[frozenset, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(frozenset(row), []).append(i)
        writes = []
        for positions in groups.values():
            group = [rows[i] for i in positions]
            if not info.auto_id and not set(info.primary_key) <= set(group[0]):
                writes.append((positions, self._returning(info, group, artifacts)))
            else:
                writes.append((positions, self._columns(info, list(group[0]), group, artifacts)))

        def write(conn: Any) -> list:
            ids: list = [None] * len(rows)
            for positions, write_group in writes:
                for i, key in zip(positions, write_group(conn)):
                    ids[i] = key
            return ids

        return write

    def _returning(self, info: TableInfo, rows: list[dict], artifacts: Any) -> Callable[[Any], list]:
        """The database generates the primary key (autoincrement): ask it back with RETURNING."""
        encoded = []
        for i, row in enumerate(rows):
            keys = list(row)
            columns = info.schema.encode_columns(info.name, keys, [[row[k]] for k in keys], artifacts, i)
            encoded.append({k: c[0] for k, c in zip(keys, columns)})

        def write(conn: Any) -> list:
            returned = self.databackend.insert_returning(conn, info.name, encoded)
            return [r[0] for r in returned] if len(info.primary_key) == 1 else returned

        return write


def as_rows(documents: Any, table: str) -> list[dict]:
    if hasattr(documents, 'to_dict') and hasattr(documents, 'columns'):  # a pandas DataFrame
        frame = documents.astype(object).where(documents.notna(), None)
        return frame.to_dict('records')
    if isinstance(documents, Mapping):
        raise QueryError(f'insert into {table!r} takes a list of rows; use insert_one for a single row')
    rows = documents if isinstance(documents, list) else list(documents)
    if set(map(type, rows)) != {dict} and not all(isinstance(row, dict) for row in rows):  # fast checks first
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise QueryError(f'row {i} of an insert into {table!r} is a {type(row).__name__}, not a dict')
        rows = [dict(row) for row in rows]
    return rows


def _union_keys(rows: list[dict]) -> list[str]:
    """Every key any row has: the first row's in order, then the others sorted."""
    keys = list(rows[0])
    extra = set().union(*rows).difference(keys)
    return keys + sorted(extra) if extra else keys


def _fill_ids(column: list, new_ids: Any) -> None:
    missing = [i for i, v in enumerate(column) if v is None]
    if missing:
        for i, key in zip(missing, new_ids(len(missing))):
            column[i] = key


def _hex_ids(n: int) -> list[str]:
    hexes = os.urandom(16 * n).hex()
    return [hexes[32 * i : 32 * i + 32] for i in range(n)]


def _fill_folds(folds: list, ids: list, valid_fraction: float) -> None:
    """'valid' for a stable ``valid_fraction`` of ids (by hash, so a re-inserted row keeps its fold)."""
    threshold = int(valid_fraction * 2**32)
    for i, fold in enumerate(folds):
        if fold is None:
            folds[i] = 'valid' if zlib.crc32(str(ids[i]).encode()) < threshold else 'train'
