"""Running schedules (``superduper.components.schedule``): each tick once, however many workers run.

Every round of a worker (``superduper start``) calls ``run_due``. For each applied schedule (the latest version of
each, read again only when components change: ``Datalayer.components_generation``) the due tick is the latest cron
time at or before now, not before the schedule was applied. Ticks missed while no worker ran (or while every worker
was busy) are coalesced into that latest one: a schedule never runs a backlog. A worker claims the due tick by
inserting its row into the tick log (``superduper.backends.logs.TickLog``, keyed by schedule uuid and tick): the
database's primary key lets one insert win, and the others leave that tick alone.

The run holds a lease on its row (``lease_seconds``), renewed from a thread while it runs. A worker that dies
mid-run (SIGKILL, a lost machine) stops renewing; once the lease has run out, another worker takes the tick over
with a compare-and-set on the row and runs it again from the start (an action is safe to repeat: outputs are keyed
by source row, a fit stores a version). A tick is started at most ``max_attempts`` times: after that it ends as
failed, so a tick that kills its workers does not kill them forever. A run that raises ends its tick as failed
with the error, and the worker goes on; the tick is not retried (the next tick runs as usual).

Each run is a job (``kind='schedule'``, id ``schedule-<uuid12>-<tick>``) in the job log: ``db.jobs()`` shows it
with its progress and error. Runs of one schedule by different workers can overlap when a run takes longer than
the period between ticks. ``run_now`` runs one at once, through the same claim (a tick of its own: now, to the
microsecond). Ticks and leases are read from each worker's clock: workers' clocks are assumed in step (NTP).
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from superduper.backends.feed import chunks, write_outputs
from superduper.backends.outputs import SOURCE
from superduper.base.exceptions import ComponentError, NotFound, UnknownField
from superduper.base.query import Compare
from superduper.components.inputs import key_fields
from superduper.components.schedule import croniter_class

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.schedule import Schedule

log = logging.getLogger('superduper')
UTC = datetime.timezone.utc
#: ticks are text that sorts in time order: UTC, ISO 8601, to the microsecond
TICK_FORMAT = '%Y-%m-%dT%H:%M:%S.%fZ'
#: ended tick rows older than this are deleted (a due tick is never older than the latest, so they are not needed;
#: the job log keeps every run)
TICK_HISTORY = datetime.timedelta(hours=1)


def tick_text(moment: datetime.datetime) -> str:
    return moment.astimezone(UTC).strftime(TICK_FORMAT)


def due_tick(cron: str, now: datetime.datetime, since: datetime.datetime | None = None) -> str | None:
    """The latest tick of ``cron`` at or before ``now``, as text; ``None`` if it is before ``since``."""
    latest = croniter_class()(cron, now + datetime.timedelta(microseconds=1)).get_prev(datetime.datetime)
    if since is not None and latest < since:
        return None
    return tick_text(latest)


def job_id(row: dict) -> str:
    """The job of a tick's run, one per tick whoever runs it."""
    return f"schedule-{row['schedule_uuid'][:12]}-{row['tick']}"


@dataclass
class _Named:
    """What the job log needs of a component, for a schedule whose record may not load."""

    identifier: str
    uuid: str
    type_id: str = 'Schedule'

    def ensure_uuid(self) -> str:
        return self.uuid


class _Lease:
    """Renews a tick's lease from a thread while the run goes on; ``lost`` if another worker took the tick over."""

    def __init__(self, ticks: Any, row_id: str, worker: str, seconds: float):
        self.ticks, self.row_id, self.worker, self.seconds = ticks, row_id, worker, seconds
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name='superduper-schedule-lease', daemon=True)

    def __enter__(self) -> '_Lease':
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.ticks.extend(self.row_id, self.worker, self.seconds):
                    self.lost = True
                    return
            except Exception as e:  # the database away for a moment: try again, the lease has time left
                log.warning('could not renew the lease of tick %s: %s', self.row_id, e)


