"""The Dask compute backend: listeners' backfills and recomputations, and training, run as tasks on a Dask cluster.

``compute='dask://tcp://host:8786'`` uses a running scheduler; ``compute='dask://local'`` starts a ``LocalCluster``
(``dask://local?n_workers=2&threads_per_worker=1`` passes it arguments; ``?timeout=5`` bounds the connection).

A task carries the settings the workers connect with and a batch of changed keys the client leased from the change
feed (a backfill's queued rows, the rows a write changed), never rows and never a pickled datalayer. Each worker
process connects once per client session and keeps that datalayer, with every component it loads (the model), for
the session's later tasks; it renews the batch's lease, reads its rows, predicts, and stores the outputs and the rows
the model failed on through the feed's guarded write, exactly as in local mode. A task on a worker that dies runs
again elsewhere (Dask reschedules it) under the same lease; the guarded write stores each output once.

The client waits for its tasks, so ``execute()`` and ``apply()`` return once outputs exist, as in local mode; it
shows progress as tasks finish, keeps the job's record current (``db.jobs()``, ``superduper status``), and replays the
output writes it follows in memory (vector indexes) from what the workers report.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterator, Sequence
from urllib.parse import parse_qsl

from superduper.backends.base import Batch
from superduper.base.exceptions import ConfigError

if TYPE_CHECKING:
    from superduper.base.config import Config
    from superduper.base.protocols import Runtime
    from superduper.components.listener import Listener

CONNECT_TIMEOUT = 10.0  # seconds to reach a scheduler before giving up
LOCAL_CLUSTER_DEFAULTS: dict[str, Any] = {'threads_per_worker': 1, 'processes': True, 'dashboard_address': ':0'}
#: Dask starts workers with MALLOC_TRIM_THRESHOLD_=65536 (give freed memory back at once); model inference frees and
#: allocates large buffers on every call, and that setting doubles its system time: local workers keep glibc's default
LOCAL_WORKER_ENVIRONMENT = {'distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_': None}
TASK_RETRIES = 2  # a task that raises (a lost database connection, say) is tried again; dead workers are Dask's
PARTS_PER_WORKER = 2  # backfill tasks per worker (with at most read_batch_size rows): fewer, larger tasks batch
# the model better (a task sorts its texts by length), more balance the workers; 2 measured best for MiniLM
MAX_SESSIONS = 4  # client sessions whose datalayer a worker keeps


# ---- the client side ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Session:
    """What a task needs to find, or make, its worker's datalayer: the client session and its settings (JSON)."""

    id: str
    settings: str


@dataclass
class Done:
    """What a task reports: rows done, rows failed, and the writes to tables the client follows in memory."""

    rows: int
    failed: int
    written: list = field(default_factory=list)  # [(table, ids, deleted)]


