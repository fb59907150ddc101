"""What the SQL change feed (``changes``) and output log (``outputs``) ask of the SQL data backend
(``superduper.backends.sql.base.SQLDataBackend`` and its dialects), so that neither imports the backend that builds
them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Protocol, Sequence

from superduper.backends.base import DataBackend

if TYPE_CHECKING:
    import sqlalchemy as sa

    from superduper.base.query import Condition


class SQLBackend(DataBackend, Protocol):
    engine: 'sa.Engine'
    dialect: Any
    #: the database's clock in epoch seconds, as SQL
    epoch_sql: str

    def begin(self) -> ContextManager[Any]: ...

    def table(self, name: str) -> 'sa.Table': ...

    def primary_key(self, name: str) -> list[str]: ...

    def compile_condition(self, table: 'sa.Table', cond: 'Condition') -> Any: ...

    def run_sql(self, conn: Any, sql: str) -> None: ...

    # ---- change capture -----------------------------------------------------------------------------------------
    def capture_ddl(self, table: str, key: list[str]) -> list[str]:
        """The statements installing triggers that record every write to ``table`` in ``_superduper_change_log``."""

    def drop_capture_ddl(self, table: str) -> list[str]: ...

    def mark_writes(self, conn: Any, claim: int, changes: 'sa.Table') -> Any:
        """Make the change rows this transaction writes from now on carry ``claim``; returns what ``unmark_writes``
        needs."""

    def unmark_writes(self, conn: Any, claim: int, mark: Any, changes: 'sa.Table') -> None: ...

    def key_text(self, columns: Sequence[Any]) -> Any:
        """The primary key as the change rows hold it (text; a JSON array for a composite key), as SQL."""

    def decode_keys(self, name: str, texts: Sequence[str]) -> list: ...

    def render_keys(self, name: str, keys: Sequence[Any]) -> dict[Any, str]: ...

    def rows_parameter_sql(self) -> str | None:
        """SQL reading a list of ``(digest, source, error)`` rows from one parameter, where the dialect can."""

    def rows_parameter(self, rows: list[tuple[str, str, str | None]]) -> dict[str, Any]: ...

    def insert_ignore(self, table: 'sa.Table', key: list[str]) -> Any: ...

    def is_deadlock(self, error: Exception) -> bool: ...
