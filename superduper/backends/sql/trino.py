"""Trino through the ``trino`` package's SQLAlchemy dialect: ``trino://user@host:8080/catalog/schema``.

Compile-level only: every statement superduper sends is compiled and parsed in the tests
(``tests/test_dialects.py``), none has run on a server yet.

Trino runs SQL over a catalog's connector, and what a table can do is the connector's:

- superduper's tables need ``UPDATE``, ``DELETE`` and ``MERGE`` (upserts, one ``MERGE`` a row): an Iceberg or
  Delta Lake catalog has them, the Hive connector only on transactional tables, the memory connector none;
- primary keys and unique constraints are not declared or enforced (the dialect leaves them out), so the
  metadata's insert-if-absent writes are safe for one process at a time (``shared=False``);
- statements commit one by one (``transactions=False``);
- there are no triggers: only writes through superduper are followed (``change_capture='none'``).
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

import sqlalchemy as sa
import trino.sqlalchemy  # noqa: F401  (the dialect: an ImportError names the extra to install)
from trino.sqlalchemy import datatype as trino_types

from superduper.backends.base import Capabilities
from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.text_types import JSONText, MergeRow

# the dialect warns, at every CREATE TABLE, that it leaves keys and unique constraints out: known, and said above
warnings.filterwarnings('ignore', 'Trino does not support (PRIMARY KEY|UNIQUE) constraints', sa.exc.SAWarning)


class TrinoDataBackend(SQLDataBackend):
    scheme = 'trino'
    tested = 'compile-level only (not tested against a server)'
    needs_database_name = True  # the catalog (and schema): trino://user@host:8080/catalog/schema
    capabilities = Capabilities(
        change_capture='none', skip_locked=False, transactions=False, upsert=True, shared=False,
        unshared_reason='Trino enforces no primary keys: the metadata\'s insert-if-absent writes are safe for one '
                        'process at a time')
    epoch_sql = 'to_unixtime(current_timestamp)'

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        return uri

    def column_type(self, storage: str) -> Any:
        if storage == 'json':
            return JSONText(sa.Text())  # VARCHAR: Trino's JSON type takes no plain string parameter
        if storage == 'datetime':
            return trino_types.TIMESTAMP(precision=6)
        if storage == 'uuid':
            return sa.Uuid(native_uuid=False)  # CHAR(32) of hex digits
        return super().column_type(storage)  # VARCHAR, BIGINT, DOUBLE, BOOLEAN, VARBINARY

    def upsert_statement(self, table: sa.Table, keys: Sequence[str], key: str) -> Any:
        return MergeRow(table, keys, [key])

    def insert_ignore(self, table: sa.Table, key: list[str]) -> Any:
        raise NotImplementedError('Trino records no changes here (change_capture is none)')
