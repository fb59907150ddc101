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


def gated_docs(db_uri, tmp_path, monkeypatch):
    """A database following docs with the ``gated`` model, and its gate, closed (a 'slow' value waits)."""
    gate = tmp_path / 'gate'
    monkeypatch.setenv('SD_TEST_GATE', str(gate))
    db = connect(db_uri, tmp_path)
    try:
        listener = follow_docs(db, model=gated)
    except BaseException:
        db.close()
        raise
    gate.touch()
    return db, listener, gate


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
    db, listener, gate = gated_docs(db_uri, tmp_path, monkeypatch)
    try:
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
    db, listener, gate = gated_docs(db_uri, tmp_path, monkeypatch)
    try:
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


# ---- polling by a column every writer raises (poll_by) ----------------------------------------------------------
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def follow_versioned(db):
    """docs(id, txt, v): ``v`` a version every write raises; the listener upper-cases ``txt``."""
    db.apply(Table('docs', fields={'txt': 'str', 'v': 'int'}, folds=False))
    db['docs'].insert([{'id': 'a', 'txt': 'first', 'v': 1}, {'id': 'b', 'txt': 'second', 'v': 2}]).execute()
    return db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt',
                                                                                      identifier='upper'))


def versioned_db(db_uri, tmp_path):
    db = connect(db_uri, tmp_path, poll_by={'docs': 'v'}, poll_lookback=10)
    clock = db.listening.feed.clock = Clock()
    return db, clock


def test_poll_by_finds_inserts_updates_deletes_and_writes_committed_within_the_lookback(db_uri, tmp_path):
    db, clock = versioned_db(db_uri, tmp_path)
    try:
        listener = follow_versioned(db)
        assert db.listening.work() == 0  # the first polls hash every row (no mark yet) and record marks
        clock.now += 20  # from here on polls read the rows from the mark (v >= 2) on, and the keys for deletes
        plain_sql(db, ("INSERT INTO docs (id, txt, v) VALUES ('c', 'third', 3)", {}),
                  ("UPDATE docs SET txt = 'changed', v = 4 WHERE id = 'a'", {}), ("DELETE FROM docs WHERE id = 'b'", {}),
                  ("INSERT INTO docs (id, txt, v) VALUES ('n', 'no version', NULL)", {}))
        assert db.listening.work() == 4
        assert outputs(db, listener) == {'a': 'CHANGED', 'c': 'THIRD', 'n': 'NO VERSION'}
        clock.now += 5
        # committed late: its version (3) is below the largest seen (4), but a poll less than poll_lookback ago saw
        # that largest, so the mark in use is still an older, smaller one
        plain_sql(db, ("INSERT INTO docs (id, txt, v) VALUES ('d', 'late', 3)", {}))
        assert db.listening.work() == 1 and outputs(db, listener)['d'] == 'LATE'
        assert faults(db, listener) == CLEAN
    finally:
        db.close()


def test_poll_by_reads_only_rows_past_the_mark(db_uri, tmp_path):
    """A write that does not raise the column, or that commits more than poll_lookback after setting it, is past
    what polls read (the contract of poll_by); status still counts it, and a process opening the database finds it."""
    db, clock = versioned_db(db_uri, tmp_path)
    try:
        listener = follow_versioned(db)
        db.listening.work()
        clock.now += 20
        db.listening.work()
        clock.now += 20  # the mark is now the largest version seen, 2
        plain_sql(db, ("UPDATE docs SET txt = 'unversioned' WHERE id = 'a'", {}))
        assert db.listening.work() == 0 and outputs(db, listener)['a'] == 'FIRST'
        assert db.status()[0]['pending'] == 1
    finally:
        db.close()
    db = connect(db_uri, tmp_path, poll_by={'docs': 'v'})
    try:
        assert db.listening.work() == 1 and outputs(db, listener)['a'] == 'UNVERSIONED'
    finally:
        db.close()


def test_a_batch_given_back_undone_makes_polls_hash_every_row_again(db_uri, tmp_path, monkeypatch):
    db, clock = versioned_db(db_uri, tmp_path)
    try:
        listener = follow_versioned(db)
        db.listening.work()
        clock.now += 20
        plain_sql(db, ("INSERT INTO docs (id, txt, v) VALUES ('g', 'seventh', 11), ('h', 'eighth', 12)", {}))
        feed = db.listening.feed

        def storing_fails(conn, batch):
            raise RuntimeError('the database went away while storing')

        monkeypatch.setattr(feed, '_seen', storing_fails)
        with pytest.raises(RuntimeError, match='went away'):
            db.listening.work()  # that poll saw 12 as the largest version; its batch is given back
        monkeypatch.undo()
        clock.now += 20  # a mark of 12 would now pass 'g' (11), which was never stored
        assert db.listening.work() == 2
        assert faults(db, listener) == CLEAN
    finally:
        db.close()


@pytest.mark.parametrize('column, message', [
    ('missing', "poll_by names column 'missing' of table 'docs', which has no such column; its columns: id, txt, v"),
    ('doc', "poll_by names column 'doc' of table 'docs', of type .*: a polled column holds numbers, times or text"),
])
def test_a_poll_by_column_that_cannot_be_polled_is_refused_and_nothing_is_applied(db_uri, tmp_path, column, message):
    from superduper.base.exceptions import ConfigError

    db = connect(db_uri, tmp_path, poll_by={'docs': column})
    try:
        db.apply(Table('docs', fields={'txt': 'str', 'v': 'int'} | ({'doc': 'json'} if column == 'doc' else {}),
                       folds=False))
        message = message.replace('id, txt, v', 'id, txt, v, doc') if column == 'doc' else message
        with pytest.raises(ConfigError, match=message):
            db.apply(ObjectModel('upper', object=str.upper, datatype='str').to_listener('docs', key='txt',
                                                                                       identifier='upper'))
        assert db.show('Listener') == [] and db.status() == []
    finally:
        db.close()
