"""Schedules: the component's checks, each action through the public API, export within an application, and real
worker processes sharing the ticks (each tick once; a worker killed mid-run is taken over after its lease)."""

from __future__ import annotations

import datetime
import signal
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from typing import ClassVar

import pytest

from superduper import Application, Listener, Model, ObjectModel, Schedule, Table, Template, superduper
from superduper.base.exceptions import ComponentError, MissingDependency, NotFound, UnknownField
from superduper.runtime.schedules import Schedules, tick_text

from conftest import wait_for

CLI = [sys.executable, '-m', 'superduper.cli']
#: a cron whose latest tick is always before the schedule was applied: it runs only when asked (``run_schedule``)
NEVER_DUE = '0 0 1 1 *'

pytestmark = pytest.mark.backends('sqlite', 'mongomock')


@pytest.fixture
def numbers(db, pk):
    """Table 'nums': rows r0, r1, ... with n = 0, 1, ... (4 unless told)."""

    def make(n: int = 4) -> None:
        db.apply(Table('nums', fields={'n': 'int'}, folds=False))
        db['nums'].insert([{pk: f'r{i}', 'n': i} for i in range(n)]).execute()

    return make


def outputs_of(db, schedule: Schedule) -> dict:
    return {r['_source']: r[schedule.outputs] for r in db[schedule.outputs].select().execute()}


@pytest.mark.parametrize('kwargs, message', [
    ({'cron': '* * *'}, r"Schedule 'bad': cron='\* \* \*' is not a cron expression of 5 fields"),
    ({'cron': '61 * * * *'}, r"Schedule 'bad': cron='61 \* \* \* \*' is not a valid cron expression"),
    ({'cron': 5}, r"Schedule 'bad': cron=5 is not a cron expression"),
    ({'cron': '* * * * *', 'model': None}, r"Schedule 'bad': give exactly one action.*got none"),
    ({'cron': '* * * * *', 'listener': 'x'}, r"Schedule 'bad': give exactly one action.*got model, listener"),
    ({'cron': '* * * * *', 'key': None}, r"Schedule 'bad': key= names the input field\(s\) of model 'm'"),
    ({'cron': '* * * * *', 'select': 3}, r"Schedule 'bad': select= must be a select query or a table name"),
    ({'cron': '* * * * *', 'model': abs}, r"Schedule 'bad': model= must be a Model.*ObjectModel"),
    ({'cron': '* * * * *', 'X': 'n'}, r"Schedule 'bad': X= not used by its predict action"),
])
def test_construction_errors_name_the_schedule(kwargs, message):
    arguments = {'model': ObjectModel('m', object=abs), 'select': 'nums', 'key': 'n', **kwargs}
    with pytest.raises(ComponentError, match=message):
        Schedule('bad', **arguments)


def test_fit_and_listener_actions_are_checked():
    plain = ObjectModel('m', object=abs)
    with pytest.raises(ComponentError, match=r"Schedule 'bad': ObjectModel 'm' cannot be trained"):
        Schedule('bad', cron='* * * * *', fit=plain, X='n', select='nums')
    with pytest.raises(ComponentError, match=r"Schedule 'bad': listener= must be a Listener, got str"):
        Schedule('bad', cron='* * * * *', listener='upper')
    listener = plain.to_listener('nums', key='n')
    with pytest.raises(ComponentError, match=r"Schedule 'bad': select= not used by its recompute action"):
        Schedule('bad', cron='* * * * *', listener=listener, select='nums')
    assert Schedule('ok', cron='*/5 * * * * 30', listener=listener).action == 'recompute'


def test_croniter_missing_gives_the_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, 'croniter', None)  # an import of it fails, as where it is not installed
    with pytest.raises(MissingDependency, match=r"schedules need the croniter package.*pip install 'superduper\[schedule\]'"):
        Schedule('hourly', cron='0 * * * *', model=ObjectModel('m', object=abs), select='nums', key='n')


