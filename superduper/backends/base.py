"""What the ``Datalayer`` asks of a data backend, of its change feed and of a metadata store: small protocols, and
the capabilities each data backend declares in one place.

A backend module (``superduper.backends.sql``, ``superduper.backends.mongodb``) provides classes with these
methods; the ``Datalayer`` calls nothing else, so it holds no per-database branches. Rows travel between them
column by column for writes and as batches of tuples for reads (SQL's fast path); a *schemaless* backend
(``schemaless = True``: MongoDB) also accepts ``columns=None`` on reads and then returns whole rows as dicts.

Conditions are the trees of ``superduper.base.query`` (``Compare``/``And``/``Or``/``Not``); each backend compiles
them its own way. ``conn`` is whatever ``begin()`` yields: a transaction on SQL, a write handle on MongoDB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterable, Iterator, Literal, Protocol, Sequence

if TYPE_CHECKING:
    from superduper.base.query import Condition
    from superduper.components.datatype import FieldType
    from superduper.components.schema import Schema
    from superduper.components.table import Table


@dataclass(frozen=True)
class Capabilities:
    """What a data backend can do. The runtime, the compute backends and the shared test suite read these; nobody
    probes a backend with ``hasattr`` or compares URI schemes."""

    #: how writes by other clients are seen: 'triggers' (recorded in the database, in the writer's transaction),
    #: 'change_stream' (MongoDB), 'polling' (row hashes compared with those last seen, by the process that has
    #: the database open), 'versions' (the commits of table versions since the last seen one: Delta tables, read
    #: by the process that has the folder open), or 'none' (only writes made through superduper are followed)
    change_capture: Literal['triggers', 'change_stream', 'polling', 'versions', 'none'] = 'none'
    #: workers can take pending changes with ``FOR UPDATE SKIP LOCKED`` instead of queueing behind each other
    skip_locked: bool = False
    #: several statements commit together or not at all
    transactions: bool = True
    #: ``INSERT ... ON CONFLICT`` (or the dialect's equivalent) in one statement
    upsert: bool = True
    #: vectors can be stored in a native type the database searches itself (pgvector)
    native_vectors: bool = False
    #: MongoDB aggregation pipelines (``db['t'].aggregate([...])``)
    pipelines: bool = False
    #: one write transaction at a time, for every client (SQLite): a write holds the whole database until it commits
    serialized_writes: bool = False
    #: the longest table or column name the database takes, in bytes (``None``: no practical limit)
    identifier_limit: int | None = None
    #: other processes (workers, a CLI) can open the same database at the same time
    shared: bool = True
    #: the data outlives the process: another process opening the same URI later finds it (not an in-memory database)
    persistent: bool = True
    #: a URI names the database, so another connection (in this process at least) can open it again; not DataFrames
    #: handed to ``superduper({'t': df})``
    opened_by_uri: bool = True
    #: why ``shared`` is False, for the error that refuses a distributed setup
    unshared_reason: str = ''
    #: an insert hands back the keys the database made for its rows (``INSERT ... RETURNING``): rows may leave out
    #: a key the table generates
    generated_keys: bool = True
    #: reads can come column by column as Arrow arrays (``select_columns``): results go to DataFrames without
    #: becoming Python rows
    columnar_reads: bool = False
    #: the database's own full-text index a ``KeywordIndex`` uses: 'fts5' (SQLite), 'tsvector' (PostgreSQL),
    #: 'fulltext' (MariaDB/MySQL), 'text' (a MongoDB server); ``None``: an in-process BM25 engine follows the table
    full_text: str | None = None

    @property
    def follows_other_writers(self) -> bool:
        """Writes by other clients (plain SQL, another program) reach listeners."""
        return self.change_capture != 'none'

    @property
    def workers_follow(self) -> bool:
        """Workers (``superduper start``) find the changes in the database, whoever wrote them; with polling, only
        the process that has the database open follows them."""
        return self.change_capture in ('triggers', 'change_stream')


class DataBackend(Protocol):
    uri: str
    capabilities: Capabilities
    tested: str  # what the project's tests run it against
    #: rows may hold fields nobody declared (MongoDB collections); reads may ask for whole rows
    schemaless: bool

    # ---- wiring: the other backends a database brings by default ----------------------------------------------
    def metadata_store(self) -> 'MetadataStore':
        """The metadata store kept in this database (used unless ``metadata_store=`` names another)."""

    def default_artifact_store(self, cache_dir: str) -> Any | None:
        """The artifact store kept in this database (GridFS on MongoDB), or ``None``: the local filesystem."""

    def output_log(self) -> 'OutputLog':
        """The versions of listeners' outputs tables (``OutputLog``), one per backend."""

    def change_feed(self, settings: Any) -> 'ChangeFeed':
        """How changes to followed tables are recorded and handed to consumers."""

    def native_vectors(self, table: str, field: str) -> bool:
        """Whether ``field`` is stored as a native vector the database searches itself (pgvector)."""

    def native_searcher(self, db: Any, index: Any) -> Any:
        """The database's own search over a vector index's outputs, where ``native_vectors`` says they are native."""

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

    def declared_schema(self, table: 'Table') -> tuple['Schema', str]:
        """Use a ``Table``'s declaration for this table's reads and writes; returns the schema values are checked
        against and the key field."""

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

    def insert_batches(self, conn: Any, name: str, keys: Sequence[str], batches: list[list[list]]) -> None:
        """Insert the rows of one insert, given as batches of columns, all or none: a batch refused (a key given
        twice or held already) leaves no other written, in the caller's transaction or, where the database has
        none, by checking every batch before the first is written."""

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

    def select_columns(self, name: str, columns: Sequence[str], where: 'Condition | None' = None,
                       order_by: Sequence[tuple[str, bool]] = (), limit: int | None = None, offset: int = 0,
                       batch_size: int = 2000, joins: Sequence[tuple[str, str, str, str]] = ()) -> Iterator[list]:
        """As ``select``, each batch a list of columns: Arrow arrays, or lists of values where the stored form
        needs reading back (JSON text). Only where ``capabilities.columnar_reads``."""

    def rows_by_key(self, name: str, columns: Sequence[str] | None, key: str, values: Sequence[Any]) -> list:
        """The rows whose ``key`` is one of ``values``, in any order (vector search hits)."""

    def count(self, name: str, where: 'Condition | None' = None) -> int: ...

    # ---- keyword search (where ``capabilities.full_text`` names the database's own index) -----------------------
    def keyword_searcher(self, name: str, table: str, key: str, primary_key: str,
                         language: str | None) -> 'KeywordSearcher':
        """The database's full-text search of ``table``'s text field ``key`` (an index called ``name``)."""


