"""DuckDB through duckdb-engine: ``duckdb://file.duckdb`` or ``duckdb://:memory:``."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy.pool import StaticPool

from superduper.backends.sql.base import SQLDataBackend
from superduper.backends.sql.sqlite import file_path


class DuckDBDataBackend(SQLDataBackend):
    scheme = 'duckdb'
    # a DuckDB connection invalidates an open result when it runs another statement: read results whole
    streams_results = False

    def __init__(self, uri: str):
        path = file_path(uri)
        if path is not None and os.path.dirname(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        super().__init__(uri)

    @classmethod
    def sqlalchemy_url(cls, uri: str) -> str:
        path = file_path(uri)
        return 'duckdb:///:memory:' if path is None else f'duckdb:///{path}'

    def engine_options(self) -> dict[str, Any]:
        # one process-wide connection: DuckDB allows a single writer, and ':memory:' is per connection
        return {'poolclass': StaticPool}