def test_predict_action_keeps_the_outputs_of_the_latest_run(db, numbers):
    numbers()
    schedule = db.apply(Schedule('double', cron=NEVER_DUE, model=ObjectModel('two', object=lambda n: 2 * n),
                                 select=db['nums'].select(), key='n'))
    assert db.schedules.run_due() == 0  # no tick since it was applied
    run = db.run_schedule('double')
    assert (run['status'], run['attempts'], run['error']) == ('success', 1, None)
    assert outputs_of(db, schedule) == {'r0': 0, 'r1': 2, 'r2': 4, 'r3': 6}
    db['nums'].filter(db['nums']['n'] == 3).delete().execute()
    db['nums'].insert([{'n': 10}]).execute()
    assert outputs_of(db, schedule) == {'r0': 0, 'r1': 2, 'r2': 4, 'r3': 6}  # nothing follows writes between runs
    again = db.run_schedule('double')
    assert sorted(outputs_of(db, schedule).values()) == [0, 2, 4, 20]  # r3's output went with its row
    rows = db['nums'].select().outputs(schedule.predict_id).execute()
    assert sorted(r[schedule.outputs] for r in rows) == [0, 2, 4, 20]
    jobs = db.jobs('double')
    assert [(j['kind'], j['status'], j['done'], j['failed']) for j in jobs] == [('schedule', 'success', 4, 0)] * 2
    (status,) = db.schedule_status()
    assert status == {'schedule': 'double', 'cron': NEVER_DUE, 'action': 'predict', 'last_tick': again['tick'],
                      'status': 'success', 'attempts': 1, 'error': None}
    db.remove('Schedule', 'double')
    assert schedule.outputs not in db.databackend.table_names()
    assert db.jobs('double') == [] and db.schedules.ticks.list(schedule.uuid) == []


def test_a_failing_run_is_recorded_and_the_worker_goes_on(db, numbers):
    numbers()

    def fragile(n):
        if n == 2:
            raise ValueError('two is bad')
        return n

    db.apply(Schedule('rows', cron=NEVER_DUE, model=ObjectModel('fragile', object=fragile), select='nums', key='n'))
    run = db.run_schedule('rows')
    assert run['status'] == 'success'  # rows the model fails on are counted, as a listener's are
    assert [(j['done'], j['failed']) for j in db.jobs('rows')] == [(3, 1)]

    db.apply(Schedule('train', cron=NEVER_DUE, fit=Untrainable('broken'), X='n', select='nums'))
    run = db.run_schedule('train')
    assert run['status'] == 'failed' and run['error'] == 'ValueError: cannot learn'
    job = next(j for j in db.jobs('train') if j['kind'] == 'schedule')
    assert (job['status'], job['error']) == ('failed', 'ValueError: cannot learn')
    with pytest.raises(NotFound, match="no Schedule named 'nope'; existing: rows, train"):
        db.run_schedule('nope')


@dataclass(eq=False)
class Mean(Model):
    """Predicts the mean of what it was trained on."""

    trainable: ClassVar[bool] = True
    mean: float | None = None

    def predict(self, x):
        return self.mean

    def _fit(self, X, y):
        self.mean = sum(X) / len(X)


@dataclass(eq=False)
class Untrainable(Model):
    trainable: ClassVar[bool] = True

    def _fit(self, X, y):
        raise ValueError('cannot learn')


def test_fit_action_stores_a_new_version_each_run(db, numbers):
    numbers()
    db.apply(Schedule('retrain', cron=NEVER_DUE, fit=Mean('mean'), X='n', select=db['nums'].select()))
    assert db.show('Model', 'mean') == [0]
    assert db.run_schedule('retrain')['status'] == 'success'
    assert db.load('Model', 'mean', 1).mean == 1.5
    db['nums'].insert([{'n': 11}]).execute()
    db.run_schedule('retrain')
    assert db.show('Model', 'mean') == [0, 1, 2] and db.load('Model', 'mean').mean == 3.4
    assert [j['kind'] for j in db.jobs('retrain')] == ['schedule', 'schedule']  # its fits are jobs of 'mean'


def test_listener_action_recomputes_every_output(db, numbers):
    numbers()
    factor = {'k': 1}
    listener = db.apply(Listener(model=ObjectModel('scaled', object=lambda n: n * factor['k']), select='nums',
                                 key='n', identifier='scaled'))
    db.apply(Schedule('refresh', cron=NEVER_DUE, listener=listener))
    factor['k'] = 10  # the model changed what it gives (a remote model updated, say): the outputs are stale
    assert sorted(r[listener.outputs] for r in db[listener.outputs].select().execute()) == [0, 1, 2, 3]
    run = db.run_schedule('refresh')
    assert run['status'] == 'success'
    assert sorted(r[listener.outputs] for r in db[listener.outputs].select().execute()) == [0, 10, 20, 30]
    assert [(j['done'], j['failed']) for j in db.jobs('refresh') if j['kind'] == 'schedule'] == [(4, 0)]


