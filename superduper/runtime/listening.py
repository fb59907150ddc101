"""Keeping listeners' outputs current: backfill on apply, then follow every change to the tables they read.

All work comes from the database's change feed (``superduper.backends.base.ChangeFeed``) as leased batches of
changed keys: the changes a write through superduper made (computed by the writer, so outputs exist when
``execute()`` returns), a backfill or a retry (queued, then computed by whoever takes it: the applying process, a
worker, a Dask cluster) and writes by other clients (taken by the background consumer or ``superduper start``).
A batch is computed outside any transaction — the rows are read as they are now, the model runs — and its results
are stored by the feed in one short transaction, guarded so that an older change never overwrites the result of a
newer one. A row that is gone or no longer selected loses its output. Each listener's work is isolated: a model
that fails on some rows records those rows with the error; one broken listener never stops the others.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Iterator

import numpy as np

from superduper.backends.base import CHUNK_ID, OUTPUT_SEQ, POSITION, Batch, Change, Finished, LeaseLost, Results
from superduper.backends.base import chunk_id
from superduper.base import faults
from superduper.base.background import BackgroundConsumer, Interrupted, exiting
from superduper.base.exceptions import ComponentError, InvalidValue, UnknownField, UnknownTable
from superduper.base.query import Compare, key_in
from superduper.components.datatype import SCALARS, infer_type
from superduper.components.listener import outputs_table
from superduper.components.inputs import input_maker, key_fields
from superduper.components.table import Table
from superduper.runtime.index_switch import IndexSwitches
from superduper.runtime.tables import encode_condition

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.listener import Listener

log = logging.getLogger('superduper')
SOURCE = '_source'
ID_CHUNK = 1000


def _chunks(items: list, size: int) -> Iterable[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _error_text(e: BaseException) -> str:
    return f'{type(e).__name__}: {e}'


def backfill_job(listener_uuid: str) -> str:
    """The id of a listener's backfill job: one per listener version, whoever queues it."""
    return f'backfill-{listener_uuid}'


