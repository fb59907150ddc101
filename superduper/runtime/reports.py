"""What the datalayer reports about listeners and schedules: jobs with progress, failed rows, per-listener status and
each schedule's latest tick. Read from the metadata and the change feed: no model is loaded."""

from __future__ import annotations

from typing import Any

from superduper.base.exceptions import NotFound
from superduper.components.listener import outputs_table
from superduper.runtime.component_store import not_found
from superduper.runtime.jobs import current


def jobs(db: Any, identifier: str | None = None) -> list[dict]:
    """Backfills and training runs: kind, component, status, progress, error and timings. A running backfill's
    progress is what is no longer queued, whichever consumers computed it."""
    return [current(db, j) for j in db.listening.jobs.list() if identifier is None or j['identifier'] == identifier]


def failures(db: Any, listener: str) -> list[dict]:
    """The rows listener ``listener`` failed on, with the error and the number of attempts."""
    record = db.metadata.get('Listener', listener)  # read, not loaded: a listener that cannot load has some
    if record is None:
        raise NotFound(not_found(db.metadata, 'Listener', listener, None))
    return db.listening.failures.list(record['uuid'], record['record']['select']['_query']['table'])


def status(db: Any) -> list[dict]:
    """Per listener: rows with outputs (a flattening listener's: rows with chunks, and ``chunks``), changes pending (``None`` where the database cannot count them), rows
    failed, the lag of the oldest pending change, what stops it, if anything (``problem``), and the switch of the
    vector index it feeds to a new model, if one is under way or was the last (``switch``). Read from the
    metadata: no model is loaded."""
    report = []
    tables = set(db.databackend.table_names())
    problems = dict(db.listening.problems)
    switches = db.vector_indexes.switches.describe()
    for identifier in db.metadata.identifiers('Listener'):
        record = db.metadata.get('Listener', identifier)
        source = record['record']['select']['_query']['table']
        outputs = outputs_table(f'{identifier}__{record["uuid"][:8]}')
        pending, lag = db.changes.pending(source)
        found = [problems.get(f'Listener {identifier!r}'), db.changes.problem_with(source)]
        found += [p for name, p in problems.items() if outputs in name]
        done = db.databackend.count(outputs) if outputs in tables else 0
        chunks = {'chunks': done} if record['record'].get('flatten') else {}
        if chunks and done:  # rows with chunks, not chunks
            done = len({row[0] for batch in db.databackend.select(outputs, ['_source']) for row in batch})
        report.append({
            'listener': identifier, 'table': source, 'outputs': outputs, 'done': done, **chunks,
            'pending': pending, 'failed': db.listening.failures.count(record['uuid']), 'lag_seconds': lag,
            'problem': '; '.join(p for p in found if p) or None, 'switch': switches.get(identifier),
        })
    return report


def schedules(db: Any) -> list[dict]:
    """Per schedule: its cron, its action, and its latest tick (``None`` before the first) with how it ended
    (``status`` 'running', 'success' or 'failed', ``error``) and the number of tries."""
    report = []
    for identifier in db.metadata.identifiers('Schedule'):
        record = db.metadata.get('Schedule', identifier)
        fields = record['record']
        action = 'predict' if fields.get('model') else 'fit' if fields.get('fit') else 'recompute'
        ticks = db.metadata.tick_log().list(record['uuid'])
        last = ticks[-1] if ticks else {}
        report.append({'schedule': identifier, 'cron': fields['cron'], 'action': action, 'last_tick': last.get('tick'),
                       'status': last.get('status'), 'attempts': last.get('attempts'), 'error': last.get('error')})
    return report
