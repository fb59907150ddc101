"""The job log, the failure log and the tick log of every metadata store, written once over its ``Records``
(``superduper.backends.base``): ``_superduper_jobs``, ``_superduper_failures`` and ``_superduper_schedule_ticks``,
tables on SQL, collections on MongoDB."""

from __future__ import annotations

import datetime
import time
import uuid
from typing import Any, Callable

from superduper.backends.base import FAILURES, JOBS, SCHEDULE_TICKS, Below, OneOf, Records, Where
from superduper.backends.feed import chunks
from superduper.base.counts import RecentCounts
from superduper.base.keys import dump_key, load_key

#: the longest error text kept for a failed row
ERROR_LENGTH = 10000


def retry_backoff(delay: float, attempts: int) -> float:
    """Seconds from a row's last failure to its next try: ``delay`` after the first, doubling after each more."""
    return delay * 2 ** (attempts - 1)


class JobLog:
    """Jobs (backfills, training) and their progress, in ``_superduper_jobs``."""

    def __init__(self, records: Records):
        self.records = records

    def start(self, kind: str, component: Any, total: int | None, job_id: str | None = None) -> str | None:
        """A new running job; ``None`` if a job with ``job_id`` exists already (someone else started it)."""
        job_id = job_id or uuid.uuid4().hex
        row = {
            'id': job_id, 'kind': kind, 'type_id': component.type_id, 'identifier': component.identifier,
            'component_uuid': component.ensure_uuid(), 'status': 'running', 'done': 0, 'total': total,
            'failed': 0, 'error': None, 'started_at': datetime.datetime.now(), 'finished_at': None,
        }
        return job_id if self.records.insert(JOBS, row) else None

    def get(self, job_id: str) -> dict | None:
        found = self.records.find(JOBS, {'id': job_id})
        return found[0] if found else None

    def progress(self, job_id: str, done: int, failed: int) -> None:
        self.records.update(JOBS, {'id': job_id}, {'done': done, 'failed': failed})

    def finish(self, job_id: str, error: str | None = None) -> None:
        values = {'status': 'failed' if error else 'success', 'error': error, 'finished_at': datetime.datetime.now()}
        self.records.update(JOBS, {'id': job_id}, values)

    def list(self, component_uuid: str | None = None) -> list[dict]:
        where = {} if component_uuid is None else {'component_uuid': component_uuid}
        return self.records.find(JOBS, where, order_by='started_at')

    def delete(self, component_uuid: str) -> None:
        self.records.delete(JOBS, {'component_uuid': component_uuid})


class FailureLog:
    """Rows a listener's model failed on, with the error and the number of tries, in ``_superduper_failures``."""

    def __init__(self, records: Records):
        self.records = records
        self._counts = RecentCounts()
        self._store_key: Callable[[Any], Any] = _same if records.native_keys else dump_key
        self._load_key: Callable[[Any], Any] = _same if records.native_keys else load_key

    def invalidate(self) -> None:
        """Forget the counts kept: other processes (Dask workers) recorded or cleared failures just now."""
        self._counts.forget()

    def count(self, listener_uuid: str) -> int:
        return self._counts.get(listener_uuid, lambda: self.records.count(FAILURES, {'listener_uuid': listener_uuid}))

    def record(self, listener_uuid: str, failures: list[tuple[Any, str]]) -> None:
        if not failures:
            return
        now = datetime.datetime.now()
        rows = [{'listener_uuid': listener_uuid, 'source': self._store_key(source), 'error': error[:ERROR_LENGTH],
                 'failed_at': now} for source, error in failures]
        self.records.count_up(FAILURES, {'listener_uuid': listener_uuid}, 'source', rows, 'attempts')
        self._counts.forget(listener_uuid)

    def clear(self, listener_uuid: str, sources: list[Any] | None = None) -> None:
        if sources is not None and (not sources or not self.count(listener_uuid)):
            return
        where: dict[str, Any] = {'listener_uuid': listener_uuid}
        if sources is not None:
            where['source'] = OneOf([self._store_key(s) for s in sources])
        self.records.delete(FAILURES, where)
        self._counts.forget(listener_uuid)

    def due(self, listener_uuid: str, max_attempts: int, delay: float) -> list[Any]:
        """Failed rows whose next try is due: fewer than ``max_attempts`` tries, ``retry_backoff`` seconds after
        the last."""
        if not self.count(listener_uuid):
            return []
        now = datetime.datetime.now()
        rows = self.records.find(FAILURES, {'listener_uuid': listener_uuid, 'attempts': Below(max_attempts)})
        return [self._load_key(r['source']) for r in rows
                if (now - r['failed_at']).total_seconds() >= retry_backoff(delay, r['attempts'])]

    def list(self, listener_uuid: str) -> list[dict]:
        where = {'listener_uuid': listener_uuid}
        if self.records.native_keys:  # keys of any type: ordered by their text
            return sorted(self.records.find(FAILURES, where), key=lambda r: str(r['source']))
        rows = self.records.find(FAILURES, where, order_by='source')  # by the stored JSON text
        return [{**r, 'source': load_key(r['source'])} for r in rows]