class KeywordSearcher(Protocol):
    """A full-text index kept by the database itself, so that every writer's rows are indexed as they commit."""

    def build(self) -> None:
        """Make the index over the rows there are (idempotent)."""

    def search(self, text: str, n: int, where: 'Condition | None') -> list[tuple[Any, float]]:
        """``(primary key, score)`` of the ``n`` best rows matching ``text`` among those ``where`` selects, best
        first."""

    def drop(self) -> None: ...


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

    def components_version(self) -> str | None:
        """A token that changes (in the same transaction) whenever a component is applied or removed."""

    def replace_record(self, uuid: str, record: dict) -> None:
        """Store another record for the same component (its uuid unchanged), e.g. with signatures added."""

    def setting(self, name: str) -> str | None:
        """A setting this database keeps for every client (``'artifact_store'``: where its artifacts are)."""

    def set_setting(self, name: str, value: str) -> None: ...

    def index_state(self, index_uuid: str) -> str | None: ...

    def set_index_state(self, index_uuid: str, artifact: str | None) -> None: ...

    def replace_index_state(self, index_uuid: str, previous: str | None, artifact: str) -> bool:
        """Make ``artifact`` the saved state if ``previous`` still is; whether it did."""

    def artifact_refs(self) -> 'ArtifactRefs':
        """Who holds which artifact (component records, index states, tables' values)."""

    def job_log(self) -> Any:
        """Jobs and their progress: ``start``, ``progress``, ``finish``, ``list``, ``delete``
        (``superduper.backends.logs.JobLog`` over the store's ``Records``)."""

    def failure_log(self) -> Any:
        """Rows a listener failed on: ``count``, ``record``, ``clear``, ``due``, ``list``, ``invalidate`` (forget
        cached counts) (``superduper.backends.logs.FailureLog`` over the store's ``Records``)."""

    def tick_log(self) -> Any:
        """The ticks of schedules workers claimed, with their leases (``superduper.backends.logs.TickLog`` over the
        store's ``Records``)."""

    def drop(self) -> None: ...

    def close(self) -> None: ...