class Listening:
    def __init__(self, db: 'Runtime'):
        self.db = db
        self.feed = db.changes
        self.jobs = db.metadata.job_log()
        self.failures = self.feed.failure_log()
        #: the latest record of every listener by the table it reads, as of ``_generation`` (no model loaded)
        self._records: dict[str, list[dict]] | None = None
        self._generation = -1
        self._loaded: dict[str, Listener] = {}  # uuid -> listener, loaded when its table is written or computed
        self._model_locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()  # only for the dict above: never held while waiting on anything
        self._adopted_dims: dict[str, int | None] = {}  # listener uuid -> its adopted vectors' length, checked
        self.hooks: dict[str, list] = {}  # table -> [fn(ids, deleted)], e.g. vector indexes on output tables
        self.observers: list = []  # [fn(table, ids, deleted)] told of every write stored here (Dask workers)
        #: what cannot run now and why (a listener that cannot be loaded, a hook that failed), for ``db.status()``
        self.problems: dict[str, str] = {}
        self.consumer = BackgroundConsumer('superduper-changes', self.work, self.retry_due)
        self._closed = False
        self.feed.attach(lambda: [(table, r['uuid']) for table, rs in self.records().items() for r in rs])

    # ---- which listeners follow which table ----------------------------------------------------------------
    def records(self, fresh: bool = False) -> dict[str, list[dict]]:
        """The latest metadata record of every listener, by the table it reads: read again when components were
        applied or removed by any process (``Datalayer.components_generation``; asked now if ``fresh``)."""
        generation = self.db.components_generation(fresh)
        records = self._records
        if records is None or generation != self._generation:
            latest: dict[str, dict] = {}
            served: list[dict] = []  # an older version that an index under a switch still searches
            keep = IndexSwitches(self.db).served_listeners()
            for record in self.db.metadata.all():  # by version: the latest of each listener comes last
                if record['type_id'] == 'Listener':
                    previous = latest.get(record['identifier'])
                    if previous is not None and previous['uuid'] in keep:
                        served.append(previous)
                    latest[record['identifier']] = record
            records = {}
            for record in [*latest.values(), *served]:
                records.setdefault(record['record']['select']['_query']['table'], []).append(record)
            current = {r['uuid'] for r in [*latest.values(), *served]}
            self._loaded = {u: x for u, x in self._loaded.items() if u in current}
            self._records, self._generation = records, generation
            self._started(list(latest.values()))
        return records

    def _started(self, records: list[dict]) -> None:
        if not records:
            return
        self._start_consumer()
        if not self.feed.durable:
            return
        for record in records:  # an applying process may have died before queueing its backfill
            if record['uuid'] in self._loaded or self.jobs.get(backfill_job(record['uuid'])) is not None:
                continue  # being applied here, or queued
            listener = self._listener(record)
            try:
                if listener is not None:
                    self.ensure_started(listener)
            except Exception as e:  # the applying process, or the next look, finishes it
                log.warning('could not queue the backfill of listener %r: %s', record['identifier'], e)

    def followers(self, table: str) -> list['Listener']:
        """The listeners of ``table``, loaded (only these: writing to a table loads no other model). One that
        cannot be loaded (a missing artifact, a package not installed here) is left out and reported in
        ``problems``; nothing else stops, and its rows are recorded as failures with the cause (``process``)."""
        found = [self._listener(r) for r in self.records().get(table, [])]
        return [x for x in found if x is not None]

    def _listener(self, record: dict) -> 'Listener | None':
        listener = self._loaded.get(record['uuid'])
        if listener is not None:
            return listener
        name = f"Listener {record['identifier']!r}"
        try:
            listener = self.db.load_record(record)
            self.versioned(listener)
        except Exception as e:
            self.problems[name] = f'cannot be loaded: {_error_text(e)}'
            log.error('listener %r cannot be loaded; its rows fail until it can: %s', record['identifier'], e)
            return None
        self.problems.pop(name, None)
        self._loaded[record['uuid']] = listener
        return listener

    def versioned(self, listener: 'Listener') -> None:
        """Give an outputs table made before outputs were versioned its ``_seq`` column."""
        if not self.db.databackend.has_table(listener.outputs):
            return
        types = self.db.table_info(listener.outputs).schema.types
        if OUTPUT_SEQ not in types:
            self._outputs_table(listener, types.get(listener.outputs))

    def synchronous(self, table: str) -> list[str]:
        """The uuids of the listeners of ``table`` whose outputs a write through this process computes before
        ``execute()`` returns: the listener's ``sync`` if set, else the datalayer's ``outputs`` setting."""
        default = self.db.cfg.outputs == 'sync'
        return [r['uuid'] for r in self.records().get(table, [])
                if (r['record'].get('sync') if r['record'].get('sync') is not None else default)]

    def reload(self) -> None:
        """Read the listeners from the metadata again (another process may have applied or removed some)."""
        self._records = None

    def followed_tables(self) -> set[str]:
        return {table for table, records in self.records().items() if records}

    def _start_consumer(self) -> None:
        """Follow other clients' writes in a thread here; not with ``outputs='async'`` (that process loads no
        model: workers compute), and never once the datalayer is closed."""
        if self._closed:
            return
        capture = self.db.databackend.capabilities.change_capture
        followed = self.feed.durable or capture in ('change_stream', 'polling', 'versions')
        if self.db.cfg.follow_changes and self.db.cfg.outputs == 'sync' and followed:
            self.consumer.start(self.db.cfg.poll_interval)

    def close(self) -> None:
        """Stop the background consumer for good (a closed datalayer starts no thread again)."""
        self._closed = True
        self.consumer.stop()

    @property
    def _stopping(self) -> bool:
        """Closed, with the changes queued in the database: a backfill here stops after its batch and leaves the rest
        to workers. Where the queue lives in this process only, it is finished first (else it would be lost)."""
        return self._closed and self.feed.durable

    def active(self, identifier: str) -> 'Listener':
        for records in self.records().values():
            for record in records:
                if record['identifier'] == identifier:
                    listener = self._listener(record)
                    if listener is not None:
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
        if listener.sync is False and not self.db.databackend.capabilities.workers_follow:
            raise ComponentError(
                f'Listener {listener.identifier!r}: sync=False leaves its outputs to workers, which follow the '
                f'changes the database records; {self.db.databackend!r} records none'
            )
        if len(info.primary_key) != 1 and not self.feed.durable:
            raise ComponentError(
                f'Listener {listener.identifier!r}: table {listener.source!r} has a composite primary key '
                f'{info.primary_key}; {self.db.databackend!r} follows such tables only on databases that record '
                'changes (SQLite, PostgreSQL, MySQL/MariaDB)'
            )
        available = listener.select.columns or list(info.schema.types)
        for name in key_fields(listener.key):
            if name == listener.source and listener.source in upstream_outputs:
                continue  # the upstream's output column, added with its first output
            if name not in available and not (info.schema.open and not listener.select.columns
                                              and self.in_some_row(listener.source, name, available)):
                raise UnknownField(
                    f'Listener {listener.identifier!r}: key {name!r} is not a field of the select on '
                    f'{listener.source!r}; fields: {", ".join(available)}'
                )
        if listener.select.where is not None:
            info.schema.check_fields(listener.source, listener.select.where.fields())
        if getattr(listener, 'adopt', None) is not None:
            self._adopted_dims[listener.uuid] = self.adopted_dim(listener)

    def adopted_dim(self, listener: 'Listener') -> int | None:
        """The length of the vectors a listener adopts, every one checked (numeric, one length, the model's declared
        one if any) before anything is stored; ``None`` if no row has one."""
        table, column = listener.adopted_from
        name = f'Listener {listener.identifier!r}: adopt= {table}.{column}'
        if not self.db.databackend.has_table(table):
            raise UnknownTable(f'{name}: table {table!r} does not exist')
        info = self.db.table_info(table)
        fields = list(info.schema.types)
        if column not in fields and not (info.schema.open and self.in_some_row(table, column, fields)):
            raise UnknownField(f'{name}: {column!r} is not a field of {table!r}; fields: {", ".join(fields)}')
        declared = _vector_dim(listener.model.output_type())
        dim = None
        for batch in self.db.execute(self.db[table].select(*info.primary_key, column)).batches():
            for row in batch:
                if row[column] is None:
                    continue
                vector = _as_vector(row[column], name)
                dim = dim or declared or len(vector)
                if len(vector) != dim:
                    whose = f'model {listener.model.identifier!r} declares' if declared else 'other rows have'
                    raise InvalidValue(f'{name}: the row {row[info.primary_key[0]]!r} has a vector of {len(vector)} '
                                       f'values; {whose} {dim}')
        return dim

    def in_some_row(self, table: str, name: str, fields: list[str]) -> bool:
        """On a schemaless table, a field not declared must be in some row. Adds the fields of a row to ``fields``
        for the error message."""
        sample = next(iter(self.db.execute(self.db[table].limit(1))), None)
        if sample is None:
            return False
        fields.extend(k for k in sample if k not in fields)
        return self.db.execute(self.db[table].filter(Compare(name, '!=', None)).limit(1).ids()) != []

    def prepare(self, listener: 'Listener') -> None:
        """Check the listener and create its output table, before its metadata is stored. The outputs' type is
        the model's own (``Model.output_type``), else that of the first output of a few rows; with neither (an
        empty table, rows the model fails on) the output column is added when the first output is stored. A
        flattening listener's outputs are the items of the model's lists: the model's type is an item's."""
        self.check(listener)
        dim = self._adopted_dims.pop(listener.uuid, None)  # adopted vectors' length, found by ``check`` just now
        datatype = listener.model.output_type() or (f'vector[float32:{dim}]' if dim else None)
        datatype = datatype or self._infer_datatype(listener)
        self._outputs_table(listener, datatype)

    def make_outputs_table(self, target: Any) -> None:
        """The outputs table of anything shaped like a listener (``model``, ``key``, ``select``, ``source``,
        ``outputs``: a predicting ``Schedule``), typed by the model's ``output_type``; without one, by the first
        output stored (the model is not run to find out: a schedule's model runs only at its ticks)."""
        self._outputs_table(target, target.model.output_type())

    def predict_rows(self, target: Any, rows: list[tuple[Any, Any]]) -> Results:
        """The encoded outputs of ``(key, row)`` pairs for anything shaped like a listener, as a batch of changes
        would give them (rows the model fails on, or whose output does not fit, in ``failed``)."""
        results = _results(target)
        pairs = [(Change(target.source, key, target.uuid, str(key)), row) for key, row in rows]
        self._encode(target, self._predict(target, pairs, results), results)
        return results

    def recompute(self, listener: 'Listener') -> tuple[int, int]:
        """Compute every output of a listener again, here: returns how many rows were queued and how many failed."""
        info = self.db.table_info(listener.source)
        where = listener.select.where
        total = self.feed.enqueue(listener.source, listener.uuid,
                                  where=None if where is None else encode_condition(where, info))
        return total, self.drain(listener.uuid)

    def _outputs_table(self, listener: 'Listener', datatype: Any) -> None:
        info = self.db.table_info(listener.source)
        if len(info.primary_key) == 1:
            pk_type = info.schema.types[info.primary_key[0]]
            source_type = pk_type.name if pk_type.name in SCALARS else 'str'
        else:
            source_type = 'str'  # a composite key: its text rendering (``key_text``)
        fields = {SOURCE: source_type, OUTPUT_SEQ: 'int'}
        key = SOURCE
        if getattr(listener, 'flatten', False):  # one row per item: keyed by the chunk
            fields = {CHUNK_ID: 'str', **fields, POSITION: 'int'}
            key = CHUNK_ID
        if datatype is not None:
            fields[listener.outputs] = datatype
        self.db.apply(Table(listener.outputs, fields=fields, primary_id=key, folds=False))
        self.db.forget_table(listener.outputs)
        self.db.databackend.output_log().prepare(listener.outputs)

    def _infer_datatype(self, listener: 'Listener') -> Any:
        """The type of the first output of up to 10 rows; ``None`` if there are none (failures never decide)."""
        make = input_maker(listener.key)
        for row in self.db.execute(listener.select.limit(10)):
            try:
                args, kwargs = make(row.unpack())
                output = listener.model.predict(*args, **kwargs)
                if getattr(listener, 'flatten', False):
                    if not isinstance(output, (list, tuple)) or not output:
                        continue
                    output = output[0]
                return infer_type(output)
            except Exception:  # such rows are recorded as failures by the backfill
                continue
        return None

    def _typed_schema(self, listener: 'Listener', first_output: Any) -> Any:
        """The outputs table's schema, with the output column added (typed by ``first_output``) if it has none."""
        table = listener.outputs
        schema = self.db.table_info(table).schema
        if table in schema.types:
            return schema
        self.db.forget_table(table)  # another process may have typed it already
        schema = self.db.table_info(table).schema
        if table not in schema.types:
            try:
                self._outputs_table(listener, infer_type(first_output))
            except Exception:  # typed by another process at the same moment: use its type
                self.db.forget_table(table)
                if table not in self.db.table_info(table).schema.types:
                    raise
        return self.db.table_info(table).schema

    def start(self, listener: 'Listener') -> None:
        """Follow the listener's table from now on, and compute outputs for the rows already there."""
        self.queue(listener)
        self.backfill(listener, backfill_job(listener.uuid))

    def ensure_started(self, listener: 'Listener') -> str | None:
        """Follow the listener's table and queue its backfill, unless that was done: the step an applying process
        can die in the middle of (after the listener's metadata was stored). Safe to repeat: triggers are
        replaced, and a backfill queued twice computes some rows twice, with the same result. Returns the job id
        if it queued the backfill here."""
        job_id = backfill_job(listener.uuid)
        if self.jobs.get(job_id) is not None:
            return None
        info = self.db.table_info(listener.source)
        self.feed.follow(listener.source, info.primary_key)  # from here on, writes by any client are recorded
        where = listener.select.where
        if where is not None:
            where = encode_condition(where, info)
        total = self.feed.enqueue(listener.source, listener.uuid, where=where)
        if self.jobs.start('backfill', listener, total, job_id=job_id) != job_id:
            return None
        return job_id

    def queue(self, listener: 'Listener') -> list[str]:
        """Follow the listener and queue its backfill, as ``start`` does before computing it (which a non-blocking
        apply leaves to the background); returns the backfill's job id while it is running."""
        self._loaded[listener.uuid] = listener
        self.reload()
        self._start_consumer()
        self.ensure_started(listener)
        job = self.jobs.get(backfill_job(listener.uuid))
        return [job['id']] if job is not None and job['status'] == 'running' else []

    def resume(self, listener: 'Listener') -> None:
        """Applied again: finish what an applying process that died left undone (its backfill queued or not)."""
        job = self.ensure_started(listener)
        if job is not None or self.feed.pending_for(listener.uuid):
            self.backfill(listener, job or backfill_job(listener.uuid))

    def stop(self, listener: 'Listener') -> None:
        self._loaded.pop(listener.uuid, None)
        self.reload()
        self.failures.clear(listener.uuid)
        self.jobs.delete(listener.uuid)
        still_followed = [r for r in self.db.metadata.all() if r['type_id'] == 'Listener'
                          and r['record']['select']['_query']['table'] == listener.source]
        if not still_followed and self.db.databackend.has_table(listener.source):
            self.feed.unfollow(listener.source)
        if listener.outputs in self.db.show('Table'):
            self.db.remove('Table', listener.outputs, force=True)
        self.db.databackend.output_log().forget(listener.outputs)

    # ---- backfills ----------------------------------------------------------------------------------------------
    def backfill(self, listener: 'Listener', job: str) -> dict:
        """Compute the listener's queued backfill here (or on the cluster) until none is left; other consumers may
        take part of it. Recorded as the job ``job``."""
        from tqdm.auto import tqdm

        total = self.feed.pending_for(listener.uuid) or 0
        done = failed = 0
        try:
            with tqdm(total=total, desc=f'backfill {listener.identifier}', disable=not self.db.cfg.progress,
                      unit='rows', leave=False) as bar:
                while not self._stopping:
                    for rows, failures in self._backfill_parts(listener, total):
                        done += rows
                        failed += failures
                        bar.update(rows)
                        self.jobs.progress(job, done, failed)
                    if not self.feed.pending_for(listener.uuid):
                        break
                    # other consumers hold the rest: wait for them (or for their leases to run out, then take it)
                    time.sleep(min(self.db.cfg.poll_interval, 0.1))
        except Interrupted:  # the interpreter is exiting: the job goes on elsewhere
            raise
        except Exception as e:
            self.jobs.finish(job, error=_error_text(e))
            raise
        self.finish_job_if_done(listener.uuid)
        return {'done': done, 'failed': failed}

    def _backfill_parts(self, listener: 'Listener', total: int) -> Iterable[tuple[int, int]]:
        if self.db.compute.distributed:
            yield from self.db.compute.backfill(self.db, listener, total)
            return
        for batch in self._claimed(listener.uuid):
            yield len(batch.changes), self.follow_up(batch)

    def _claimed(self, listener_uuid: str) -> Iterator[Batch]:
        """The changes queued for one listener, claimed a batch at a time until none is left here."""
        while not self._stopping and (batch := self.feed.claim(self.db.cfg.read_batch_size,
                                                               listener=listener_uuid)) is not None:
            faults.point('after_claim')
            yield batch

    def finish_job_if_done(self, listener_uuid: str) -> None:
        """Mark the listener's backfill job done once nothing of it is queued (whoever computed the last rows; a
        job whose applying process failed is done too once the workers have finished it)."""
        if self.feed.pending_for(listener_uuid) == 0:
            job = backfill_job(listener_uuid)
            found = self.jobs.get(job)
            if found is not None and found['status'] in ('running', 'failed'):
                self.jobs.progress(job, found['total'] or 0, self.failures.count(listener_uuid))
                self.jobs.finish(job)

    # ---- computing outputs -------------------------------------------------------------------------------------
    def written(self, handle: Any) -> None:
        """After a write through superduper committed: compute the changes it made, here (or on the cluster)."""
        batch = self.feed.written(handle)
        if batch is not None:
            batch.writer = True
            self.follow_up(batch)

    def work(self, limit: int = 1000) -> int:
        """Take and compute up to ``limit`` pending changes (of any client); returns how many were taken."""
        batch = self.feed.claim(limit)
        if batch is None:
            return 0
        faults.point('after_claim')
        self.follow_up(batch)
        for listener in {c.listener for c in batch.changes if c.listener is not None}:
            self.finish_job_if_done(listener)
        return len(batch.changes)

    def drain(self, listener_uuid: str) -> int:
        """Compute every change queued for one listener (a retry); returns how many rows failed."""
        return sum(self.follow_up(batch) for batch in self._claimed(listener_uuid))

    def follow_up(self, batch: Batch) -> int:
        """Compute a batch, then the batches its output writes cause (listeners on outputs); returns how many rows
        failed."""
        if self.db.compute.distributed:
            return self.db.compute.follow_up(self.db, batch)
        failed = 0
        while batch is not None:
            finished, n = self.process(batch)
            failed += n
            if finished.chained is not None:
                finished.chained.writer = batch.writer
            batch = finished.chained
        return failed

    def process(self, batch: Batch) -> tuple[Finished, int]:
        """Compute one batch here and store its results; returns what was stored and how many rows failed."""
        groups = batch.groups()
        # the listeners as of now, after the changes committed: one applied meanwhile by another process is
        # either computed here or its backfill read these rows
        if batch.reload:
            self.reload()
        self.records(fresh=True)
        results: list[Results] = []
        handed: list[tuple[str, str]] = []
        try:
            for (table, only), changes in groups.items():
                synchronous = set(self.synchronous(table)) if batch.writer else None
                for record in self.records().get(table, []):
                    if only is not None and record['uuid'] != only:
                        continue
                    if synchronous is not None and record['uuid'] not in synchronous:
                        handed.append((table, record['uuid']))
                        continue
                    listener = self._listener(record)
                    results.append(self.compute(listener, changes) if listener is not None
                                   else self._unloadable(record, changes))
            faults.point('before_finish')
            finished = self.feed.finish(batch, results, self.followed_tables(), handed)
            faults.point('after_finish')
        except LeaseLost as e:
            log.warning('%s; another consumer computes those changes', e)
            return Finished(stored={}, gone={}), 0
        except BaseException:
            try:
                self.feed.release(batch)
            except Exception as e:  # the lease runs out instead
                log.warning('could not give back a batch of changes: %s', e)
            raise
        self._after(results, finished)
        return finished, sum(len(r.failed) for r in results)

    def _unloadable(self, record: dict, changes: list[Change]) -> Results:
        """A listener that cannot be loaded fails on its rows, with the cause: retried later like any failure."""
        outputs = outputs_table(f"{record['identifier']}__{record['uuid'][:8]}")
        error = f"listener {record['identifier']!r} " + self.problems.get(f"Listener {record['identifier']!r}",
                                                                          'cannot be loaded')
        flatten = bool(record['record'].get('flatten'))
        keys = (CHUNK_ID, SOURCE, POSITION, outputs) if flatten else (SOURCE, outputs)
        return Results(record['uuid'], outputs, keys, failed=[(c, error) for c in changes], flatten=flatten)

    def compute(self, listener: 'Listener', changes: list[Change]) -> Results:
        """The listener's results for these changed keys: the rows are read as they are now."""
        info = self.db.table_info(listener.source)
        if not info.schema.open and not set(key_fields(listener.key)) <= set(info.schema.types):
            self.db.forget_table(listener.source)  # an upstream's output column added since (by another process)
            info = self.db.table_info(listener.source)
        pk = info.primary_key
        by_key = {c.key: c for c in changes}
        found: dict[Any, dict] = {}
        for chunk in _chunks(list(by_key), ID_CHUNK):
            for row in self.db.execute(listener.select.filter(key_in(pk, chunk))):
                found[row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk)] = row
        results = _results(listener)
        results.gone = [c for k, c in by_key.items() if k not in found]
        done: list[tuple[Change, Any]] = []
        pairs = [(by_key[k], row) for k, row in found.items()]
        try:
            if getattr(listener, 'adopt', None) is not None:
                done, pairs = self._adopted(listener, pairs, results)
            done += self._predict(listener, pairs, results)
        except Interrupted:
            raise
        except Exception as e:  # one broken listener never stops the others
            log.exception('listener %r failed on a batch of %d rows', listener.identifier, len(found))
            results.failed.extend((by_key[k], _error_text(e)) for k in found)
        self._encode(listener, done, results)
        if results.failed:
            log.warning('listener %r: model failed on %d rows, e.g. %s', listener.identifier, len(results.failed),
                        results.failed[0][1])
        return results

    def _predict(self, listener: 'Listener', rows: list[tuple[Change, Any]], results: Results) -> list:
        """(change, output) for each row the model gives an output for; the rows it fails on go to ``results``."""
        make = input_maker(listener.key)
        model = listener.model
        done: list[tuple[Change, Any]] = []
        with self._model_lock(listener.uuid):  # models are not all thread-safe; nothing here waits on the database
            for chunk in _chunks(rows, max(1, model.batch_size)):
                if exiting.is_set():
                    raise Interrupted('the interpreter is exiting')
                try:
                    outputs = model.predict_inputs([make(_plain(row)) for _, row in chunk])
                    done.extend((change, out) for (change, _), out in zip(chunk, outputs))
                except Exception:  # find the rows that fail, keep the others
                    for change, row in chunk:
                        try:
                            done.append((change, model.predict_inputs([make(_plain(row))])[0]))
                        except Exception as e:
                            results.failed.append((change, _error_text(e)))
        return done

    def _adopted(self, listener: 'Listener', pairs: list[tuple[Change, Any]],
                 results: Results) -> tuple[list[tuple[Change, Any]], list[tuple[Change, Any]]]:
        """(change, vector) for the rows with a vector to adopt, and the other rows (for the model)."""
        table, column = listener.adopted_from
        pk = self.db.table_info(table).primary_key
        values: dict[Any, Any] = {}
        for chunk in _chunks([c.key for c, _ in pairs], ID_CHUNK):
            for row in self.db.execute(self.db[table].select(*pk, column).filter(key_in(pk, chunk))):
                values[row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk)] = row[column]
        adopted, rest = [], []
        for change, row in pairs:
            value = values.get(change.key)
            if value is None:
                rest.append((change, row))
                continue
            try:
                adopted.append((change, _as_vector(value, f'Listener {listener.identifier!r}: adopt= {table}.{column}')))
            except InvalidValue as e:
                results.failed.append((change, str(e)))
        return adopted, rest

    def _model_lock(self, listener_uuid: str) -> threading.Lock:
        with self._locks_lock:
            return self._model_locks.setdefault(listener_uuid, threading.Lock())

    def _encode(self, listener: 'Listener', done: list[tuple[Change, Any]], results: Results) -> None:
        """Encode outputs for the outputs table; those that do not fit its type are failures."""
        if results.flatten:
            self._encode_chunks(listener, done, results)
            return
        if not done:
            return
        table = listener.outputs
        schema = self._typed_schema(listener, done[0][1])
        sources = [c.output_key for c, _ in done]
        try:
            with self.db.artifacts.holding(table) as artifacts:
                columns = schema.encode_columns(table, list(results.keys), [sources, [o for _, o in done]], artifacts)
            results.stored.extend((c, row) for (c, _), row in zip(done, zip(*columns)))
            return
        except InvalidValue:
            pass
        for (change, out), source in zip(done, sources):
            try:
                with self.db.artifacts.holding(table) as artifacts:
                    columns = schema.encode_columns(table, list(results.keys), [[source], [out]], artifacts)
                results.stored.append((change, (columns[0][0], columns[1][0])))
            except InvalidValue as e:
                results.failed.append((change, f'model {listener.model.identifier!r} returned an output that does '
                                               f'not fit: {e}'))

    def _encode_chunks(self, listener: 'Listener', done: list[tuple[Change, Any]], results: Results) -> None:
        """A flattening listener's outputs: each row's list becomes its chunks, encoded together; a row whose
        output is not a list, or whose items do not fit the table's type, fails (its old chunks go)."""
        lists = []
        for change, out in done:
            if isinstance(out, (list, tuple)):
                lists.append((change, list(out)))
            else:
                results.failed.append((change, f'listener {listener.identifier!r} has flatten=True: model '
                                               f'{listener.model.identifier!r} must return a list for each row, '
                                               f'got {type(out).__name__}'))
        first = next((items[0] for _, items in lists if items), None)
        if first is None:  # rows with no chunks: their old ones go
            results.stored.extend((change, ()) for change, _ in lists)
            return
        schema = self._typed_schema(listener, first)
        table = listener.outputs
        for part in _chunks(lists, max(1, ID_CHUNK)):
            try:
                results.stored.extend(self._chunk_rows(schema, table, results, part))
                continue
            except InvalidValue:
                pass
            for change, items in part:
                try:
                    results.stored.extend(self._chunk_rows(schema, table, results, [(change, items)]))
                except InvalidValue as e:
                    results.failed.append((change, f'model {listener.model.identifier!r} returned an item that '
                                                   f'does not fit: {e}'))

    def _chunk_rows(self, schema: Any, table: str, results: Results,
                    lists: list[tuple[Change, list]]) -> list[tuple[Change, tuple]]:
        """``(change, rows)`` for each row's items, encoded in one go (``InvalidValue`` if any does not fit)."""
        plain = [(c, i, item) for c, items in lists for i, item in enumerate(items)]
        columns = [[chunk_id(str(c.output_key), i) for c, i, _ in plain], [c.output_key for c, _, _ in plain],
                   [i for _, i, _ in plain], [item for _, _, item in plain]]
        with self.db.artifacts.holding(table) as artifacts:
            encoded = schema.encode_columns(table, list(results.keys), columns, artifacts) if plain else columns
        rows = list(zip(*encoded))
        by_change: dict[int, list] = {id(c): [] for c, _ in lists}
        for (change, _, _), row in zip(plain, rows):
            by_change[id(change)].append(row)
        return [(change, tuple(by_change[id(change)])) for change, _ in lists]

    def _after(self, results: list[Results], finished: Finished) -> None:
        """Tell the hooks (vector indexes) and observers (Dask) of the output writes that were stored."""
        for res in results:
            stored = [c.output_key for c in finished.stored.get(res.listener, [])]
            gone = [c.output_key for c in finished.gone.get(res.listener, [])]
            for ids, deleted in ((stored, False), (gone, True)):
                if ids:
                    for observe in self.observers:
                        observe(res.outputs_table, ids, deleted)
                    self.run_hooks(res.outputs_table, ids, deleted)

    def run_hooks(self, table: str, ids: list, deleted: bool) -> None:
        for hook in list(self.hooks.get(table, [])):
            name = getattr(hook, 'problem_name', f'a hook on {table!r}')
            try:
                hook(ids, deleted)
                self.problems.pop(name, None)
            except Exception as e:
                log.exception('%s failed to follow a write to %r', name, table)
                self.problems[name] = f'{name} failed to follow a write to {table!r}: {_error_text(e)}'

    def refresh(self, listener: 'Listener', ids: list) -> int:
        """Recompute outputs for these source rows now; rows gone or no longer selected lose their outputs. Returns
        how many rows failed."""
        self.feed.enqueue(listener.source, listener.uuid, keys=list(dict.fromkeys(ids)))
        return self.drain(listener.uuid)

    def retry_due(self) -> int:
        """Try again the failed rows whose backoff has passed; returns how many were tried."""
        tried = 0
        cfg = self.db.cfg
        for table, records in self.records().items():
            for record in records:
                due = self.failures.take_due(record['uuid'], cfg.max_attempts, cfg.retry_delay)
                if due:
                    self.feed.enqueue(table, record['uuid'], refs=due)
                    self.drain(record['uuid'])
                    tried += len(due)
        return tried

    def retry(self, identifier: str) -> int:
        """Recompute the rows a listener failed on; returns how many still fail."""
        listener = self.active(identifier)
        failed = self.failures.texts(listener.uuid)
        if failed:
            self.feed.enqueue(listener.source, listener.uuid, refs=failed)
            self.drain(listener.uuid)
        return self.failures.count(listener.uuid)


