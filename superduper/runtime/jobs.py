"""Jobs as the user holds them, and the background half of ``db.apply(..., wait=False)``.

A ``Job`` is a handle on a row of the jobs table (``backends.logs.JobLog``): its status is read from the database,
so it is current whichever process computes the job (this one, a worker, a Dask cluster). A non-blocking apply
stores the metadata and queues each listener's backfill durably before it returns; the rest of what applying does
(computing the backfills, building indexes over them) runs on one background thread of this process
(``BackgroundApplies``), in the order a blocking apply would have run it. Whatever it leaves undone (the process
exits or dies, the datalayer is closed) stays queued: workers, or this listener applied again, finish it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import time
from typing import TYPE_CHECKING, Any, Callable

from superduper.base.background import Interrupted, SerialWorker
from superduper.base.exceptions import JobFailed, JobTimeout, NotFound

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.components.component import Component

log = logging.getLogger('superduper')
#: the longest pause between two reads of a job's row while waiting for it
POLL = 0.2


def current(db: 'Runtime', job: dict) -> dict:
    """A job's row with the progress of a running backfill filled in: what is no longer queued, whoever computed it."""
    if job['kind'] == 'backfill' and job['status'] == 'running' and job['total'] is not None:
        pending = db.changes.pending_for(job['component_uuid'])
        if pending is not None:
            job['done'] = max(job['done'] or 0, job['total'] - pending)
    return job


def describe(job: dict) -> str:
    return f"{job['kind']} of {job['type_id']} {job['identifier']!r} (job {job['id']!r})"


class Job:
    """A job (a backfill, a training run, a schedule's run) by its id: ``status()`` reads it, ``wait()`` waits for it
    to end. ``db.apply(..., wait=False)`` returns these; ``db.job(id)`` gives one by the id ``db.jobs()`` lists."""

    def __init__(self, db: 'Runtime', job_id: str, applying: concurrent.futures.Future | None = None):
        self.db = db
        self.id = job_id
        #: the background apply of this process that computes the job, and runs what follows it (an index built)
        self._applying = applying

    def __repr__(self) -> str:
        try:
            job = self.status()
        except Exception:  # a repr never raises: the database may be gone
            return f'<Job {self.id}>'
        progress = f", {job['done'] or 0}/{job['total']} rows" if job['total'] is not None else ''
        failed = f", {job['failed']} failed" if job['failed'] else ''
        what = f"{job['kind']} of {job['type_id']} {job['identifier']!r}"
        return f"<Job {self.id}: {what}, {job['status']}{progress}{failed}>"

    def status(self) -> dict:
        """The job's row as of now: ``status`` ('running', 'success' or 'failed'), ``done``, ``total`` and
        ``failed`` rows, ``error``, ``started_at`` and ``finished_at``."""
        job = self.db.listening.jobs.get(self.id)
        if job is None:
            raise NotFound(f'no job {self.id!r} (its component was removed, or the id is wrong)')
        return current(self.db, job)

    def done(self) -> bool:
        return self.status()['status'] != 'running'

    def wait(self, timeout: float | None = None) -> dict:
        """Wait until the job has ended (and, in the process that applied it, what follows it: an index built over
        a backfill's outputs); returns its row. Raises ``JobFailed`` if it failed or the model failed on rows (they
        are in ``db.failures(listener)``), ``JobTimeout`` after ``timeout`` seconds (the job goes on)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        if self._applying is not None:
            concurrent.futures.wait([self._applying], timeout=timeout)
            if not self._applying.done():
                raise self._timeout(timeout)
        while (job := self.status())['status'] == 'running':
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._timeout(timeout)
            time.sleep(min(POLL, self.db.cfg.poll_interval, *(() if left is None else (left,))))
        if job['status'] == 'failed':
            raise JobFailed(f"{describe(job)} failed: {job['error']}", job)
        if job['failed']:
            where = f"db.failures({job['identifier']!r})" if job['type_id'] == 'Listener' else 'db.jobs()'
            raise JobFailed(f"{describe(job)} ended with the model failing on {job['failed']} of {job['total']} rows "
                            f'(see {where}; db.retry tries them again)', job)
        return job

    def _timeout(self, timeout: float | None) -> JobTimeout:
        job = self.status()
        progress = f", {job['done'] or 0} of {job['total']} rows done" if job['total'] is not None else ''
        return JobTimeout(f'{describe(job)} still {job["status"]} after {timeout} s{progress}')


class BackgroundApplies:
    """The steps non-blocking applies left to run (each component's ``on_applied`` or ``on_reapplied``), run in order
    on one thread of this process. With ``outputs='async'``, where the queue is in the database, this process computes
    nothing: the workers do (they take the queued backfills, finish index switches, and any process builds an index it
    opens)."""

    def __init__(self, db: 'Runtime'):
        self.db = db
        self._worker = SerialWorker('superduper-apply')
        self._used = False

    def submit(self, steps: list[tuple['Component', Callable[[Any], None]]], job_ids: list[str]) -> list[Job]:
        applying = None
        if steps and not (self.db.cfg.outputs == 'async' and self.db.changes.durable):
            applying = self._worker.submit(lambda: self._run(steps, job_ids))
            self._used = True
        return [Job(self.db, job_id, applying) for job_id in job_ids]

    def _run(self, steps: list[tuple['Component', Callable[[Any], None]]], job_ids: list[str]) -> None:
        for component, step in steps:
            try:
                step(self.db)
            except Interrupted:  # the interpreter is exiting: what is left stays queued
                return
            except Exception as e:  # recorded; the other steps go on (one listener's failure stops no other)
                self._failed(component, job_ids, f'{type(e).__name__}: {e}')

    def _failed(self, component: 'Component', job_ids: list[str], error: str) -> None:
        """Record a step's error on the jobs of the listeners it concerns (its own backfill, or the one an index is
        built over), and in the log."""
        mine = _uuids(component)
        jobs = self.db.listening.jobs
        concerned = [j for j in map(jobs.get, job_ids) if j is not None and j['component_uuid'] in mine]
        for job in concerned:
            text = error if job['component_uuid'] == component.uuid else \
                f'{component.type_id} {component.identifier!r} after the backfill: {error}'
            jobs.finish(job['id'], error=text)
        log.error('applying %s %r in the background failed: %s', component.type_id, component.identifier, error)

    def close(self) -> None:
        """Stop: steps not started are dropped (their work stays queued), a running backfill stops after its
        batch (``Listening.close`` comes first). Where the queue lives in this process only, every step runs first."""
        if not self._used:
            return
        durable = self.db.changes.durable
        self._worker.stop(timeout=30 if durable else None, finish=not durable)


def _uuids(component: 'Component') -> set[str]:
    found = {component.uuid} if component.uuid else set()
    for child in component.children():
        found |= _uuids(child)
    return found