@pytest.mark.backends('sqlite', 'postgresql', 'mongomock')
def test_an_expired_tick_is_taken_over_once_then_given_up(db, numbers):
    """A worker that died holding a tick (its lease not renewed) is replaced by the first worker to look after the
    lease ran out, by one only; a tick started ``max_attempts`` times ends as failed."""
    numbers(2)
    db.cfg.lease_seconds = 0.3
    schedule = db.apply(Schedule('s', cron=NEVER_DUE, model=ObjectModel('same', object=lambda n: n), select='nums',
                                 key='n'))
    dead, first, second = Schedules(db), Schedules(db), Schedules(db)
    now = datetime.datetime.now(datetime.timezone.utc)
    tick = tick_text(now - datetime.timedelta(minutes=2))
    assert dead.ticks.claim(schedule.uuid, 's', tick, dead.worker, 0.3) is not None
    assert first.ticks.claim(schedule.uuid, 's', tick, first.worker, 0.3) is None  # one claim wins
    assert first.run_due() == 0  # its lease has not run out yet
    wait_for(lambda: first.run_due() == 1, 10)
    assert second.run_due() == 0
    row = db.schedules.ticks.get(schedule.uuid, tick)
    assert (row['status'], row['attempts'], row['worker']) == ('success', 2, first.worker)
    assert not dead.ticks.extend(row['id'], dead.worker, 10)  # the dead worker's lease is gone for good
    assert outputs_of(db, schedule) == {'r0': 0, 'r1': 1}

    db.cfg.max_attempts = 1
    later = tick_text(now - datetime.timedelta(minutes=1))
    dead.ticks.claim(schedule.uuid, 's', later, dead.worker, 0.3)
    wait_for(lambda: first.run_due() == 0 and db.schedules.ticks.get(schedule.uuid, later)['status'] == 'failed', 10)
    assert 'gave up after 1 attempts' in db.schedules.ticks.get(schedule.uuid, later)['error']


def test_key_not_in_the_select_is_refused(db, numbers):
    numbers(1)
    with pytest.raises(UnknownField, match="Schedule 'x': key 'txt' is not a field of the select on 'nums'"):
        db.apply(Schedule('x', cron='* * * * *', model=ObjectModel('m', object=abs), select='nums', key='txt'))
    assert db.show('Schedule') == []


@pytest.mark.backends('any')
def test_exported_and_applied_with_an_application(db, numbers, tmp_path):
    numbers(3)
    schedule = Schedule('nightly', cron='0 3 * * *', model=ObjectModel('neg', object=lambda n: -n), select='nums',
                        key='n')
    app = db.apply(Application('app', components=[Table('nums', fields={'n': 'int'}, folds=False), schedule]))
    path = Template('app', component=app, substitutions={'nums': 'table'}).export(tmp_path / 'app.zip')
    with zipfile.ZipFile(path) as archive:
        assert archive.read('requirements.txt').decode().startswith('superduper[schedule]')
    target = superduper(f'sqlite://{tmp_path}/target.db', artifact_store=f'filesystem://{tmp_path}/target-artifacts')
    try:
        target.apply(Table('items', fields={'n': 'int'}, folds=False))
        target['items'].insert([{'n': 5}]).execute()
        target.apply(Template.read(path, trust=True), table='items')
        copied = target.load('Schedule', 'nightly')
        assert (copied.cron, copied.source, copied.uuid) != (schedule.cron, schedule.source, schedule.uuid)
        assert copied.cron == '0 3 * * *' and copied.source == 'items'
        assert target.run_schedule('nightly')['status'] == 'success'
        assert list(outputs_of(target, copied).values()) == [-5]
        target.remove('Application', 'app')
        assert target.show('Schedule') == []
    finally:
        target.close()


# ---- real worker processes ------------------------------------------------------------------------------------
def workers(db_uri: str, env: dict, logs, n: int = 2) -> list[subprocess.Popen]:
    """``n`` worker processes, each writing its log to a file in the folder ``logs``."""
    return [subprocess.Popen(CLI + ['start', db_uri, '--interval', '0.05'], env=env,
                             stderr=open(logs / f'worker-{i}.log', 'w')) for i in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        process.wait(timeout=60)


def seconds(tick: str) -> float:
    moment = datetime.datetime.strptime(tick, '%Y-%m-%dT%H:%M:%S.%fZ')
    return moment.replace(tzinfo=datetime.timezone.utc).timestamp()


def one_row(db_uri: str, tmp_path, n: int):
    """The test's database with a table ``one`` of one row (id 'a', ``n``)."""
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False)
    db.apply(Table('one', fields={'n': 'int'}, folds=False))
    db['one'].insert([{'id': 'a', 'n': n}]).execute()
    return db


