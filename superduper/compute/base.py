"""One compute protocol for every engine, with what distributed engines share written once.

The runtime asks a compute backend (``db.compute``) only this: ``distributed`` (whether listeners' work and training
are sent elsewhere; local compute runs them in the calling process), ``follow_up(db, batch)`` (a leased batch of
changes, and the chain of batches it causes; returns the rows that failed), ``backfill(db, listener, total)`` (every
row queued for a listener; yields ``(rows, failed)`` as parts finish), ``fit(db, model, X, y, train)`` and
``close()``. That is :class:`ComputeBackend`.

:class:`DistributedCompute` implements it for any engine (Dask, Ray): the client leases batches of changed keys from
the change feed and keeps every worker busy with ``PARTS_PER_WORKER`` of them (a backfill), sends a written batch
(follow-up) or a fit as one task, retries tasks that raise, absorbs what the workers report, and hands workers the
client's settings (:class:`Session`). A task carries the settings and keys, never rows and never a pickled datalayer.
An engine adapter supplies only the engine calls: connect, ``submit``, ``first_done`` (wait until some task has
finished), ``result``, ``cancel``, ``on_each_worker``, ``workers``, ``disconnect``.

The worker side, also engine-free: each worker process opens one datalayer per client session (kept, with the models
it loads, for the session's later tasks; at most ``MAX_SESSIONS``), renews the batch's lease, reads its rows,
predicts, and stores outputs and per-row failures through the feed's guarded write, exactly as in local mode
(:func:`follow_batch`, :func:`fit_model`). A task on a worker that dies runs again under the same lease, and the
guarded, keyed write stores each output once.
"""

from __future__ import annotations

import abc
import contextlib
import json
import math
import os
import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Protocol, Sequence
from urllib.parse import parse_qsl

from superduper.backends.base import Batch
from superduper.base.exceptions import ConfigError

if TYPE_CHECKING:
    from superduper.base.config import Config
    from superduper.base.protocols import Runtime
    from superduper.components.listener import Listener

CONNECT_TIMEOUT = 10.0  # seconds to reach a cluster before giving up
TASK_RETRIES = 2  # a task that raises (a lost database connection, say) is tried again; dead workers are the engine's
PARTS_PER_WORKER = 2  # backfill tasks per worker (with at most read_batch_size rows): fewer, larger tasks batch
# the model better (a task sorts its texts by length), more balance the workers; 2 measured best for MiniLM
MAX_SESSIONS = 4  # client sessions whose datalayer a worker keeps


class ComputeBackend(Protocol):
    """What the runtime calls on ``db.compute`` (local, ``dask://``, ``ray://``)."""

    scheme: str
    uri: str
    #: whether listeners' work and training are sent elsewhere (otherwise the runtime computes in this process)
    distributed: bool

    def follow_up(self, db: 'Runtime', batch: Batch) -> int: ...

    def backfill(self, db: 'Runtime', listener: 'Listener', total: int) -> Iterator[tuple[int, int]]: ...

    def fit(self, db: 'Runtime', model: Any, X: Any, y: str | None, train: Any) -> tuple[str, int]: ...

    def close(self) -> None: ...


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