class ArtifactRefs(Protocol):
    """Which holders (``component:<uuid>``, ``index:<uuid>``, ``table:<name>``) refer to which artifacts. A blob is
    stored only after it is held, and deleted only while nothing holds it, under a lock that a new holder of the
    same blob waits for: a collection never removes a blob that a concurrent apply or insert is storing. Keys are
    artifact keys (``<digest>`` or ``<digest>/<name>``); refs count the digest, the unit a store deletes."""

    def hold(self, holder: str, keys: Iterable[str]) -> None:
        """Record that ``holder`` refers to ``keys`` (before their bytes are written; idempotent)."""

    def release(self, holder: str, keys: Iterable[str] | None = None) -> list[str]:
        """Forget that ``holder`` refers to ``keys`` (all it holds if ``None``); returns the digests released."""

    def release_stale(self, holder: str, live: set[str], before: float) -> list[str]:
        """Release what ``holder`` holds that is not in ``live`` and was last held before ``before`` (epoch
        seconds): a table's values no row refers to any more, after a grace period for writes in flight."""

    def held_by(self, holder: str) -> list[str]: ...

    def holders(self, prefix: str = '') -> list[str]: ...

    def collect(self, keys: Iterable[str], delete: Callable[[str], None]) -> list[str]:
        """Delete (``delete(digest)``) each of ``keys`` that nothing holds; returns those deleted."""


def artifact_digest(key: str) -> str:
    """The unit an artifact store keeps and deletes: a key's content digest (``<digest>/<name>`` -> ``<digest>``)."""
    return key.partition('/')[0]


# ---- the metadata's logs, written once over each store's rows (``superduper.backends.logs``) -------------------
@dataclass(frozen=True)
class OneOf:
    """A ``Where`` value: the column holds one of ``values``."""

    values: Sequence[Any]


@dataclass(frozen=True)
class Below:
    """A ``Where`` value: the column holds less than ``value``."""

    value: Any


#: conditions on a table's rows, all to hold: per column a value (equal to it), a ``OneOf`` or a ``Below``
Where = dict[str, Any]


class Records(Protocol):
    """Flat rows (dicts of plain values) in the metadata's named tables, collections on MongoDB: what the job log
    and the failure log (``superduper.backends.logs``) need of a metadata store."""

    #: keys of source rows are stored as they are (documents); if not, as their JSON text (``superduper.base.keys``)
    native_keys: bool

    def insert(self, name: str, row: dict[str, Any]) -> bool:
        """Add one row; ``False``, having written nothing, if a row with its primary key exists."""

    def find(self, name: str, where: Where, order_by: str | None = None) -> list[dict[str, Any]]:
        """The rows ``where`` selects, sorted by ``order_by`` if given."""

    def count(self, name: str, where: Where) -> int: ...

    def update(self, name: str, where: Where, values: dict[str, Any]) -> None: ...

    def delete(self, name: str, where: Where) -> None:
        """Delete the rows ``where`` selects, in one transaction (however many values a ``OneOf`` holds)."""

    def count_up(self, name: str, where: Where, key: str, rows: list[dict[str, Any]], counter: str) -> None:
        """Write ``rows`` (each with the values of ``where``) in place of the rows ``where`` selects with the same
        ``key``; a row's ``counter`` is one more than the replaced row's, 1 for a new row."""

    def claim_if(self, name: str, where: Where, values: dict[str, Any]) -> bool:
        """Set ``values`` on the one row ``where`` selects, atomically (a compare-and-set); whether a row was
        updated (``False``: no row holds those values any more, another process changed it first)."""