def recorder(path: str) -> ObjectModel:
    """A model that appends a line to ``path`` per row it is given (defined here: pickled by value)."""

    def record(n):
        with open(path, 'a') as f:
            f.write(f'{n}\n')
        return n

    return ObjectModel('record', object=record)


@pytest.mark.backends('sqlite')
@pytest.mark.requires(shared=True, reason='worker processes share the database')
def test_two_workers_run_each_tick_once(db_uri, tmp_path, env):
    db = one_row(db_uri, tmp_path, 1)
    runs = tmp_path / 'runs.txt'
    schedule = db.apply(Schedule('every-second', cron='* * * * * *', model=recorder(str(runs)), select='one',
                                 key='n'))
    processes = workers(db_uri, env, tmp_path)
    try:
        wait_for(lambda: len([r for r in db.schedules.ticks.list(schedule.uuid) if r['status'] == 'success']) >= 5, 30)
    finally:
        stop(processes)
    rows = db.schedules.ticks.list(schedule.uuid)
    assert {r['status'] for r in rows} == {'success'} and {r['attempts'] for r in rows} == {1}
    ticks = [seconds(r['tick']) for r in rows]
    assert [b - a for a, b in zip(ticks, ticks[1:])] == [1.0] * (len(ticks) - 1)  # none skipped, none twice
    assert runs.read_text().splitlines() == ['1'] * len(rows)  # the model ran once per tick
    jobs = [j for j in db.jobs('every-second') if j['kind'] == 'schedule']
    assert len(jobs) == len(rows) and {j['status'] for j in jobs} == {'success'}
    status = subprocess.run(CLI + ['status', db_uri], env=env, capture_output=True, text=True, timeout=60)
    line = next(x for x in status.stdout.splitlines() if x.startswith('every-second'))
    assert line.split() == ['every-second', '*', '*', '*', '*', '*', '*', 'predict', rows[-1]['tick'], 'success']
    db.close()


def slow_then_fast(path: str) -> ObjectModel:
    """The first run writes its process id and waits (to be killed); a later run finishes at once."""

    def run(n):
        import os
        import time

        first = not os.path.exists(path)
        with open(path, 'a') as f:
            f.write(f'start {os.getpid()}\n')
        while first:
            time.sleep(0.05)
        with open(path, 'a') as f:
            f.write(f'done {os.getpid()}\n')
        return n

    return ObjectModel('slow', object=run)


@pytest.mark.backends('sqlite')
@pytest.mark.requires(shared=True, reason='worker processes share the database')
def test_a_worker_killed_mid_run_is_taken_over(db_uri, tmp_path, env):
    db = one_row(db_uri, tmp_path, 7)
    log = tmp_path / 'log.txt'
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=4)
    cron = f'{at.minute} {at.hour} {at.day} {at.month} * {at.second}'  # once, a few seconds from now
    schedule = db.apply(Schedule('once', cron=cron, model=slow_then_fast(str(log)), select='one', key='n'))
    processes = workers(db_uri, env, tmp_path)
    try:
        wait_for(lambda: log.exists() and log.read_text().startswith('start'), 30)
        victim = int(log.read_text().split()[1])
        (survivor,) = [p for p in processes if p.pid != victim]
        next(p for p in processes if p.pid == victim).send_signal(signal.SIGKILL)
        wait_for(lambda: 'done' in log.read_text(), 30)
        row = db.schedules.ticks.list(schedule.uuid)[0]
        wait_for(lambda: db.schedules.ticks.get(schedule.uuid, row['tick'])['status'] != 'running', 10)
    finally:
        stop(processes)
    assert log.read_text().splitlines() == [f'start {victim}', f'start {survivor.pid}', f'done {survivor.pid}']
    (row,) = db.schedules.ticks.list(schedule.uuid)
    assert seconds(row['tick']) == at.replace(microsecond=0).timestamp()
    assert (row['status'], row['attempts'], row['worker'].split(':')[1]) == ('success', 2, str(survivor.pid))
    assert [(j['status'], j['done']) for j in db.jobs('once') if j['kind'] == 'schedule'] == [('success', 1)]
    assert outputs_of(db, schedule) == {'a': 7}
    db.close()
