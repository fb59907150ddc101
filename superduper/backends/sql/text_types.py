"""Column types kept as text where a database has no type of its own for them (or none its SQL takes from a
parameter), and the one-row ``MERGE`` the dialects without ``INSERT ... ON CONFLICT`` upsert with."""

from __future__ import annotations

import json
import uuid
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.base import Executable
from sqlalchemy.sql.elements import ClauseElement


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


class MergeRow(Executable, ClauseElement):
    """``MERGE`` of one row given as parameters named after its columns (run with ``executemany``): the row whose
    ``on`` columns match is updated (``update``), else the row is inserted. Names and parameters are written by the
    dialect's compiler, so any column name works (a listener's outputs column has the listener's name in it).

    ``from_dual`` ends the one-row source table where the dialect needs a table there (Oracle's ``FROM dual``);
    ``alias`` introduces table aliases (Oracle takes no ``AS`` there); ``target_hint`` follows the target table
    (SQL Server's ``WITH (HOLDLOCK)``); ``terminator`` ends the statement (SQL Server requires ``;``)."""

    inherit_cache = False  # compiled once per table and columns by the caller

    def __init__(self, table: sa.Table, columns: Sequence[str], on: Sequence[str], update: bool = True,
                 from_dual: str = '', alias: str = ' AS ', target_hint: str = '', terminator: str = ''):
        self.table, self.columns, self.on, self.update = table, list(columns), list(on), update
        self.from_dual, self.alias, self.target_hint, self.terminator = from_dual, alias, target_hint, terminator
        self.binds = {c: sa.bindparam(c, type_=table.c[c].type) for c in columns}

    def with_values(self, row: dict[str, Any]) -> 'MergeRow':
        """The same statement with one row's values bound (to be written as literals)."""
        merge = MergeRow(self.table, self.columns, self.on, self.update, self.from_dual, self.alias, self.target_hint,
                         self.terminator)
        merge.binds = {c: sa.bindparam(c, row[c], type_=self.table.c[c].type) for c in self.columns}
        return merge


@compiles(MergeRow)
def _merge_row(element: MergeRow, compiler: Any, **kw: Any) -> str:
    q = compiler.preparer.quote
    bind = {c: compiler.process(p, **kw) for c, p in element.binds.items()}
    source = 'SELECT ' + ', '.join(f'{bind[c]} AS {q(c)}' for c in element.on) + element.from_dual
    on = ' AND '.join(f'tgt.{q(c)} = src.{q(c)}' for c in element.on)
    sql = (f'MERGE INTO {compiler.preparer.format_table(element.table)}{element.target_hint}{element.alias}tgt '
           f'USING ({source}){element.alias}src ON ({on})')
    others = [c for c in element.columns if c not in element.on]
    if element.update and others:  # unqualified: Trino takes no alias on the columns set
        sql += ' WHEN MATCHED THEN UPDATE SET ' + ', '.join(f'{q(c)} = {bind[c]}' for c in others)
    return (sql + f' WHEN NOT MATCHED THEN INSERT ({", ".join(q(c) for c in element.columns)}) '
            f'VALUES ({", ".join(bind[c] for c in element.columns)}){element.terminator}')
