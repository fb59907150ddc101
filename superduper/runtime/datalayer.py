"""The ``Datalayer``: what ``superduper()`` returns. It holds the data backend, metadata store, artifact store and
compute, and hands each call to the part that does it:

- ``tables`` (``runtime.tables``): each table's field types and key;
- ``queries`` (``runtime.queries``): executing queries, inserts in ``runtime.inserts``;
- ``components`` (``runtime.component_store``): apply, load, show, remove, versions;
- ``artifacts`` (``runtime.artifact_gc``): who holds which artifact, and collecting those nothing holds;
- ``listening`` (``runtime.listening``): keeping listeners' outputs current, jobs and failures;
- ``vector_indexes`` (``runtime.vector_indexes``): loaded indexes and search;
- ``keyword_indexes`` (``runtime.keyword_search``): keyword indexes and search (fused with vectors in
  ``runtime.hybrid``);
- ``training`` (``runtime.training``): fit and validate by query;
- ``schedules`` (``runtime.schedules``): schedules' ticks, run by workers once each;
- ``runtime.reports``: jobs, failures and status as the user reads them.
"""

from __future__ import annotations

from typing import Any, Literal, overload

from superduper.base.config import Config
from superduper.base.exceptions import QueryError
from superduper.base.query import Query
from superduper.components.component import Component
from superduper.runtime import reports
from superduper.runtime.artifact_gc import GRACE_SECONDS, ArtifactCollector
from superduper.runtime.component_store import ComponentStore
from superduper.runtime.jobs import Job
from superduper.runtime.queries import QueryExecutor
from superduper.runtime.tables import TableInfo, Tables
from superduper.runtime.training import Training


