"""Change capture by polling (DuckDB, ClickHouse through chDB, Snowflake on fakesnow): writes by other clients — plain SQL on another
connection, another program while this one is closed — reach the listeners, and no interleaving with writes through
superduper leaves an output lost, duplicated or stale (counted against the rows as they are)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from conftest import FAKESNOW, plain_sql, wait_for
from superduper import ObjectModel, Table, superduper
from superduper.backends.sql.polling import seen_table_name

#: Snowflake on fakesnow runs the whole file when asked (``SUPERDUPER_TEST_FAKESNOW``), two tests of it by default
pytestmark = [pytest.mark.backends('duckdb', 'chdb', *(['fakesnow'] if FAKESNOW else [])),
              pytest.mark.requires(change_capture='polling', reason='writes by other clients are found by polling')]
CLEAN = {'lost': 0, 'duplicated': 0, 'stale': 0}


def connect(uri: str, tmp_path, **overrides):
    settings = {'progress': False, 'follow_changes': False, **overrides}
    return superduper(uri, artifact_store=f'filesystem://{tmp_path}/artifacts', **settings)


def gated(x: str) -> str:
    """Upper-cases; on a value starting with 'slow' it waits while the gate file exists."""
    gate = os.environ.get('SD_TEST_GATE')
    if gate and x.startswith('slow'):
        open(gate + '.entered', 'w').close()
        while os.path.exists(gate):
            time.sleep(0.01)
    return x.upper()


def follow_docs(db, model=str.upper):
    db.apply(Table('docs', fields={'txt': 'str'}, folds=False))
    db['docs'].insert([{'id': 'a', 'txt': 'first'}, {'id': 'b', 'txt': 'second'}]).execute()
    return db.apply(ObjectModel('upper', object=model, datatype='str').to_listener('docs', key='txt', identifier='upper'))


def outputs(db, listener) -> dict:
    return {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}


def faults(db, listener) -> dict:
    """Lost, duplicated and stale outputs against the rows as they are."""
    rows = {r['id']: r['txt'] for r in db['docs'].select().execute()}
    found: dict = {}
    duplicated = 0
    for r in db[listener.outputs].select().execute():
        duplicated += r['_source'] in found
        found[r['_source']] = r[listener.outputs]
    stale = [k for k, v in found.items() if k not in rows or v != rows[k].upper()]
    return {'lost': len([k for k in rows if k not in found]), 'duplicated': duplicated, 'stale': len(stale)}


def drain(db) -> None:
    deadline = time.time() + 60
    while db.listening.work():
        assert time.time() < deadline


@pytest.mark.backends('duckdb', 'chdb', 'fakesnow')
def test_plain_sql_on_another_connection_reaches_listeners(db_uri, tmp_path):
    db = connect(db_uri, tmp_path, follow_changes=True, poll_interval=0.05)
    try:
        listener = follow_docs(db)
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('c', 'third')", {}))
        wait_for(lambda: outputs(db, listener).get('c') == 'THIRD')
        plain_sql(db, ("UPDATE docs SET txt = 'changed' WHERE id = 'a'", {}), ("DELETE FROM docs WHERE id = 'b'", {}))
        wait_for(lambda: outputs(db, listener) == {'a': 'CHANGED', 'c': 'THIRD'})
        assert faults(db, listener) == CLEAN
        wait_for(lambda: db.status()[0]['pending'] == 0)
    finally:
        db.close()


def test_status_counts_what_waits_for_a_poll(db_uri, tmp_path):
    db = connect(db_uri, tmp_path)
    try:
        listener = follow_docs(db)
        assert db.status()[0]['pending'] == 0
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('c', 'third')", {}),
                  ("UPDATE docs SET txt = 'changed' WHERE id = 'a'", {}), ("DELETE FROM docs WHERE id = 'b'", {}))
        assert db.status()[0]['pending'] == 3
        assert db.listening.work() == 3
        assert db.status()[0]['pending'] == 0 and db.listening.work() == 0  # an idle poll finds nothing
        assert outputs(db, listener) == {'a': 'CHANGED', 'c': 'THIRD'}
    finally:
        db.close()


OTHER_PROGRAM = {
    'duckdb': textwrap.dedent("""
        import duckdb, sys
        conn = duckdb.connect(sys.argv[1].split('://', 1)[1])
        for sql in sys.argv[2:]:
            conn.execute(sql)
        conn.close()
    """),
    'chdb': textwrap.dedent("""
        import sys
        from chdb import session
        s = session.Session(sys.argv[1].split('://', 1)[1])
        for sql in sys.argv[2:]:
            s.query(sql)
        s.close()
    """),
    'fakesnow': textwrap.dedent("""
        import sys
        from urllib.parse import parse_qsl, urlsplit
        import snowflake.connector
        uri = urlsplit(sys.argv[1])
        database, schema = uri.path.strip('/').split('/')
        options = dict(parse_qsl(uri.query))
        conn = snowflake.connector.connect(user=uri.username, password=uri.password, account=uri.hostname,
                                           database=database, schema=schema, **options)
        for sql in sys.argv[2:]:
            conn.cursor().execute(sql)
        conn.close()
    """),
}


@pytest.mark.backends('duckdb', 'chdb', 'fakesnow')
def test_writes_made_while_no_process_has_the_database_open_are_found_on_open(db_uri, tmp_path, backend):
    db = connect(db_uri, tmp_path)
    listener = follow_docs(db)
    db.close()
    subprocess.run([sys.executable, '-c', OTHER_PROGRAM[backend], db_uri,
                    "INSERT INTO docs (id, txt) VALUES ('c', 'third')", "UPDATE docs SET txt = 'changed' WHERE id = 'a'",
                    "DELETE FROM docs WHERE id = 'b'"], check=True, timeout=120)
    db = connect(db_uri, tmp_path)
    try:
        drain(db)
        assert outputs(db, listener) == {'a': 'CHANGED', 'c': 'THIRD'} and faults(db, listener) == CLEAN
    finally:
        db.close()


API_WRITE = textwrap.dedent("""
    import sys
    from superduper import superduper
    db = superduper(sys.argv[1], artifact_store=sys.argv[2], follow_changes=False, progress=False)
    t = db['docs']
    t.insert([{'id': 'c', 'txt': 'third'}]).execute()
