"""PostgreSQL through psycopg 3: ``postgresql://user@host/db`` or ``postgres://...``."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects import postgresql

from superduper.backends.sql.base import SQLDataBackend


class PostgresDataBackend(SQLDataBackend):
    scheme = 'postgresql'

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        scheme, _, rest = uri.partition('://')
        return uri if '+' in scheme else f'postgresql+psycopg://{rest}'

    def engine_options(self) -> dict[str, Any]:
        return {'pool_pre_ping': True}

    def server_side_cursor(self, dbapi_connection: Any) -> Any:
        return dbapi_connection.cursor(name=f'superduper_{uuid.uuid4().hex[:16]}')

    def column_type(self, storage: str) -> Any:
        if storage == 'json':
            return postgresql.JSONB(none_as_null=True)
        if storage == 'bytes':
            return postgresql.BYTEA()
        return super().column_type(storage)