class TickLog:
    """The ticks of schedules that workers claimed, a row each in ``_superduper_schedule_ticks``: the worker running
    it, the end of its lease (epoch seconds by the worker's clock, renewed while it runs), how many workers started
    it, and how it ended (``status`` 'running', 'success' or 'failed', with the ``error``). The row's key is the
    schedule's uuid and the tick: whoever inserts it first runs the tick; every change after that is a
    compare-and-set (``Records.claim_if``) on the values last read, so two workers never both think they hold it."""

    def __init__(self, records: Records):
        self.records = records

    @staticmethod
    def row_id(schedule_uuid: str, tick: str) -> str:
        return f'{schedule_uuid}@{tick}'

    def claim(self, schedule_uuid: str, identifier: str, tick: str, worker: str, lease: float) -> dict | None:
        """The new row of a tick, held by ``worker``; ``None`` if another worker claimed the tick first."""
        row = {'id': self.row_id(schedule_uuid, tick), 'schedule_uuid': schedule_uuid,
               'identifier': identifier, 'tick': tick, 'status': 'running', 'worker': worker,
               'lease_until': time.time() + lease, 'attempts': 1, 'error': None,
               'started_at': datetime.datetime.now(), 'finished_at': None}
        return row if self.records.insert(SCHEDULE_TICKS, row) else None

    def expired(self, schedule_uuids: list[str]) -> list[dict]:
        """Running ticks of these schedules whose worker let its lease run out (it died, or lost the database)."""
        if not schedule_uuids:
            return []
        where = {'status': 'running', 'lease_until': Below(time.time()), 'schedule_uuid': OneOf(schedule_uuids)}
        return self.records.find(SCHEDULE_TICKS, where, order_by='tick')

    def take_over(self, row: dict, worker: str, lease: float) -> dict | None:
        """Hold an expired tick (as ``expired`` read it) for ``worker``; ``None`` if another worker took it first."""
        values = {'worker': worker, 'lease_until': time.time() + lease, 'attempts': row['attempts'] + 1}
        return {**row, **values} if self.records.claim_if(SCHEDULE_TICKS, self._unchanged(row), values) else None

    def give_up(self, row: dict, error: str) -> bool:
        """End an expired tick as failed (it was tried enough); whether no other worker changed it first."""
        return self.records.claim_if(SCHEDULE_TICKS, self._unchanged(row), self._ended(error))

    def extend(self, row_id: str, worker: str, lease: float) -> bool:
        """Renew ``worker``'s lease; ``False`` if the tick is no longer its (taken over after the lease ran out)."""
        where = {'id': row_id, 'worker': worker, 'status': 'running'}
        return self.records.claim_if(SCHEDULE_TICKS, where, {'lease_until': time.time() + lease})

    def finish(self, row_id: str, worker: str, error: str | None = None) -> bool:
        """End ``worker``'s run of the tick; ``False`` if the tick is no longer its."""
        where = {'id': row_id, 'worker': worker, 'status': 'running'}
        return self.records.claim_if(SCHEDULE_TICKS, where, self._ended(error))

    def get(self, schedule_uuid: str, tick: str) -> dict | None:
        found = self.records.find(SCHEDULE_TICKS, {'id': self.row_id(schedule_uuid, tick)})
        return found[0] if found else None

    def list(self, schedule_uuid: str) -> list[dict]:
        return self.records.find(SCHEDULE_TICKS, {'schedule_uuid': schedule_uuid}, order_by='tick')

    def forget(self, schedule_uuid: str, before: str | None = None) -> None:
        """Delete the schedule's rows (if ``before`` is given: those of ended ticks before it only)."""
        where: dict[str, Any] = {'schedule_uuid': schedule_uuid}
        if before is not None:
            where.update(tick=Below(before), status=OneOf(['success', 'failed']))
        self.records.delete(SCHEDULE_TICKS, where)

    @staticmethod
    def _unchanged(row: dict) -> Where:
        return {'id': row['id'], 'status': 'running', 'worker': row['worker'], 'attempts': row['attempts'],
                'lease_until': Below(time.time())}

    @staticmethod
    def _ended(error: str | None) -> dict[str, Any]:
        return {'status': 'failed' if error else 'success', 'error': error[:ERROR_LENGTH] if error else None,
                'finished_at': datetime.datetime.now()}


def split_where(where: Where) -> list[Where]:
    """``where`` cut into conditions whose ``OneOf`` (a ``Records`` store takes one) holds at most ``CHUNK`` values."""
    many = next((column for column, value in where.items() if isinstance(value, OneOf)), None)
    if many is None:
        return [where]
    return [{**where, many: OneOf(part)} for part in chunks(list(where[many].values))]


def _same(key: Any) -> Any:
    return key