class DistributedCompute(abc.ABC):
    """The client of a distributed engine: the work the runtime sends, over the engine calls a subclass supplies."""

    scheme: str
    engine: str  # the engine's name in messages: 'Dask', 'Ray'
    distributed = True

    def __init__(self, uri: str, cfg: 'Config | None' = None, databackend: Any = None):
        self.uri = uri
        self.address, options = parse_address(uri, self.engine, self.examples)
        self.timeout = float(options.pop('timeout', CONNECT_TIMEOUT))
        self.base_dir = os.getcwd()  # where the client's relative paths start, whatever the cwd later
        if databackend is not None and not databackend.capabilities.shared:
            raise ConfigError(f'compute={uri!r}: {self.engine} workers cannot share {databackend!r}: '
                              f'{databackend.capabilities.unshared_reason}; use a database other processes can open')
        if cfg is not None:
            worker_settings(cfg, self.base_dir)  # refuse a database the workers cannot share before starting anything
        self.session_id = uuid.uuid4().hex
        self.connected = False
        self.connect(options)
        self.connected = True

    #: how a URI of this engine looks, for the error naming a URI without an address
    examples: str = ''

    # ---- the engine calls ----------------------------------------------------------------------------------------
    @abc.abstractmethod
    def connect(self, options: dict[str, Any]) -> None:
        """Reach (or start) the cluster; ``ConfigError`` naming the URI when that fails."""

    @abc.abstractmethod
    def workers(self) -> int:
        """How many tasks the cluster runs at once."""

    @abc.abstractmethod
    def submit(self, fn: Callable[..., Any], *args: Any, name: str = 'task') -> Any:
        """Run ``fn(*args)`` on a worker (retried ``TASK_RETRIES`` times if it raises); a handle."""

    @abc.abstractmethod
    def first_done(self, handles: list) -> tuple[list, list]:
        """Wait until at least one of ``handles`` is done: ``(done, pending)``."""

    @abc.abstractmethod
    def result(self, handle: Any) -> Any:
        """The value of a finished task (its exception raised)."""

    @abc.abstractmethod
    def cancel(self, handles: list) -> None:
        """Drop tasks not wanted any more."""

    @abc.abstractmethod
    def on_each_worker(self, fn: Callable[..., Any], *args: Any) -> list:
        """``fn(*args)`` in every worker process, now; the results."""

    @abc.abstractmethod
    def disconnect(self) -> None:
        """Leave the cluster (and stop it if this client started it)."""

    # ---- the work the listeners and training send here ------------------------------------------------------------
    def follow_up(self, db: 'Runtime', batch: Batch) -> int:
        """Compute a leased batch (and the chain it causes) on a worker; returns how many rows failed."""
        (done,) = self._finished([self._send(db, batch, f'changes-{len(batch.changes)}')])
        return self._absorb(db, done).failed

    def backfill(self, db: 'Runtime', listener: 'Listener', total: int) -> Iterator[tuple[int, int]]:
        """Outputs for every row queued for the listener: the client leases batches of keys and keeps every worker
        busy with them; yields ``(rows, failed)`` as each batch is done."""
        size = part_size(total, self.workers(), db.cfg.read_batch_size, per_worker=PARTS_PER_WORKER)

        def more(running: int) -> Iterable[Any]:
            while running < self.workers() * PARTS_PER_WORKER:
                batch = db.changes.claim(size, listener=listener.uuid)
                if batch is None:
                    return
                running += 1
                yield self._send(db, batch, f'backfill-{listener.identifier}')

        for done in self._finished(list(more(0)), more):
            self._absorb(db, done)
            yield done.rows, done.failed

    def fit(self, db: 'Runtime', model: Any, X: Any, y: str | None, train: Any) -> tuple[str, int]:
        """Fit ``model`` on a worker on the rows ``train`` selects and apply it there; ``(uuid, rows)``."""
        handle = self.submit(fit_model, self.session(db), model, X, y, train.bind(None), name=f'fit-{model.identifier}')
        (result,) = self._finished([handle])
        return result

    def session(self, db: 'Runtime') -> Session:
        settings = worker_settings(db.cfg, self.base_dir)
        location = getattr(db.artifact_store, 'location', None)
        if location:  # the store this client uses, wherever it was found (settings or the database's record)
            settings['artifact_store'] = location
        return Session(self.session_id, json.dumps(settings, sort_keys=True))

    def close(self) -> None:
        if not self.connected:
            return
        with contextlib.suppress(Exception):  # workers that are gone have nothing to drop
            self.on_each_worker(end_session, self.session_id)
        self.disconnect()
        self.connected = False

    def _send(self, db: 'Runtime', batch: Batch, name: str) -> Any:
        db.changes.hand_off(batch)  # the worker renews the lease while it computes
        return self.submit(follow_batch, self.session(db), batch, observed_tables(db), name=name)

    def _finished(self, handles: list, more: Callable[[int], Iterable[Any]] | None = None) -> Iterator[Any]:
        """Results as tasks finish, with the tasks ``more(running)`` adds after each; the first task that fails for
        good raises, and the rest are cancelled."""
        pending = list(handles)
        try:
            while pending:
                done, pending = self.first_done(pending)
                for handle in done:
                    yield self.result(handle)
                if more is not None:
                    pending += list(more(len(pending)))
        finally:
            if pending:
                self.cancel(pending)

    @staticmethod
    def _absorb(db: 'Runtime', done: Done) -> Done:
        for table, ids, deleted in done.written:  # vector indexes this client keeps in memory
            db.listening.run_hooks(table, ids, deleted)
        return done


def parse_address(uri: str, engine: str = 'compute', examples: str = '') -> tuple[str, dict[str, Any]]:
    """``'dask://local?n_workers=2'`` -> ``('local', {'n_workers': 2})``; ``'dask://tcp://h:8786'`` -> the address."""
    rest = uri.split('://', 1)[1] if '://' in uri else ''
    address, _, query = rest.partition('?')
    if not address:
        raise ConfigError(f'compute={uri!r} names no {engine} cluster: use {examples}')
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

    settings = {**cfg.model_dump(), 'compute': 'local', 'follow_changes': False, 'progress': False}
    for key in ('data_backend', 'metadata_store'):
        if settings[key]:
            try:
                settings[key] = shareable_uri(settings[key], base_dir)
            except ConfigError as e:
                raise ConfigError(f'compute={cfg.compute!r}: the workers cannot share the database: {e}') from None
    if settings['artifact_store']:
        try:
            settings['artifact_store'] = shareable_store_uri(settings['artifact_store'], base_dir)
        except ConfigError as e:
            raise ConfigError(f'compute={cfg.compute!r}: the workers cannot share the artifact store: {e}') from None
    settings['home'] = os.path.normpath(os.path.join(base_dir, settings['home']))
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
    """The client closed: drop its datalayers (run on every worker)."""
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


def follow_batch(session: Session, batch: Batch, observed: Sequence[str]) -> Done:
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