# ---- change capture ---------------------------------------------------------------------------------------------
@dataclass
class Change:
    """One pending change: row ``key`` of ``table`` was written (or is to be computed again: a backfill, a retry)."""

    table: str
    key: Any  # the primary key value (a tuple for a composite key)
    listener: str | None = None  # for this listener only (a backfill, a retry); None: every listener of the table
    text: str = ''  # the key as the feed stores it (its guard is kept per listener and text)

    @property
    def output_key(self) -> Any:
        """The row's ``_source`` in an outputs table: the key, or the text of a composite key."""
        return self.text if isinstance(self.key, tuple) else self.key


@dataclass
class Batch:
    """Changes leased to this process. Outputs are computed outside any transaction, then written by ``finish`` in
    one short transaction that releases the lease; a result with a lower ``stamp`` never replaces one with a higher
    stamp, so an older change can never overwrite the result of a newer one."""

    stamp: int
    changes: list[Change]
    claim: Any = None  # the feed's handle on the lease (None: nothing was leased, e.g. writes followed in memory)
    reload: bool = False  # the feed saw components applied or removed by another process: read them again
    #: a write's own changes, computed by the writer: only for its synchronous listeners (the others' are handed to
    #: the workers), and so are the changes its output writes cause
    writer: bool = False

    def groups(self) -> dict[tuple[str, str | None], list[Change]]:
        """The changes by (table, listener), each key once, in the order first seen."""
        grouped: dict[tuple[str, str | None], dict[str, Change]] = {}
        for change in self.changes:
            grouped.setdefault((change.table, change.listener), {}).setdefault(change.text, change)
        return {k: list(v.values()) for k, v in grouped.items()}


@dataclass
class Results:
    """What one listener made of a batch: outputs to store, rows whose outputs go (row deleted or no longer
    selected) and rows the model failed on (their stale outputs go too), each as ``(change, ...)``."""

    listener: str  # uuid
    outputs_table: str
    keys: Sequence[str]  # the outputs table's columns written: the source key column, then the output
    stored: list[tuple[Change, tuple]] = field(default_factory=list)  # (change, encoded row in ``keys`` order)
    gone: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)
    #: a flattening listener's: ``keys`` are (``CHUNK_ID``, ``SOURCE``, ``POSITION``, output) and each stored entry
    #: is ``(change, rows)``, the source's chunks (possibly none), which replace all it had
    flatten: bool = False


@dataclass
class Finished:
    """What ``finish`` wrote: per listener uuid the changes whose result was stored (newer results kept the
    others), and the batch of changes the output writes made to followed tables (a chain), leased here."""

    stored: dict[str, list[Change]]
    gone: dict[str, list[Change]]
    chained: Batch | None = None


class LeaseLost(Exception):
    """The batch's lease expired and another consumer took it over: its results were not written."""


class ChangeFeed(Protocol):
    """Records the changes to followed tables and hands them out as leased batches.

    A write through superduper runs inside ``writing(conn, table)``; after it commits, ``written(handle)`` gives its
    changes as a batch leased to the writer (so outputs can exist when ``execute()`` returns, and nobody computes
    them twice). ``claim`` leases pending changes to a consumer; ``finish`` stores a batch's results."""

    #: pending changes live in the database: any consumer (worker) can take them, and a crash loses none
    durable: bool

    def follow(self, table: str, key: Sequence[str]) -> None: ...

    def unfollow(self, table: str) -> None: ...

    def writing(self, conn: Any, table: str, key: Sequence[str]) -> ContextManager[Any]: ...

    def written(self, handle: Any) -> Batch | None: ...

    def claim(self, limit: int, listener: str | None = None) -> Batch | None: ...

    def finish(self, batch: Batch, results: list[Results], followed: set[str],
               handed: Sequence[tuple[str, str]] = ()) -> Finished:
        """Store the results; the batch's changes to ``handed`` ``(table, listener uuid)`` are queued for that
        listener (a writer computes only its synchronous listeners). Releases the batch."""

    def release(self, batch: Batch) -> None:
        """Give a batch back unprocessed (an error): its changes are taken again later."""

    def enqueue(self, table: str, listener: str, where: Any = None, keys: Sequence[Any] | None = None) -> int:
        """Queue rows of ``table`` (those ``where`` selects, or these keys) to be computed for one listener; how many."""

    def pending(self, table: str) -> tuple[int | None, float | None]:
        """Changes of ``table`` waiting and the age in seconds of the oldest; ``None`` where it cannot be counted."""

    def pending_for(self, listener: str) -> int | None: ...

    def problem_with(self, table: str) -> str | None:
        """Why changes to ``table`` are not followed now (a change stream that cannot be opened), if they are not."""

    def attach(self, listeners: Any) -> None:
        """The runtime's callable listing the ``(table, listener uuid)`` pairs followed now."""

    def failure_log(self) -> Any: ...

    def close(self) -> None: ...


