"""Apache Impala through impyla's SQLAlchemy dialect: ``impala://host:21050/database``.

Compile-level only: every statement superduper sends is compiled for Impala 4 and parsed in the tests
(``tests/test_dialects.py``), none has run on a server yet.

superduper's tables need a primary key, ``UPDATE``, ``DELETE`` and an upsert: among Impala's tables only Kudu
tables have them, so tables superduper creates are Kudu tables (``PRIMARY KEY (...) PARTITION BY HASH ...
STORED AS KUDU``, the key columns first, as Kudu requires) and upserts are Impala's ``UPSERT INTO`` (one statement,
a row replaced whole). Kudu has no ``JSON``, ``UUID`` or ``CHAR`` columns: those are ``STRING``.

- a plain ``INSERT`` of a key already stored keeps the stored row (Kudu warns instead of failing);
- there are no multi-statement transactions (``transactions=False``) and no triggers (``change_capture='none'``);
- Kudu keeps the first of two rows with one key and only warns, so the metadata's insert-if-absent writes cannot
  tell they lost a race: safe for one process at a time (``shared=False``);
- Impala has no ``CREATE INDEX``: the output log's index on an outputs table is refused by the server, which the
  output log ignores (a Kudu table is ordered by its key).
"""

from __future__ import annotations

from typing import Any, Sequence

import impala.sqlalchemy as impala_sa
import sqlalchemy as sa
from sqlalchemy.dialects import registry
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.text_types import JSONText, UUIDText

#: hash partitions of a table superduper creates (Kudu tables must be partitioned)
PARTITIONS = 4


class Binary(sa.types.TypeDecorator):
    """Bytes in a ``BINARY`` column (Impala 4.1+, Kudu)."""

    impl = sa.LargeBinary
    cache_ok = True


class KuduUpsert(Insert):
    """``UPSERT INTO``: an ``INSERT`` that replaces the row with the same key (Kudu tables)."""

    inherit_cache = True


@compiles(KuduUpsert)
def _upsert(element: Any, compiler: Any, **kw: Any) -> str:
    return 'UPSERT' + compiler.visit_insert(element, **kw)[len('INSERT'):]


class _KuduDDLCompiler(impala_sa.ImpalaDDLCompiler):
    """Tables with a primary key are Kudu tables, the key's columns first and not null."""

    def visit_create_table(self, create: Any, **kw: Any) -> str:
        table = create.element
        key = [c.name for c in table.primary_key.columns]
        if not key:
            return super().visit_create_table(create, **kw)
        columns = sorted(create.columns, key=lambda c: c.element.name not in key)  # stable: key columns first
        specs = ', '.join(self._column(c.element) for c in columns)
        names = ', '.join(self.preparer.quote(k) for k in key)
        return (f'CREATE TABLE {self.preparer.format_table(table)} ({specs}, PRIMARY KEY ({names})) '
                f'PARTITION BY HASH ({names}) PARTITIONS {PARTITIONS} STORED AS KUDU')

    def _column(self, column: sa.Column) -> str:
        spec = f'{self.preparer.format_column(column)} {self.dialect.type_compiler_instance.process(column.type)}'
        return spec + (' NOT NULL' if column.primary_key else ' NULL')


class _TypeCompiler(impala_sa.Impala4TypeCompiler):
    def visit_large_binary(self, type_: Any, **kw: Any) -> str:
        return 'BINARY'

    def visit_BOOLEAN(self, type_: Any, **kw: Any) -> str:
        return 'BOOLEAN'

    def visit_INTEGER(self, type_: Any, **kw: Any) -> str:
        return 'INT'


class _Compiler(SQLCompiler):
    def render_literal_value(self, value: Any, type_: Any) -> str:
        if isinstance(value, str):  # Impala escapes with backslashes; '' would end one string and start another
            return "'" + value.replace('\\', '\\\\').replace("'", "\\'") + "'"
        return super().render_literal_value(value, type_)


class KuduDialect(impala_sa.Impala4Dialect):
    statement_compiler = _Compiler
    ddl_compiler = _KuduDDLCompiler
    type_compiler_cls = _TypeCompiler
    type_compiler = _TypeCompiler


registry.register('impala.superduper', __name__, 'KuduDialect')


class ImpalaDataBackend(SQLDataBackend):
    scheme = 'impala'
    tested = 'compile-level only (not tested against a server)'
    needs_database_name = True
    capabilities = Capabilities(
        change_capture='none', skip_locked=False, transactions=False, upsert=True, identifier_limit=128,
        shared=False, unshared_reason='Kudu keeps the first row of a key and only warns: the metadata\'s '
                                      'insert-if-absent writes are safe for one process at a time')
    epoch_sql = 'CAST(unix_timestamp() AS DOUBLE)'

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        if '+' in scheme:
            return uri
        return f'impala+superduper://{rest}'

    # ---- types --------------------------------------------------------------------------------------------
    def column_type(self, storage: str) -> Any:
        if storage in ('str', 'any'):
            return sa.Text()  # STRING
        if storage == 'json':
            return JSONText(sa.Text())
        if storage == 'uuid':
            return UUIDText()
        if storage == 'bytes':
            return Binary()
        if storage == 'datetime':
            return sa.TIMESTAMP()
        return super().column_type(storage)  # BIGINT, DOUBLE, BOOLEAN

    def id_type(self) -> Any:
        return sa.Text()  # Kudu keys are STRING (no VARCHAR before Kudu 1.12)

    # ---- statements -------------------------------------------------------------------------------------------
    def add_column_sql(self, name: str, field: str, ftype: Any) -> str:
        ddl = self.field_type(ftype).compile(dialect=self.dialect)
        return f'ALTER TABLE {self.sql_name(name)} ADD COLUMNS ({self.sql_name(field)} {ddl} NULL)'

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any:
        return KuduUpsert(table)

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        raise NotImplementedError('Impala records no changes here (change_capture is none)')