def _results(target: Any) -> Results:
    """The empty results of a listener (or anything shaped like one), with the outputs table's columns."""
    if getattr(target, 'flatten', False):
        return Results(target.uuid, target.outputs, (CHUNK_ID, SOURCE, POSITION, target.outputs), flatten=True)
    return Results(target.uuid, target.outputs, (SOURCE, target.outputs))


def _as_vector(value: Any, name: str) -> np.ndarray:
    try:
        vector = np.asarray(value, dtype=np.float32)
    except (TypeError, ValueError):
        raise InvalidValue(f'{name} holds {type(value).__name__} values, not vectors of numbers') from None
    if vector.ndim != 1 or not len(vector):
        raise InvalidValue(f'{name} holds values of shape {vector.shape}, not vectors')
    return vector


def _vector_dim(datatype: Any) -> int | None:
    """The length a model's declared output type gives its vectors (``None``: not a vector, or not declared)."""
    if isinstance(datatype, str):
        match = re.fullmatch(r'vector\[\w+:(\d+)\]', datatype)
        return int(match.group(1)) if match else None
    return getattr(datatype, 'dim', None)


def _plain(row: Any) -> Any:
    """The row with lazily loaded values loaded (models get values, not handles)."""
    return row.unpack() if any(type(v).__name__ == 'LazyArtifact' for v in row.values()) else row