class Schedules:
    def __init__(self, db: 'Runtime'):
        self.db = db
        self.ticks = db.metadata.tick_log()
        self.jobs = db.metadata.job_log()
        self.worker = f'{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}'
        self._records: list[dict] | None = None
        self._generation = -1
        self._seen: dict[str, str] = {}  # schedule uuid -> the latest tick this process found claimed
        self._looked = -float('inf')  # when expired leases were last looked for (time.monotonic)
        self._problems: dict[str, str] = {}  # schedule uuid -> why it cannot run here (logged once)

    # ---- lifecycle of a Schedule -------------------------------------------------------------------------------
    def check(self, schedule: 'Schedule') -> None:
        """Refuse a predicting schedule whose key is not in its select, before anything is stored."""
        if schedule.action != 'predict':
            return
        info = self.db.table_info(schedule.source)
        available = schedule.select.columns or list(info.schema.types)
        schemaless = info.schema.open and not schedule.select.columns  # undeclared fields: found in some row
        missing = [name for name in key_fields(schedule.key) if name not in available
                   and not (schemaless and self.db.listening.in_some_row(schedule.source, name, available))]
        if missing:
            raise UnknownField(f'Schedule {schedule.identifier!r}: key {missing[0]!r} is not a field of the select '
                               f'on {schedule.source!r}; fields: {", ".join(available)}')

    def prepare(self, schedule: 'Schedule') -> None:
        if schedule.action == 'predict':
            self.db.listening.make_outputs_table(schedule)

    def stop(self, schedule: 'Schedule') -> None:
        self._records = None
        self.ticks.forget(schedule.uuid)
        self.jobs.delete(schedule.uuid)
        if schedule.action == 'predict':
            if schedule.outputs in self.db.show('Table'):
                self.db.remove('Table', schedule.outputs, force=True)
            self.db.databackend.output_log().forget(schedule.outputs)

    # ---- which schedules ---------------------------------------------------------------------------------------
    def records(self) -> list[dict]:
        """The latest record of every schedule, read again when components were applied or removed."""
        generation = self.db.components_generation()
        if self._records is None or generation != self._generation:
            latest = {r['identifier']: r for r in self.db.metadata.all() if r['type_id'] == 'Schedule'}
            self._records, self._generation = list(latest.values()), generation
        return self._records

    # ---- running ------------------------------------------------------------------------------------------------
    def run_due(self) -> int:
        """A worker's round: run each schedule's due tick that no worker claimed yet, and take over ticks whose
        worker's lease ran out. Returns how many runs were made here."""
        records = self.records()
        if not records:
            return 0
        ran = 0
        now = datetime.datetime.now(UTC)
        for record in records:
            try:
                tick = self._due(record, now)
            except Exception as e:  # croniter not installed here, say: the other schedules and listeners go on
                self._report(record, e)
                continue
            if tick is None:
                continue
            row = self.ticks.claim(record['uuid'], record['identifier'], tick, self.worker, self._lease_seconds)
            self._seen[record['uuid']] = tick  # claimed here or by another worker: not tried again here
            if row is not None:
                self._run(record, row)
                ran += 1
        return ran + self._take_over_expired(records)

    def run_now(self, identifier: str) -> dict:
        """Run schedule ``identifier`` once now (through a claimed tick, as a worker would), here; returns its
        tick row: ``status`` 'success' or 'failed' with the ``error``, and the ``job``."""
        record = self.db.metadata.get('Schedule', identifier)
        if record is None:
            existing = ', '.join(self.db.metadata.identifiers('Schedule')) or '(none)'
            raise NotFound(f'no Schedule named {identifier!r}; existing: {existing}')
        tick = tick_text(datetime.datetime.now(UTC))
        row = self.ticks.claim(record['uuid'], identifier, tick, self.worker, self._lease_seconds)
        if row is None:  # a tick to the microsecond: only if two callers in one process run it at once
            raise ComponentError(f'Schedule {identifier!r}: tick {tick} is being run already')
        return self._run(record, row)

    @property
    def _lease_seconds(self) -> float:
        return self.db.cfg.lease_seconds

    def _due(self, record: dict, now: datetime.datetime) -> str | None:
        applied = record['created_at']
        applied = applied.astimezone(UTC) if applied.tzinfo is None else applied  # stored in local time
        tick = due_tick(record['record']['cron'], now, since=applied)
        return None if tick is None or self._seen.get(record['uuid']) == tick else tick

    def _report(self, record: dict, error: Exception) -> None:
        """Log why a schedule cannot be run here, once per schedule version and reason."""
        reason = f'{type(error).__name__}: {error}'
        if self._problems.get(record['uuid']) != reason:
            self._problems[record['uuid']] = reason
            log.error('schedule %r cannot run here: %s', record['identifier'], reason)

    def _take_over_expired(self, records: list[dict]) -> int:
        if time.monotonic() - self._looked < min(self._lease_seconds / 4, 5.0):
            return 0
        self._looked = time.monotonic()
        by_uuid = {r['uuid']: r for r in records}
        ran = 0
        for row in self.ticks.expired(list(by_uuid)):
            if row['attempts'] >= self.db.cfg.max_attempts:
                error = (f"gave up after {row['attempts']} attempts: each worker running it stopped before "
                         'finishing (killed, or lost the database)')
                if self.ticks.give_up(row, error):
                    self.jobs.finish(job_id(row), error=error)
                continue
            taken = self.ticks.take_over(row, self.worker, self._lease_seconds)
            if taken is not None:
                log.warning('schedule %r: took over tick %s from worker %s, whose lease ran out',
                            row['identifier'], row['tick'], row['worker'])
                self._run(by_uuid[row['schedule_uuid']], taken)
                ran += 1
        return ran

    def _run(self, record: dict, row: dict) -> dict:
        """Run the schedule for the tick ``row`` holds, recorded as a job; an error fails the tick, never the
        worker. Returns the tick row as it ended."""
        job = job_id(row)
        if self.jobs.start('schedule', _Named(record['identifier'], record['uuid']), None, job_id=job) is None:
            self.jobs.progress(job, 0, 0)  # taken over: the run starts again
        error = None
        with _Lease(self.ticks, row['id'], self.worker, self._lease_seconds) as lease:
            try:
                schedule = self.db.load_record(record)
                done, failed = getattr(self, f'_{schedule.action}')(schedule, job)
                self.jobs.progress(job, done, failed)
            except Exception as e:
                error = f'{type(e).__name__}: {e}'
                log.error('schedule %r failed at tick %s: %s', record['identifier'], row['tick'], error,
                          exc_info=log.isEnabledFor(logging.DEBUG))
        if self.ticks.finish(row['id'], self.worker, error):
            self.jobs.finish(job, error=error)
        else:
            log.warning('schedule %r: tick %s was taken over by another worker (lease lost: %s); its run counts',
                        record['identifier'], row['tick'], lease.lost)
        self.ticks.forget(record['uuid'], before=tick_text(datetime.datetime.now(UTC) - TICK_HISTORY))
        return {**(self.ticks.get(record['uuid'], row['tick']) or row), 'job': job}

    # ---- the actions -------------------------------------------------------------------------------------------
    def _predict(self, schedule: 'Schedule', job: str) -> tuple[int, int]:
        """Outputs for the rows the select picks now, stored as a listener's are; the outputs of rows it no longer
        picks (or the model failed on) are removed. Returns rows done and failed."""
        output_log = self.db.databackend.output_log()
        head = output_log.head(schedule.outputs)
        before = head[0] if head else 0
        pk = self.db.table_info(schedule.source).primary_key
        done = failed = 0
        for batch in self.db.execute(schedule.select).batches():
            rows = [(row[pk[0]] if len(pk) == 1 else tuple(row[k] for k in pk), row) for row in batch]
            results = self.db.listening.predict_rows(schedule, rows)
            with self.db.databackend.begin() as conn:
                write_outputs(output_log, conn, schedule.outputs, results.keys, [r for _, r in results.stored], [])
            done += len(results.stored)
            failed += len(results.failed)
            self.jobs.progress(job, done, failed)
        self._remove_stale(schedule, before)
        return done, failed

    def _remove_stale(self, schedule: 'Schedule', before: int) -> None:
        """Remove the outputs no write of this run replaced (numbered ``before`` or lower)."""
        table = schedule.outputs
        if not before or not self.db.databackend.has_table(table):
            return
        query = self.db[table].filter(Compare('_seq', '<=', before)).select(SOURCE)
        stale = [row[SOURCE] for row in self.db.execute(query)]
        output_log = self.db.databackend.output_log()
        for part in chunks(stale):
            with self.db.databackend.begin() as conn:
                write_outputs(output_log, conn, table, (SOURCE, table), [], list(part))

    def _fit(self, schedule: 'Schedule', job: str) -> tuple[int, int]:
        """A new version of the model, trained on the rows the select picks now."""
        self.db.fit(schedule.fit, X=schedule.X, y=schedule.y, select=schedule.select)
        return 1, 0

    def _recompute(self, schedule: 'Schedule', job: str) -> tuple[int, int]:
        """Every output of the listener's latest version, computed again here."""
        listener = self.db.listening.active(schedule.listener.identifier)
        total, failed = self.db.listening.recompute(listener)
        return total - failed, failed