class Datalayer:
    def __init__(self, databackend: Any, metadata: Any, artifact_store: Any, compute: Any, cfg: Config):
        self.databackend = databackend
        self.metadata = metadata
        self.artifact_store = artifact_store
        self.compute = compute
        self.cfg = cfg
        self.tables = Tables(databackend, metadata, self.load_record)
        self.artifacts = ArtifactCollector(self)
        self.components = ComponentStore(self, self.tables, self.artifacts)
        self.queries = QueryExecutor(self, self.tables)
        self.training = Training(self)
        self._listening: Any = None
        self._vector_indexes: Any = None
        self._keyword_indexes: Any = None
        self._changes: Any = None
        self._schedules: Any = None

    def __repr__(self) -> str:
        return f'Datalayer({self.databackend!r})'

    # ---- parts made on first use ----------------------------------------------------------------------------
    @property
    def changes(self) -> Any:
        """The change feed of the data backend (``superduper.backends.base.ChangeFeed``)."""
        if self._changes is None:
            self._changes = self.databackend.change_feed(self.cfg, self.metadata)
        return self._changes

    @property
    def listening(self) -> Any:
        """The machinery keeping listeners' outputs current (see ``superduper.runtime.listening``)."""
        if self._listening is None:
            from superduper.runtime.listening import Listening

            self._listening = Listening(self)
        return self._listening

    @property
    def vector_indexes(self) -> Any:
        """Loaded vector indexes (see ``superduper.runtime.vector_indexes``)."""
        if self._vector_indexes is None:
            from superduper.runtime.vector_indexes import VectorIndexes

            self._vector_indexes = VectorIndexes(self)
        return self._vector_indexes

    @property
    def keyword_indexes(self) -> Any:
        """Loaded keyword indexes (see ``superduper.runtime.keyword_search``)."""
        if self._keyword_indexes is None:
            from superduper.runtime.keyword_search import KeywordIndexes

            self._keyword_indexes = KeywordIndexes(self)
        return self._keyword_indexes

    @property
    def schedules(self) -> Any:
        """Schedules' ticks, claimed and run once each (see ``superduper.runtime.schedules``)."""
        if self._schedules is None:
            from superduper.runtime.schedules import Schedules

            self._schedules = Schedules(self)
        return self._schedules

    def close(self) -> None:
        if self._listening is not None:
            self._listening.close()
        self.components.close()  # after the listening: a backfill in the background stops after its batch
        if self._changes is not None:
            self._changes.close()
        if self._vector_indexes is not None:
            self._vector_indexes.close()
        self.compute.close()
        self.databackend.close()
        self.metadata.close()

    def __enter__(self) -> 'Datalayer':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ---- tables and queries ----------------------------------------------------------------------------------
    def __getitem__(self, table: str) -> Query:
        if not isinstance(table, str) or not table:
            raise QueryError(f'a table name is a non-empty string, got {table!r}')
        return Query(table, db=self)

    def execute(self, query: Query) -> Any:
        return self.queries.execute(query)

    def table_info(self, name: str) -> TableInfo:
        return self.tables.get(name)

    def forget_table(self, name: str) -> None:
        self.tables.forget(name)

    # ---- components -------------------------------------------------------------------------------------------
    @overload
    def apply(self, component: Component | Any, wait: Literal[True] = True, **variables: str) -> Component: ...

    @overload
    def apply(self, component: Component | Any, wait: Literal[False],
              **variables: str) -> tuple[list[Job], Component]: ...

    def apply(self, component: Component | Any, wait: bool = True, **variables: str) -> Any:
        """Store a component: a no-op if unchanged since its latest version, else a new version. A ``Template`` is
        built with ``variables`` filled in, and the component it gives is applied. Returns the component once its
        backfills are computed; with ``wait=False``, ``(jobs, component)`` as soon as the metadata is stored and the
        backfills are queued: they are computed in the background (see ``runtime.jobs``)."""
        return self.components.apply(component, wait, **variables)

    add = apply  # the older seed name

    def load(self, type_id: str, identifier: str, version: int | None = None) -> Component:
        return self.components.load(type_id, identifier, version)

    def load_record(self, record: dict) -> Component:
        return self.components.load_record(record)

    def show(self, type_id: str | None = None, identifier: str | None = None, version: int | None = None) -> Any:
        """``show()`` types and identifiers, ``show(type)`` identifiers, ``show(type, id)`` versions,
        ``show(type, id, version)`` the stored metadata; ``show('Job')`` the jobs."""
        return self.components.show(type_id, identifier, version)

    def remove(
        self, type_id: str, identifier: str, version: int | None = None, recursive: bool = False, force: bool = False
    ) -> None:
        """Remove one version, or every version, of a component, with what it set up (a listener's output table,
        failures and jobs) and the artifacts nothing else refers to. Refuses while other components use it,
        unless ``force``; ``recursive`` also removes the components it uses that nothing else uses."""
        self.components.remove(type_id, identifier, version, recursive=recursive, force=force)

    def collect_garbage(self, grace_seconds: float = GRACE_SECONDS) -> int:
        """Delete the artifacts nothing refers to any more, including values of rows deleted or updated by any
        program ``grace_seconds`` or more ago; returns how many were deleted. Removing components and replacing
        saved index states collect their own artifacts at once."""
        return self.artifacts.collect_garbage(grace_seconds)

    def components_generation(self, fresh: bool = False) -> int:
        """A number that grows when components were applied or removed, by this process or another (the metadata is
        asked at most once per poll interval, or now if ``fresh``). Caches of components compare it."""
        return self.components.generation(fresh)

    # ---- models and listeners ------------------------------------------------------------------------------
    def predict(self, identifier: str, *args: Any, **kwargs: Any) -> Any:
        """The output of the latest version of model ``identifier`` for one input."""
        return self.load('Model', identifier).predict(*args, **kwargs)

    def fit(self, model: Any, X: Any, y: str | None = None, select: Query | None = None) -> Any:
        """Train a copy of ``model`` on the rows ``select`` picks and apply it as a new version (see
        ``runtime.training``)."""
        return self.training.fit(model, X, y, select)

    def validate(self, model: Any, select: Query, metrics: Any, X: Any = None, y: str | None = None) -> dict:
        """Score ``model`` on the validation rows of ``select``; the values are stored with the model version."""
        return self.training.validate(model, select, metrics, X, y)

    def run_schedule(self, identifier: str) -> dict:
        """Run schedule ``identifier`` once now, here, through a claimed tick as a worker would; returns the tick's
        row (``status`` 'success' or 'failed', ``error``, ``job``)."""
        return self.schedules.run_now(identifier)

    def job(self, job_id: str) -> Job:
        """A handle on job ``job_id`` (an id from ``db.jobs()``, or printed by ``superduper apply --no-wait``)."""
        job = Job(self, job_id)
        job.status()  # an unknown id fails here
        return job

    def jobs(self, identifier: str | None = None) -> list[dict]:
        """Backfills, training and schedule runs: kind, component, status, progress, error and timings."""
        return reports.jobs(self, identifier)

    def failures(self, listener: str) -> list[dict]:
        """The rows listener ``listener`` failed on, with the error and the number of attempts."""
        return reports.failures(self, listener)

    def status(self) -> list[dict]:
        """Per listener: rows done, pending, failed, lag and what stops it, if anything."""
        return reports.status(self)

    def schedule_status(self) -> list[dict]:
        """Per schedule: cron, action, and the latest tick with how it ended."""
        return reports.schedules(self)

    def retry(self, listener: str) -> int:
        """Recompute the rows a listener failed on (after fixing the model, say); returns how many still fail."""
        return self.listening.retry(listener)