""")


def test_a_write_killed_before_its_outputs_are_stored_is_computed_later(db_uri, tmp_path, env):
    """The writer commits its rows and dies computing them: nothing was marked seen, so a poll computes them."""
    db = connect(db_uri, tmp_path)
    listener = follow_docs(db)
    db.close()
    died = subprocess.run([sys.executable, '-c', API_WRITE, db_uri, f'filesystem://{tmp_path}/artifacts'],
                          env={**env, 'SUPERDUPER_FAULT': 'before_finish'}, timeout=120)
    assert died.returncode == -signal.SIGKILL
    db = connect(db_uri, tmp_path)
    try:
        assert db['docs'].get(id='c').execute()['txt'] == 'third' and 'c' not in outputs(db, listener)
        assert db.status()[0]['pending'] == 1
        drain(db)
        assert outputs(db, listener)['c'] == 'THIRD' and faults(db, listener) == CLEAN
    finally:
        db.close()


@pytest.mark.parametrize('then', ['api update', 'api delete', 'plain update'])
def test_a_polled_result_never_overwrites_a_newer_write(db_uri, tmp_path, monkeypatch, then):
    """A poll takes another client's change and runs a slow model; meanwhile the row is written again (through
    superduper, which computes it at once, or by another client) and the poll's batch finishes last."""
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    db = connect(db_uri, tmp_path)
    try:
        listener = follow_docs(db, model=gated)
        gate.touch()
        plain_sql(db, ("UPDATE docs SET txt = 'slow v1' WHERE id = 'a'", {}))
        poller = threading.Thread(target=db.listening.work)
        poller.start()
        wait_for(lambda: os.path.exists(str(gate) + '.entered'))
        t = db['docs']
        writer = None
        if then == 'plain update':
            plain_sql(db, ("UPDATE docs SET txt = 'fast v2' WHERE id = 'a'", {}))
        else:  # the write commits, then computes once the poller lets go of the model (one call at a time)
            write = (t.filter(t['id'] == 'a').update({'txt': 'fast v2'}) if then == 'api update'
                     else t.filter(t['id'] == 'a').delete())
            writer = threading.Thread(target=write.execute)
            writer.start()
            wait_for(lambda: (t.get(id='a').execute() or {}).get('txt') != 'slow v1')
        gate.unlink()
        for thread in (poller, writer):
            if thread is not None:
                thread.join(timeout=60)
                assert not thread.is_alive()
        if writer is not None:  # whichever finished last, the write's result stands
            assert outputs(db, listener).get('a') == ('FAST V2' if then == 'api update' else None)
        drain(db)
        assert faults(db, listener) == CLEAN
        expected = {'b': 'SECOND'} if then == 'api delete' else {'a': 'FAST V2', 'b': 'SECOND'}
        assert outputs(db, listener) == expected
    finally:
        db.close()


def test_a_row_written_again_while_its_writer_computes_is_polled(db_uri, tmp_path, monkeypatch):
    """An API write runs a slow model; another client changes the row meanwhile. The write's result is left out
    (the row moved on) and the next poll computes the row as it is."""
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    db = connect(db_uri, tmp_path)
    try:
        listener = follow_docs(db, model=gated)
        gate.touch()
        writer = threading.Thread(target=db['docs'].insert([{'id': 'c', 'txt': 'slow v1'}]).execute)
        writer.start()
        wait_for(lambda: os.path.exists(str(gate) + '.entered'))
        plain_sql(db, ("UPDATE docs SET txt = 'fast v2' WHERE id = 'c'", {}))
        gate.unlink()
        writer.join(timeout=60)
        assert not writer.is_alive()
        drain(db)
        assert outputs(db, listener)['c'] == 'FAST V2' and faults(db, listener) == CLEAN
    finally:
        db.close()


def test_removing_the_last_listener_stops_polling_its_table(db_uri, tmp_path):
    db = connect(db_uri, tmp_path)
    try:
        follow_docs(db)
        assert db.databackend.has_table(seen_table_name('docs'))
        db.remove('Listener', 'upper', force=True)
        assert not db.databackend.has_table(seen_table_name('docs'))
        plain_sql(db, ("INSERT INTO docs (id, txt) VALUES ('c', 'third')", {}))
        assert db.listening.work() == 0
    finally:
        db.close()