# ---- the metadata's tables (collections on MongoDB), the same in every metadata store ----------------------------
COMPONENTS = '_superduper_components'
JOBS = '_superduper_jobs'
FAILURES = '_superduper_failures'
METRICS = '_superduper_metrics'
INDEX_STATES = '_superduper_index_states'
ARTIFACT_REFS = '_superduper_artifact_refs'
SETTINGS = '_superduper_settings'
API_KEYS = '_superduper_api_keys'  # the server's API keys, hashed (``superduper.server.keys``)
#: one row per tick of a schedule that a worker claimed (``superduper.backends.logs.TickLog``)
SCHEDULE_TICKS = '_superduper_schedule_ticks'
#: the setting whose value changes with every apply and remove (``MetadataStore.components_version``)
COMPONENTS_VERSION = 'components_version'


# ---- versions of outputs tables -----------------------------------------------------------------------------------
#: the column of an outputs table holding the number of the write that stored the row
OUTPUT_SEQ = '_seq'
#: the key of a flattening listener's outputs table (one row per item of a row's output: a chunk), and its position
CHUNK_ID = '_chunk_id'
POSITION = '_position'


def chunk_id(source_text: str, position: int) -> str:
    """A chunk's key: its source's key text and its position (unique: a position holds no ``#``)."""
    return f'{source_text}#{position}'


class OutputLog(Protocol):
    """Which rows of an outputs table changed since a reader (a vector index in any process) last looked.

    Every write of outputs takes the next number of the table's counter (``advance``) in its own transaction and
    stamps the rows it stores with it (column ``OUTPUT_SEQ``); a removed output leaves a deletion with the number.
    Numbers are given in commit order where the database can lock (the counter stays locked until the writer
    commits), so a reader who sees the counter at ``n`` knows every write numbered up to ``n`` is visible."""

    #: numbers are given in commit order; if not, a reader reads again what its previous look found new
    ordered: bool

    def prepare(self, table: str) -> None:
        """Make the table's counter and the index on ``OUTPUT_SEQ`` (idempotent; before the first write)."""

    def advance(self, conn: Any, table: str) -> int:
        """The number of this write (in the writer's transaction)."""

    def store(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list]) -> None:
        """Upsert outputs (columns in ``keys`` order, the source key first), numbered ``seq``."""

    def remove(self, conn: Any, table: str, seq: int, sources: Sequence[Any]) -> None:
        """Delete the outputs of these sources, leaving deletions numbered ``seq``."""

    def replace_chunks(self, conn: Any, table: str, seq: int, keys: Sequence[str], columns: list[list],
                       sources: Sequence[Any]) -> list:
        """A flattening listener's outputs: delete every chunk of ``sources``, then insert the chunks in ``columns``
        (``CHUNK_ID`` first), numbered ``seq``; the chunks deleted and not written again leave deletions (by chunk
        id). Returns the chunk ids deleted or written."""

    def head(self, table: str) -> tuple[int, int] | None:
        """``(n, floor)``: every write up to ``n`` is visible; deletions up to ``floor`` were forgotten (a reader
        behind it reads the whole table again). ``None``: the table is not versioned."""

    def deleted(self, table: str, since: int, upto: int) -> list[tuple[Any, int]] | None:
        """``(source, seq)`` of the deletions numbered in ``(since, upto]``; ``None`` if some of them were
        forgotten (``since`` is below the floor): read the whole table again."""

    def trim(self, older_than: float) -> None:
        """Forget deletions older than ``older_than`` seconds."""

    def forget(self, table: str) -> None:
        """The table is dropped: drop its counter and deletions."""
