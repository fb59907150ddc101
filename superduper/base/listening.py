"""Keeping listeners' outputs current: backfill on apply, then follow inserts, updates and deletes.

In the default local mode the follow-up runs in the writing process before ``execute()`` returns; with Dask
compute (``superduper.backends.dask``) backfills and recomputations run as tasks on the cluster, and the writing
process waits for them. Each listener's work is isolated: a model that fails on some rows records those rows (with
the error) and stores every other output; one broken listener never stops the others, nor the write that triggered
it.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, Iterable

from superduper.base.exceptions import ComponentError, InvalidValue, UnknownField, UnknownTable
from superduper.base.query import Compare
from superduper.components.datatype import SCALARS, infer_type
from superduper.components.model import input_maker, key_fields
from superduper.components.table import Table

if TYPE_CHECKING:
    from superduper.base.datalayer import Datalayer
    from superduper.components.listener import Listener

log = logging.getLogger('superduper')
SOURCE = '_source'
ID_CHUNK = 1000


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error_text(e: BaseException) -> str:
    return f'{type(e).__name__}: {e}'


class Listening:
    def __init__(self, db: 'Datalayer'):
        self.db = db
        self.jobs = db.metadata.job_log()
        self.failures = db.metadata.failure_log()
        self._by_source: dict[str, list[Listener]] | None = None
        self.lock = threading.RLock()  # the change-following thread and the writing thread share models
        self.hooks: dict[str, list] = {}  # table -> [fn(ids, deleted)], e.g. vector indexes on output tables
        self.observers: list = []  # [fn(table, ids, deleted)] told of every write followed here (Dask workers)

    # ---- which listeners follow which table ----------------------------------------------------------------
    def followers(self, table: str) -> list['Listener']:
        if self._by_source is None:
            self._by_source = {}
            for identifier in self.db.metadata.identifiers('Listener'):
                self._add(self.db.load('Listener', identifier))
            if self._by_source:
                self._follow_other_clients()
        return self._by_source.get(table, [])

    def reload(self) -> None:
        """Read the listeners from the metadata again (another process may have applied or removed some)."""
        self._by_source = None
        self.followers('')

    def knows(self, table: str, listener_uuid: str | None) -> bool:
        listeners = self.followers(table)
        return bool(listeners) and (listener_uuid is None or any(x.uuid == listener_uuid for x in listeners))

    def load(self) -> list['Listener']:
        """Every active listener (loaded from the metadata on first use)."""
        self.followers('')
        return [x for listeners in (self._by_source or {}).values() for x in listeners]

    def _follow_other_clients(self) -> None:
        if self.db.cfg.follow_changes:  # with Dask compute the changes are read here and computed on the cluster
            self.db.changes.start(self.db.cfg.poll_interval)

    def _add(self, listener: 'Listener') -> None:
        assert self._by_source is not None
        same = [x for x in self._by_source.get(listener.source, []) if x.identifier != listener.identifier]
        self._by_source[listener.source] = same + [listener]

    def active(self, identifier: str) -> 'Listener':
        for listeners in (self._by_source or {}).values():
            for listener in listeners:
                if listener.identifier == identifier:
                    return listener
        return self.db.load('Listener', identifier)

    # ---- lifecycle -------------------------------------------------------------------------------------------
    def check(self, listener: 'Listener') -> None:
        """Refuse a listener whose table, key or filter do not fit, before anything is stored."""
        upstream_outputs = {up.outputs for up in listener.upstream if hasattr(up, 'outputs')}
        if listener.source in upstream_outputs and not self.db.databackend.has_table(listener.source):
            return  # made when the upstream is applied, which comes first; checked again then
        info = self.db.table_info(listener.source)
        if info.schema.open and not self.db.databackend.has_table(listener.source):
            existing = [t for t in self.db.databackend.table_names() if not t.startswith('_')]
            raise UnknownTable(
                f'Listener {listener.identifier!r}: collection {listener.source!r} does not exist; collections: '
                f'{", ".join(existing) or "(none)"} (insert documents, or apply a Table, first)'
            )
        if len(info.primary_key) != 1:
            raise ComponentError(
                f'Listener {listener.identifier!r}: table {listener.source!r} has a composite primary key; '
                'listeners key outputs by a single-column primary key'
            )
        available = listener.select.columns or list(info.schema.types)
        for name in key_fields(listener.key):
            if name not in available and not (info.schema.open and not listener.select.columns
                                              and self._in_some_row(listener.source, name, available)):
                raise UnknownField(
                    f'Listener {listener.identifier!r}: key {name!r} is not a field of the select on '
                    f'{listener.source!r}; fields: {", ".join(available)}'
                )
        if listener.select.where is not None:
            info.schema.check_fields(listener.source, listener.select.where.fields())

    def _in_some_row(self, table: str, name: str, fields: list[str]) -> bool:
        """On a schemaless table, a field not declared must be in some row. Adds the fields of a row to ``fields``
        for the error message."""
        sample = next(iter(self.db.execute(self.db[table].limit(1))), None)
        if sample is None:
            return False
        fields.extend(k for k in sample if k not in fields)
        return self.db.execute(self.db[table].filter(Compare(name, '!=', None)).limit(1).ids()) != []

    def prepare(self, listener: 'Listener') -> None:
        """Check the listener and create its output table, before its metadata is stored."""
        self.check(listener)
        info = self.db.table_info(listener.source)
        datatype = listener.model.datatype or self._infer_datatype(listener)
        pk_type = info.schema.types[info.primary_key[0]]
        source_type = pk_type.name if pk_type.name in SCALARS else 'str'
        self.db.apply(Table(listener.outputs, fields={SOURCE: source_type, listener.outputs: datatype},
                            primary_id=SOURCE, folds=False))

    def _infer_datatype(self, listener: 'Listener') -> Any:
        make = input_maker(listener.key)
        for row in self.db.execute(listener.select.limit(10)):
            try:
                args, kwargs = make(row.unpack())
                return infer_type(listener.model.predict(*args, **kwargs))
            except Exception:  # such rows are recorded as failures by the backfill
                continue
        return 'object'

    def start(self, listener: 'Listener') -> None:
        """Follow the listener's table from now on, and compute outputs for the rows already there."""
        self.followers(listener.source)  # load the others first
        self._add(listener)
        self.db.changes.follow(listener.source)  # from here on, writes by any client are recorded
        self._follow_other_clients()
        self.backfill(listener)

    def stop(self, listener: 'Listener') -> None:
        if self._by_source is not None:
            listeners = self._by_source.get(listener.source, [])
            self._by_source[listener.source] = [x for x in listeners if x.uuid != listener.uuid]
        self.failures.clear(listener.uuid)
        self.jobs.delete(listener.uuid)
        self.db.changes.unfollow(listener.source)
        if listener.outputs in self.db.show('Table'):
            self.db.remove('Table', listener.outputs, force=True)

    # ---- computing outputs -------------------------------------------------------------------------------------
    def backfill(self, listener: 'Listener') -> dict:
        """Outputs for every row the listener's select matches, in bounded batches, recorded as a job.

        Where the database records changes, the backfill is queued there first (one change row per selected row),
        then streamed here, acknowledging each batch: if this process dies, any consumer finishes the rest."""
        if not self.db.changes.enabled:
            return self._backfill(listener)
        feed = self.db.changes
        feed.enqueue_backfill(listener)
        with feed.lock:  # this process's consumer thread waits: the rows are streamed here, faster
            return self._backfill(listener, acknowledge=lambda rows: feed.acknowledge_backfill(
                listener.uuid, [r[self.db.table_info(listener.source).primary_key[0]] for r in rows]))

    def _backfill(self, listener: 'Listener', acknowledge: Any = None) -> dict:
        from tqdm.auto import tqdm

        total = self.db.execute(listener.select.count())
        job = self.jobs.start('backfill', listener, total)
        done = failed = 0
        try:
            with tqdm(total=total, desc=f'backfill {listener.identifier}', disable=not self.db.cfg.progress,
                      unit='rows', leave=False) as bar:
                for rows, failures in self._backfill_parts(listener, total, acknowledge):
                    done += rows
                    failed += failures
                    bar.update(rows)
                    self.jobs.progress(job, done, failed)
        except Exception as e:
            self.jobs.finish(job, error=_error_text(e))
            raise
        self.jobs.finish(job)
        return {'done': done, 'failed': failed}

    def _backfill_parts(self, listener: 'Listener', total: int, acknowledge: Any) -> Iterable[tuple[int, int]]:
        """(rows, failed) for each part of the backfill as it is done: batches here, or tasks on a cluster (whose
        workers acknowledge their queued change rows themselves)."""
        if self.db.compute.distributed:
            yield from self.db.compute.backfill(self.db, listener, total)
            return
        for batch in self.db.execute(listener.select).batches():
            with self.lock:
                failed = self.process(listener, batch)
            if acknowledge is not None:
                acknowledge(batch)
            yield len(batch), failed

    def process(self, listener: 'Listener', rows: list[dict]) -> int:
        """Predict and store outputs for these source rows; returns how many failed."""
        pk = self.db.table_info(listener.source).primary_key[0]
        make = input_maker(listener.key)
        model = listener.model
        ids: list = []
        outputs: list = []
        failures: list[tuple[Any, str]] = []
        for chunk in _chunks(rows, max(1, model.batch_size)):
            try:
                outputs.extend(model.predict_inputs([make(_plain(r)) for r in chunk]))
                ids.extend(r[pk] for r in chunk)
            except Exception:  # find the rows that fail, keep the others
                for row in chunk:
                    try:
                        outputs.append(model.predict_inputs([make(_plain(row))])[0])
                        ids.append(row[pk])
                    except Exception as e:
                        failures.append((row[pk], _error_text(e)))
        failures += self._store(listener, ids, outputs)
        if failures:
            log.warning('listener %r: model failed on %d rows, e.g. %s', listener.identifier, len(failures),
                        failures[0][1])
            self.failures.record(listener.uuid, failures)
        failed = {f[0] for f in failures}
        self.failures.clear(listener.uuid, [i for i in ids if i not in failed])
        return len(failures)

    def _store(self, listener: 'Listener', ids: list, outputs: list) -> list[tuple[Any, str]]:
        """Upsert outputs (checked against the output type); returns the rows whose output did not fit."""
        if not ids:
            return []
        table = listener.outputs
        schema = self.db.table_info(table).schema
        keys = [SOURCE, table]
        bad: list[tuple[Any, str]] = []
        try:
            columns = schema.encode_columns(table, keys, [ids, outputs], self.db.artifact_store)
        except InvalidValue:
            good_ids, good_outputs = [], []
            for i, out in zip(ids, outputs):
                try:
                    schema.encode_columns(table, keys, [[i], [out]], self.db.artifact_store)
                    good_ids.append(i)
                    good_outputs.append(out)
                except InvalidValue as e:
                    bad.append((i, f'model {listener.model.identifier!r} returned an output that does not fit: {e}'))
            ids = good_ids
            columns = schema.encode_columns(table, keys, [good_ids, good_outputs], self.db.artifact_store)
        if ids:
            with self.db.databackend.begin() as conn, self.db.changes.own_writes(conn, table) as own:
                self.db.databackend.insert(conn, table, keys, columns, upsert_key=SOURCE)
            self.after_write(table, ids)
            self.db.changes.acknowledge(own)
        return bad

    def after_write(self, table: str, ids: list, deleted: bool = False, only: str | None = None) -> None:
        """Bring every listener (and vector index) on ``table`` up to date with these rows (only the listener with
        uuid ``only`` if given)."""
        for observe in self.observers:
            observe(table, ids, deleted)
        if not self.hooks.get(table) and not self.followers(table):
            return
        with self.lock:
            self._after_write(table, ids, deleted, only)

    def _after_write(self, table: str, ids: list, deleted: bool, only: str | None) -> None:
        if only is None:
            self.run_hooks(table, ids, deleted)
        for listener in self.followers(table):
            if only is not None and listener.uuid != only:
                continue
            try:
                if deleted:
                    self._delete_outputs(listener, ids)
                else:
                    self.refresh(listener, ids)
            except Exception as e:  # one broken listener never stops the others
                log.exception('listener %r failed to follow a write to %r', listener.identifier, table)
                self.failures.record(listener.uuid, [(i, _error_text(e)) for i in ids])

    def run_hooks(self, table: str, ids: list, deleted: bool) -> None:
        for hook in self.hooks.get(table, []):
            try:
                hook(ids, deleted)
            except Exception:
                log.exception('a hook on %r failed to follow a write', table)

    def refresh(self, listener: 'Listener', ids: list) -> int:
        """Recompute outputs for these source rows; rows gone or no longer selected lose their outputs. Returns how
        many rows failed."""
        if self.db.compute.distributed:
            return self.db.compute.refresh(self.db, listener, ids)
        pk = self.db.table_info(listener.source).primary_key[0]
        found: list[dict] = []
        for chunk in _chunks(list(ids), ID_CHUNK):
            query = listener.select.filter(Compare(pk, 'in', tuple(chunk)))
            found.extend(self.db.execute(query).tolist())
        gone = set(ids) - {row[pk] for row in found}
        if gone:
            self._delete_outputs(listener, list(gone))
        return self.process(listener, found) if found else 0

    def _delete_outputs(self, listener: 'Listener', ids: list) -> None:
        table = listener.outputs
        with self.db.databackend.begin() as conn, self.db.changes.own_writes(conn, table) as own:
            for chunk in _chunks(list(ids), ID_CHUNK):
                self.db.databackend.delete(conn, table, Compare(SOURCE, 'in', tuple(chunk)))
        self.failures.clear(listener.uuid, list(ids))
        self.after_write(table, ids, deleted=True)
        self.db.changes.acknowledge(own)

    def retry_due(self) -> int:
        """Try again the failed rows whose backoff has passed; returns how many were tried."""
        tried = 0
        cfg = self.db.cfg
        for listener in self.load():
            due = self.failures.due(listener.uuid, cfg.max_attempts, cfg.retry_delay)
            if due:
                with self.lock:
                    self.refresh(listener, due)
                tried += len(due)
        return tried

    def retry(self, identifier: str) -> int:
        """Recompute the rows a listener failed on; returns how many still fail."""
        listener = self.active(identifier)
        failed = [f['source'] for f in self.failures.list(listener.uuid)]
        if failed:
            self.refresh(listener, failed)
        return self.failures.count(listener.uuid)


def _plain(row: Any) -> Any:
    """The row with lazily loaded values loaded (models get values, not handles)."""
    return row.unpack() if any(type(v).__name__ == 'LazyArtifact' for v in row.values()) else row
