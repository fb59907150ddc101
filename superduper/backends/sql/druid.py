"""Apache Druid through pydruid's SQLAlchemy dialect: ``druid://host:8082/druid/v2/sql/`` (``druid+https://`` over
TLS), Druid's SQL API on a broker or router.

Compile-level only: every statement superduper sends is compiled and parsed in the tests
(``tests/test_dialects.py``), none has run on a server yet.

That API reads: it takes ``SELECT`` and nothing that creates, changes or removes rows or tables (Druid ingests data
with its own tasks; SQL ``INSERT``/``REPLACE`` go to the multi-stage task API, not this one, and there is no
``CREATE TABLE``, ``UPDATE`` or primary key). So a Druid database is a source superduper reads and filters, with
the metadata kept elsewhere (``metadata_store='sqlite://meta.db'``); everything that would write to it (tables,
inserts, updates, deletes, listeners' outputs, the metadata) is refused with one error saying so.
"""

from __future__ import annotations

from typing import Any, NoReturn, Sequence

import pydruid.db.sqlalchemy  # noqa: F401  (the dialect: an ImportError names the extra to install)
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import SQLDataBackend
from superduper.base.exceptions import ConfigError
from superduper.base.query import Condition

READ_ONLY = ("Druid's SQL API takes only SELECT (data is ingested by Druid's own tasks): superduper reads Druid "
             "tables, and keeps its metadata and listeners' outputs in another database "
             "(metadata_store='sqlite://meta.db')")


class DruidDataBackend(SQLDataBackend):
    scheme = 'druid'
    tested = 'compile-level only (not tested against a server)'
    capabilities = Capabilities(change_capture='none', skip_locked=False, transactions=False, upsert=False,
                                shared=False, unshared_reason=READ_ONLY)
    epoch_sql = 'CAST(TIMESTAMP_TO_MILLIS(CURRENT_TIMESTAMP) AS DOUBLE) / 1000.0'

    def refuse(self, action: str) -> NoReturn:
        raise ConfigError(f'cannot {action} in {self.where()}: {READ_ONLY}')

    # ---- everything that writes --------------------------------------------------------------------------------
    def metadata_store(self) -> Any:
        self.refuse('keep the metadata')

    def output_log(self) -> Any:
        self.refuse("keep listeners' outputs")

    def create_statement(self, name: str, types: dict, primary_key: str) -> NoReturn:
        self.refuse(f'create table {name!r}')

    def create_table(self, name: str, types: dict, primary_key: str) -> NoReturn:
        self.refuse(f'create table {name!r}')

    def add_column_sql(self, name: str, field: str, ftype: Any) -> NoReturn:
        self.refuse(f'add column {field!r} to table {name!r}')

    def drop_table_sql(self, name: str) -> NoReturn:
        self.refuse(f'drop table {name!r}')

    def insert(self, conn: Connection, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> NoReturn:
        self.refuse(f'insert into table {name!r}')

    def insert_returning(self, conn: Connection, name: str, rows: list[dict]) -> NoReturn:
        self.refuse(f'insert into table {name!r}')

    def update(self, conn: Connection, name: str, values: dict[str, Any], where: Condition | None) -> NoReturn:
        self.refuse(f'update table {name!r}')

    def delete(self, conn: Connection, name: str, where: Condition | None) -> NoReturn:
        self.refuse(f'delete from table {name!r}')

    def update_statement(self, name: str, values: dict[str, Any], where: Condition | None) -> NoReturn:
        self.refuse(f'update table {name!r}')

    def delete_statement(self, name: str, where: Condition | None) -> NoReturn:
        self.refuse(f'delete from table {name!r}')

    def insert_ignore(self, table: sa.Table, key: list[str]) -> NoReturn:
        self.refuse(f'insert into table {table.name!r}')
