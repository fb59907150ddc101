"""Column types kept as text where a database has no type of its own for them (or none its SQL takes from a
parameter), and the single-row ``MERGE`` the dialects without ``INSERT ... ON CONFLICT`` upsert with."""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Sequence

import sqlalchemy as sa


class JSONText(sa.types.TypeDecorator):
    """JSON values as their text (a database without a JSON type, or whose JSON type takes no plain parameter)."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, impl: Any = None):
        super().__init__()
        if impl is not None:
            self.impl = impl

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.dumps(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else json.loads(value)


class UUIDText(sa.types.TypeDecorator):
    """UUIDs as their canonical text (a database whose tables take neither ``UUID`` nor ``CHAR``: Kudu)."""

    impl = sa.Text
    cache_ok = True

    @property
    def python_type(self) -> type:
        return uuid.UUID

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else str(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return value if value is None or isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def merge_row(table: sa.Table, keys: Sequence[str], key: str, quote: Callable[[str], str], source: str,
              target_hint: str = '', terminator: str = '', alias: str = ' AS ') -> sa.TextClause:
    """``MERGE`` of one row given as parameters named after ``keys`` (run with ``executemany``): the row whose
    ``key`` matches is replaced, else the row is inserted. ``source`` is the dialect's one-row table of the key
    parameter, ``{param}`` and ``{key}`` for the parameter and the column (``SELECT {param} AS {key}``, ``... FROM
    dual``); ``alias`` introduces table aliases (Oracle takes no ``AS`` there)."""
    name, k = quote(table.name), quote(key)
    others = [c for c in keys if c != key]
    sql = (f'MERGE INTO {name}{target_hint}{alias}tgt USING ({source.format(param=f":{key}", key=k)}){alias}src '
           f'ON (tgt.{k} = src.{k})')
    if others:  # unqualified: Trino takes no alias on the columns set
        sql += ' WHEN MATCHED THEN UPDATE SET ' + ', '.join(f'{quote(c)} = :{c}' for c in others)
    sql += (f' WHEN NOT MATCHED THEN INSERT ({", ".join(quote(c) for c in keys)}) '
            f'VALUES ({", ".join(f":{c}" for c in keys)}){terminator}')
    return sa.text(sql).bindparams(*[sa.bindparam(c, type_=table.c[c].type) for c in keys])
