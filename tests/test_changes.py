"""Change capture: writes by any client, in plain SQL, reach the outputs. Runs on every backend that follows other
clients' writes (triggers: SQLite, PostgreSQL, MariaDB; polling: DuckDB); the others follow writes made through
superduper only: there these tests are expected to fail (strictly: a backend that starts to follow them is noticed)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import sqlalchemy as sa

from conftest import plain_sql, wait_for
from superduper import ObjectModel, Listener, Table, superduper


pytestmark = pytest.mark.sql_only('other clients write with plain SQL')
triggers = pytest.mark.requires('follows_other_writers', reason='writes by other clients reach listeners')


@pytest.fixture
def followed(db):
    db.apply(Table('docs', fields={'txt': 'str'}))
    db['docs'].insert([{'id': 'a', 'txt': 'first'}]).execute()
    listener = db.apply(ObjectModel('upper', object=str.upper).to_listener('docs', key='txt', identifier='upper'))
    return listener


def outputs(db, listener) -> dict:
    return {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}


@triggers
def test_plain_sql_writes_are_followed_in_the_background(db, followed):
    plain_sql(db, ("INSERT INTO docs (id, txt, _fold) VALUES ('b', 'second', 'train')", {}))
    wait_for(lambda: outputs(db, followed).get('b') == 'SECOND')
    plain_sql(db, ("UPDATE docs SET txt = 'changed' WHERE id = 'a'", {}), ("DELETE FROM docs WHERE id = 'b'", {}))
    wait_for(lambda: outputs(db, followed) == {'a': 'CHANGED'})
    wait_for(lambda: db.status()[0]['pending'] == 0)


# no capability needed: a SQL backend computes writes through superduper before they return, triggers or not
def test_api_writes_leave_nothing_pending(db, followed):
    db['docs'].insert([{'txt': f't{i}'} for i in range(20)]).execute()
    db['docs'].filter(db['docs']['txt'] == 't1').update({'txt': 'x'}).execute()
    db['docs'].filter(db['docs']['txt'] == 't2').delete().execute()
    (status,) = db.status()
    assert status['pending'] == 0 and status['done'] == 20 and status['failed'] == 0
    assert status['listener'] == 'upper' and status['table'] == 'docs'


@triggers
def test_explicit_consumer_and_chains(db_uri, tmp_path):
    db = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/artifacts', follow_changes=False, progress=False)
    try:
        db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
        first = db.apply(ObjectModel('upper', object=str.upper).to_listener('docs', key='txt', identifier='upper'))
        second = db.apply(Listener(model=ObjectModel('len', object=len), select=db[first.outputs].select(),
                                   key=first.outputs, upstream=[first], identifier='len'))
        plain_sql(db, *[("INSERT INTO docs (id, txt) VALUES (:i, :t)", {'i': f'r{i}', 't': 'x' * i}) for i in range(1, 6)])
        status = {s['listener']: s for s in db.status()}
        assert status['upper']['pending'] == 5
        if db.databackend.capabilities.change_capture == 'triggers':  # a poll cannot tell when a row was written
            assert status['upper']['lag_seconds'] >= 0
        while db.listening.work(limit=2):
            pass
        assert outputs(db, first) == {f'r{i}': 'X' * i for i in range(1, 6)}
        assert outputs(db, second) == {f'r{i}': i for i in range(1, 6)}
        assert all(s['pending'] == 0 for s in db.status())
    finally:
        db.close()


@triggers
@pytest.mark.requires(shared=True, reason='another process writes while this one has the database open')
def test_another_process_insert_gets_outputs(db, followed, backend):
    url = db.databackend.engine.url.render_as_string(hide_password=False)
    connect_args = db.databackend.engine_options().get('connect_args', {})  # an emulator's host and port
    # the backend's module readies its dialect (snowflake-sqlalchemy 1.x on SQLAlchemy 2.1); nothing else of superduper
    script = textwrap.dedent(f"""
        import sqlalchemy as sa
        import {type(db.databackend).__module__}
        engine = sa.create_engine({url!r}, connect_args={connect_args!r})
        with engine.begin() as conn:
            conn.execute(sa.text("INSERT INTO docs (id, txt, _fold) VALUES ('p', 'from elsewhere', 'train')"))
    """)
    subprocess.run([sys.executable, '-c', script], check=True, timeout=60)
    wait_for(lambda: outputs(db, followed).get('p') == 'FROM ELSEWHERE')


@pytest.mark.requires(change_capture='triggers', reason='triggers are installed')
def test_removing_the_last_listener_removes_the_triggers(db, followed):
    db.remove('Listener', 'upper')
    plain_sql(db, ("INSERT INTO docs (id, txt, _fold) VALUES ('z', 'zz', 'train')", {}))
    changes = db.changes.tables.changes
    with db.databackend.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(changes)).scalar() == 0
