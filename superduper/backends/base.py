"""What the ``Datalayer`` asks of a data backend and of a metadata store: two small protocols.

A backend module (``superduper.backends.sql``, ``superduper.backends.mongodb``) provides classes with these
methods; the ``Datalayer`` calls nothing else, so it holds no per-database branches. Rows travel between them
column by column for writes and as batches of tuples for reads (SQL's fast path); a *schemaless* backend
(``schemaless = True``: MongoDB) also accepts ``columns=None`` on reads and then returns whole rows as dicts.

Conditions are the trees of ``superduper.base.query`` (``Compare``/``And``/``Or``/``Not``); each backend compiles
them its own way. ``conn`` is whatever ``begin()`` yields: a transaction on SQL, a write handle on MongoDB.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ContextManager, Iterator, Protocol, Sequence

if TYPE_CHECKING:
    from superduper.base.query import Condition
    from superduper.components.datatype import FieldType
    from superduper.components.table import Table


class DataBackend(Protocol):
    uri: str
    #: rows may hold fields nobody declared (MongoDB collections); reads may ask for whole rows
    schemaless: bool

    # ---- wiring: the other backends a database brings by default ----------------------------------------------
    def metadata_store(self) -> 'MetadataStore':
        """The metadata store kept in this database (used unless ``metadata_store=`` names another)."""

    def default_artifact_store(self, cache_dir: str) -> Any | None:
        """The artifact store kept in this database (GridFS on MongoDB), or ``None``: the local filesystem."""

    def change_feed(self, db: Any) -> Any:
        """What follows writes made by other clients (``superduper.base.changes.ChangeFeed`` is the model)."""

    def native_vectors(self, table: str, field: str) -> bool:
        """Whether ``field`` is stored as a native vector the database searches itself (pgvector)."""

    # ---- connections -----------------------------------------------------------------------------------------
    def begin(self) -> ContextManager[Any]:
        """One unit of writes: a transaction where the database has them."""

    def close(self) -> None: ...

    # ---- tables ------------------------------------------------------------------------------------------------
    def table_names(self) -> list[str]: ...

    def has_table(self, name: str) -> bool: ...

    def describe(self, name: str) -> tuple[dict[str, str], tuple[str, ...]]:
        """Storage kind of each known field and the primary key of a table superduper did not create."""

    def primary_key_of(self, table: 'Table') -> str:
        """The field that identifies rows of a ``Table`` superduper created (MongoDB: ``_id`` unless declared)."""

    def new_ids(self, n: int) -> list:
        """Fresh keys for rows inserted without one, where the key is not a string field."""

    def bind_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None: ...

    def create_table(self, name: str, types: dict[str, 'FieldType'], primary_key: str) -> None: ...

    def drop_table(self, name: str) -> None: ...

    def forget(self, name: str) -> None:
        """Drop what is cached about a table (it was created, altered or dropped)."""

    # ---- writes ------------------------------------------------------------------------------------------------
    def insert(self, conn: Any, name: str, keys: Sequence[str], columns: list[list],
               upsert_key: str | None = None) -> None:
        """Insert rows given column by column; with ``upsert_key``, rows whose key exists replace the stored ones."""

    def insert_returning(self, conn: Any, name: str, rows: list[dict]) -> list[tuple]:
        """Insert rows the database gives keys to, returning the keys."""

    def update(self, conn: Any, name: str, values: dict[str, Any], where: 'Condition | None') -> int: ...

    def delete(self, conn: Any, name: str, where: 'Condition | None') -> int: ...

    # ---- reads -------------------------------------------------------------------------------------------------
    def select(self, name: str, columns: Sequence[str] | None, where: 'Condition | None' = None,
               order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None, offset: int = 0,
               batch_size: int = 2000, joins: Sequence[tuple[str, str, str, str]] = ()) -> Iterator[list]:
        """Batches of rows: tuples in ``columns`` order then one value per join ``(table, column, on, key)``, or
        dicts when ``columns`` is ``None`` (schemaless backends only)."""

    def rows_by_key(self, name: str, columns: Sequence[str] | None, key: str, values: Sequence[Any]) -> list:
        """The rows whose ``key`` is one of ``values``, in any order (vector search hits)."""

    def count(self, name: str, where: 'Condition | None' = None) -> int: ...


class MetadataStore(Protocol):
    """Component records (JSON), with jobs, failures, metrics and saved vector index states."""

    def create(self, **row: Any) -> None: ...

    def get(self, type_id: str, identifier: str, version: int | None = None) -> dict | None: ...

    def get_by_uuid(self, uuid: str) -> dict | None: ...

    def versions(self, type_id: str, identifier: str) -> list[int]: ...

    def identifiers(self, type_id: str) -> list[str]: ...

    def all(self) -> list[dict]: ...

    def delete(self, uuid: str) -> None: ...

    def record_metrics(self, model_uuid: str, values: dict[str, float], rows: int) -> None: ...

    def metric_values(self, model_uuid: str) -> dict[str, float]: ...

    def setting(self, name: str) -> str | None:
        """A setting this database keeps for every client (``'artifact_store'``: where its artifacts are)."""

    def set_setting(self, name: str, value: str) -> None: ...

    def index_state(self, index_uuid: str) -> str | None: ...

    def set_index_state(self, index_uuid: str, artifact: str | None) -> None: ...

    def job_log(self) -> Any:
        """Jobs and their progress: ``start``, ``progress``, ``finish``, ``list``, ``delete``."""

    def failure_log(self) -> Any:
        """Rows a listener failed on: ``count``, ``record``, ``clear``, ``due``, ``list``, ``invalidate`` (forget
        cached counts)."""

    def drop(self) -> None: ...

    def close(self) -> None: ...