class DaskComputeBackend:
    scheme = 'dask'
    distributed = True

    def __init__(self, uri: str, cfg: 'Config | None' = None, databackend: Any = None):
        self.uri = uri
        self.address, options = parse_address(uri)
        self.timeout = float(options.pop('timeout', CONNECT_TIMEOUT))
        self.base_dir = os.getcwd()  # where the client's relative paths start, whatever the cwd later
        if databackend is not None and not databackend.capabilities.shared:
            raise ConfigError(f'compute={uri!r}: Dask workers cannot share {databackend!r}: '
                              f'{databackend.capabilities.unshared_reason}; use a database other processes can open')
        if cfg is not None:
            worker_settings(cfg, self.base_dir)  # refuse a database the workers cannot share before starting anything
        self.session_id = uuid.uuid4().hex
        self.cluster: Any = None
        self.client: Any = self._connect(options)

    def _connect(self, options: dict[str, Any]) -> Any:
        import dask
        from distributed import Client, LocalCluster  # ImportError: the registry names the extra to install

        if self.address == 'local':
            try:
                with dask.config.set(LOCAL_WORKER_ENVIRONMENT):
                    self.cluster = LocalCluster(**{**LOCAL_CLUSTER_DEFAULTS, **options})
            except (TypeError, ValueError, RuntimeError) as e:  # RuntimeError: a worker refused an option
                raise ConfigError(f'compute={self.uri!r}: cannot start a LocalCluster with {options}: {e}') from None
            return Client(self.cluster, set_as_default=False, timeout=self.timeout)
        if options:
            given = ', '.join(options)
            raise ConfigError(f'compute={self.uri!r}: a scheduler address takes only ?timeout=, got {given}')
        try:
            return Client(self.address, set_as_default=False, timeout=self.timeout)
        except (OSError, ValueError, TypeError) as e:
            raise ConfigError(
                f'cannot reach the Dask scheduler at {self.address!r} (compute={self.uri!r}): {e}'
            ) from None

    def __repr__(self) -> str:
        if self.client is None:
            return f'DaskComputeBackend({self.uri!r}, closed)'
        started = 'LocalCluster' if self.cluster is not None else 'scheduler'
        address = self.client.scheduler.address
        return f'DaskComputeBackend({self.uri!r}, {started} at {address}, {self.workers()} workers)'

    def workers(self) -> int:
        return len(self.client.nthreads())

    def submit(self, fn: Any, *args: Any, name: str = 'task') -> Any:
        """Run ``fn(*args)`` on the cluster; a ``distributed.Future``."""
        key = f'superduper-{name}-{uuid.uuid4().hex[:12]}'
        return self.client.submit(fn, *args, key=key, pure=False, retries=TASK_RETRIES)

    def close(self) -> None:
        if self.client is None:
            return
        with contextlib.suppress(Exception):  # workers that are gone have nothing to drop
            self.client.run(end_session, self.session_id)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()
        self.client = self.cluster = None

    # ---- the work the listeners and training send here ------------------------------------------------------------
    def follow_up(self, db: 'Runtime', batch: 'Batch') -> int:
        """Compute a leased batch (and the chain it causes) on a worker; returns how many rows failed."""
        (done,) = self._finished([self._send(db, batch, f'changes-{len(batch.changes)}')])
        return self._absorb(db, done).failed

    def backfill(self, db: 'Runtime', listener: 'Listener', total: int) -> Iterator[tuple[int, int]]:
        """Outputs for every row queued for the listener: the client leases batches of keys and keeps every worker
        busy with them; yields ``(rows, failed)`` as each batch is done."""
        from distributed import as_completed

        size = part_size(total, self.workers(), db.cfg.read_batch_size, per_worker=PARTS_PER_WORKER)
        sent: list = []

        def send_more(running: int) -> list:
            more = []
            while running + len(more) < self.workers() * PARTS_PER_WORKER:
                batch = db.changes.claim(size, listener=listener.uuid)
                if batch is None:
                    break
                more.append(self._send(db, batch, f'backfill-{listener.identifier}'))
            sent.extend(more)
            return more

        first = send_more(0)
        if not first:
            return
        running = len(first)
        finished = as_completed(first, loop=self.client.loop)
        try:
            for future in finished:
                running -= 1
                done = self._absorb(db, future.result())
                yield done.rows, done.failed
                for more in send_more(running):
                    finished.add(more)
                    running += 1
        finally:
            pending = [f for f in sent if not f.done()]
            if pending:
                self.client.cancel(pending)

    def _send(self, db: 'Runtime', batch: 'Batch', name: str) -> Any:
        db.changes.hand_off(batch)  # the worker renews the lease while it computes
        return self.submit(follow_batch, self.session(db), batch, observed_tables(db), name=name)

    def fit(self, db: 'Runtime', model: Any, X: Any, y: str | None, train: Any) -> tuple[str, int]:
        """Fit ``model`` on a worker on the rows ``train`` selects and apply it there; ``(uuid, rows)``."""
        future = self.submit(fit_model, self.session(db), model, X, y, train.bind(None), name=f'fit-{model.identifier}')
        (result,) = self._finished([future])
        return result

    def session(self, db: 'Runtime') -> Session:
        settings = worker_settings(db.cfg, self.base_dir)
        location = getattr(db.artifact_store, 'location', None)
        if location:  # the store this client uses, wherever it was found (settings or the database's record)
            settings['artifact_store'] = location
        return Session(self.session_id, json.dumps(settings, sort_keys=True))

    def _finished(self, futures: list) -> Iterator[Any]:
        """Results as tasks finish; the first task that fails for good raises, and the rest are cancelled."""
        from distributed import as_completed

        try:
            for future in as_completed(futures, loop=self.client.loop):
                yield future.result()
        finally:
            pending = [f for f in futures if not f.done()]
            if pending:
                self.client.cancel(pending)

    @staticmethod
    def _absorb(db: 'Runtime', done: Done) -> Done:
        for table, ids, deleted in done.written:  # vector indexes this client keeps in memory
            db.listening.run_hooks(table, ids, deleted)
        return done


def parse_address(uri: str) -> tuple[str, dict[str, Any]]:
    """``'dask://local?n_workers=2'`` -> ``('local', {'n_workers': 2})``; ``'dask://tcp://h:8786'`` -> the address."""
    rest = uri.split('://', 1)[1] if '://' in uri else ''
    address, _, query = rest.partition('?')
    if not address:
        raise ConfigError(f"compute={uri!r} names no Dask scheduler: use 'dask://local' or 'dask://tcp://host:8786'")
    return address, {k: _option(v) for k, v in parse_qsl(query, keep_blank_values=True)}


def _option(text: str) -> Any:
    lowered = text.lower()
    if lowered in ('true', 'false'):
        return lowered == 'true'
    if lowered in ('none', ''):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def worker_settings(cfg: 'Config', base_dir: str) -> dict[str, Any]:
    """The settings workers connect with: the client's, with local paths made absolute (from ``base_dir``), computing
    in the worker, with no background thread or progress bar. Refuses databases that other processes cannot open."""
    from superduper.backends.registry import shareable_store_uri, shareable_uri

    def absolute(path: str) -> str:
        return os.path.normpath(os.path.join(base_dir, path))

    settings = {**cfg.model_dump(), 'compute': 'local', 'follow_changes': False, 'progress': False}
    for key in ('data_backend', 'metadata_store'):
        if settings[key]:
            try:
                settings[key] = shareable_uri(settings[key], base_dir)
            except ConfigError as e:
                raise ConfigError(f'compute={cfg.compute!r}: Dask workers cannot share the database: {e}') from None
    if settings['artifact_store']:
        try:
            settings['artifact_store'] = shareable_store_uri(settings['artifact_store'], base_dir)
        except ConfigError as e:
            raise ConfigError(f'compute={cfg.compute!r}: Dask workers cannot share the artifact store: {e}') from None
    settings['home'] = absolute(settings['home'])
    return settings


def part_size(rows: int, workers: int, largest: int, per_worker: int) -> int:
    """Rows per task: enough tasks to give every worker ``per_worker`` of them, none larger than ``largest``."""
    return max(1, min(largest, math.ceil(rows / max(1, workers * per_worker))))


def observed_tables(db: 'Runtime') -> list[str]:
    """The tables this client follows in memory (vector indexes on output tables): workers report writes to them."""
    return sorted(table for table, hooks in db.listening.hooks.items() if hooks)


# ---- the worker side: these run in the worker processes -----------------------------------------------------------
_datalayers: 'OrderedDict[Session, Runtime]' = OrderedDict()
_datalayers_lock = threading.Lock()
_task = threading.local()  # the writes the running task reports back


def worker_datalayer(session: Session) -> 'Runtime':
    """This worker's datalayer for the session, made on its first task and kept (with the models it loads)."""
    from superduper.runtime.factory import superduper

    with _datalayers_lock:
        db = _datalayers.get(session)
        if db is not None:
            _datalayers.move_to_end(session)
            return db
        settings = json.loads(session.settings)
        db = superduper(settings.pop('data_backend'), **settings)
        db.listening.observers.append(_record_write)
        _datalayers[session] = db
        while len(_datalayers) > MAX_SESSIONS:
            _close_quietly(_datalayers.popitem(last=False)[1])
        return db


def end_session(session_id: str) -> None:
    """The client closed: drop its datalayers (run on every worker by ``client.run``)."""
    with _datalayers_lock:
        ending = [s for s in _datalayers if s.id == session_id]
        closing = [_datalayers.pop(s) for s in ending]
    for db in closing:
        _close_quietly(db)


def _close_quietly(db: 'Runtime') -> None:
    with contextlib.suppress(Exception):
        db.close()


def _record_write(table: str, ids: list, deleted: bool) -> None:
    written = getattr(_task, 'written', None)
    if written is not None and table in _task.observed:
        written.append((table, list(ids), deleted))


@contextlib.contextmanager
def _working(session: Session, observed: Sequence[str]) -> Iterator['Runtime']:
    """The session's datalayer, current with the stored listeners, one task at a time per worker process; the writes
    to ``observed`` tables are collected in ``_task.written``."""
    db = worker_datalayer(session)
    _task.written, _task.observed = [], frozenset(observed)
    try:
        yield db
    finally:
        _task.written = None


def follow_batch(session: Session, batch: 'Batch', observed: Sequence[str]) -> Done:
    """Task: compute a batch of changes leased by the client, then the chain of batches its output writes cause."""
    with _working(session, observed) as db:
        db.changes.adopt(batch)
        failed = 0
        current: Batch | None = batch
        while current is not None:
            finished, n = db.listening.process(current)
            failed += n
            if finished.chained is not None:
                finished.chained.writer = current.writer
            current = finished.chained
        return Done(len(batch.changes), failed, _task.written)


def fit_model(session: Session, model: Any, X: Any, y: str | None, train: Any) -> tuple[str, int]:
    """Task: fit ``model`` on the rows ``train`` selects and apply it; ``(uuid of the fitted version, rows)``."""
    with _working(session, ()) as db:
        rows = db.training.fit_and_apply(model, X, y, train)
        return model.uuid, rows
