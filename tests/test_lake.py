"""A folder of Parquet, CSV and Delta tables as a database (``parquet://``), on each engine, and in-memory DataFrames
(``superduper({'t': df})``): what the shared suite cannot show. Files are read as they are; the first write makes a
Delta table in place; outputs are Delta tables other tools read; other programs' commits (appends, updates, deletes,
made while superduper writes too, or by a writer killed after its commit) reach the listeners, counted as lost,
duplicated and stale outputs against the rows as they are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from conftest import wait_for
from superduper import ObjectModel, Table, VectorIndex, superduper
from superduper.base.exceptions import ConfigError, DatabaseError, QueryError

ENGINES = ['duckdb', 'polars', 'datafusion']
CLEAN = {'lost': 0, 'duplicated': 0, 'stale': 0}


def connect(folder, engine: str = 'duckdb', **overrides):
    settings = {'progress': False, 'artifact_store': f'filesystem://{folder}.artifacts', **overrides}
    return superduper(f'parquet://{folder}?engine={engine}', **settings)


def upper_listener(db, table: str = 'docs'):
    return db.apply(ObjectModel('upper', object=str.upper).to_listener(table, key='txt', identifier='upper'))


def faults(folder, listener, table: str = 'docs') -> dict:
    """Lost, duplicated and stale outputs, read with deltalake (not superduper) against the rows as they are."""
    rows = {r['id']: r['txt'] for r in DeltaTable(os.path.join(folder, table)).to_pyarrow_table().to_pylist()}
    outputs = DeltaTable(os.path.join(folder, listener.outputs)).to_pyarrow_table().to_pylist()
    found, duplicated = {}, 0
    for row in outputs:
        duplicated += row['_source'] in found
        found[row['_source']] = row[listener.outputs]
    lost = [k for k in rows if k not in found]
    stale = [k for k, v in found.items() if k not in rows or v != rows[k].upper()]
    return {'lost': len(lost), 'duplicated': duplicated, 'stale': len(stale)}


def other_program(code: str) -> None:
    """Another program writing with deltalake, no superduper."""
    subprocess.run([sys.executable, '-c', 'import pyarrow as pa\nfrom deltalake import DeltaTable, write_deltalake\n'
                    + textwrap.dedent(code)], check=True, timeout=120)


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / 'lake'
    path.mkdir()
    pq.write_table(pa.table({'id': [1, 2], 'txt': ['hello', 'hola']}), path / 'docs.parquet')
    (path / 'prices.csv').write_text('id,price\n1,9.5\n2,10.25\n')
    (path / 'parts').mkdir()
    pq.write_table(pa.table({'id': [1], 'name': ['bolt']}), path / 'parts' / 'a.parquet')
    pq.write_table(pa.table({'id': [2], 'name': ['nut']}), path / 'parts' / 'b.parquet')
    write_deltalake(path / 'events', pa.table({'id': [7], 'kind': ['click']}))
    return str(path)


def _files(folder) -> dict:
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            found[path] = open(path, 'rb').read()
    return found


# ---- reading what is there -------------------------------------------------------------------------------------
@pytest.mark.parametrize('engine', ENGINES)
def test_every_file_and_delta_table_is_a_table_read_as_it_is(folder, engine):
    before = _files(folder)
    db = connect(folder, engine)
    try:
        assert sorted(db.databackend.table_names()) == ['docs', 'events', 'parts', 'prices']
        t = db['docs']
        assert [r['txt'] for r in t.select().order_by('id').execute()] == ['hello', 'hola']
        assert [r['price'] for r in db['prices'].filter(db['prices']['price'] > 10).execute()] == [10.25]
        assert sorted(r['name'] for r in db['parts'].select().execute()) == ['bolt', 'nut']
        assert db['events'].count().execute() == 1
        frame = db['docs'].select('id', 'txt').execute().to_pandas()
        assert frame.to_dict('records') == [{'id': 1, 'txt': 'hello'}, {'id': 2, 'txt': 'hola'}]
    finally:
        db.close()
    assert {p: b for p, b in _files(folder).items() if '.superduper' not in p} == before  # nothing converted


def test_the_first_write_makes_a_delta_table_in_place(folder):
    db = connect(folder)
    try:
        db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()
        db['prices'].filter(db['prices']['id'] == 1).update({'price': 8.0}).execute()
        assert os.path.isdir(os.path.join(folder, 'docs', '_delta_log'))
        assert not os.path.exists(os.path.join(folder, 'docs.parquet'))
        assert os.path.exists(os.path.join(folder, '.superduper', 'converted', 'prices.csv'))
        assert sorted(db.databackend.table_names()) == ['docs', 'events', 'parts', 'prices']
        assert [r['txt'] for r in db['docs'].select().order_by('id').execute()] == ['hello', 'hola', 'ciao']
        assert DeltaTable(os.path.join(folder, 'prices')).to_pandas().sort_values('id')['price'].tolist() == [8.0, 10.25]
        with pytest.raises(DatabaseError, match="insert into table 'docs' failed: key 2 is stored already"):
            db['docs'].insert([{'id': 4, 'txt': 'new'}, {'id': 2, 'txt': 'dup'}]).execute()
        assert db['docs'].count().execute() == 3  # nothing of the refused insert was written
    finally:
        db.close()


def test_outputs_are_delta_tables_other_tools_read(folder):
    import numpy as np

    db = connect(folder)
    try:
        listener = upper_listener(db)
        vectors = db.apply(ObjectModel('len', object=lambda x: np.array([len(x), 0.5], dtype='float32'),
                                       datatype='vector[float32:2]').to_listener('docs', key='txt', identifier='len'))
    finally:
        db.close()
    embeddings = pl.read_delta(os.path.join(folder, vectors.outputs)).sort('_source')  # arrays, not bytes
    assert embeddings[vectors.outputs].to_list() == [[5.0, 0.5], [4.0, 0.5]]
    path = os.path.join(folder, listener.outputs)
    expected = {1: 'HELLO', 2: 'HOLA'}
    assert dict(zip(*DeltaTable(path).to_pandas()[['_source', listener.outputs]].to_dict('list').values())) == expected
    polars = pl.read_delta(path).sort('_source')
    assert polars['_source'].to_list() == [1, 2] and polars[listener.outputs].to_list() == ['HELLO', 'HOLA']
    import duckdb

    files = DeltaTable(path).file_uris()
    assert sorted(duckdb.sql(f'SELECT "_source" FROM read_parquet({files!r})').fetchall()) == [(1,), (2,)]


@pytest.mark.parametrize('engine', ['polars', 'datafusion'])
def test_listeners_filters_outputs_and_search_on_each_engine(folder, engine):
    import numpy as np

    db = connect(folder, engine)
    try:
        listener = upper_listener(db)
        t = db['docs']
        t.insert([{'id': 3, 'txt': 'ciao'}]).execute()
        t.filter(t['id'] == 1).update({'txt': 'hi'}).execute()
        t.filter(t['id'] == 2).delete().execute()
        rows = t.select('id', 'txt').outputs(listener.predict_id).order_by('id').execute().tolist()
        assert [(r['id'], r[listener.outputs]) for r in rows] == [(1, 'HI'), (3, 'CIAO')]
        vectors = ObjectModel('len', object=lambda x: np.array([len(x), 1.0], dtype='float32'),
                              datatype='vector[float32:2]').to_listener('docs', key='txt', identifier='len')
        db.apply(VectorIndex('by-len', indexing_listener=db.apply(vectors)))
        found = t.like({'txt': 'abcd'}, vector_index='by-len', n=1).filter(t['id'] > 1).select('id').execute()
        assert [r['id'] for r in found] == [3]
        assert faults(folder, listener) == CLEAN
    finally:
        db.close()


def test_a_running_engine_session_is_used(folder):
    import duckdb

    session = duckdb.connect()
    db = superduper(f'parquet://{folder}', session=session, progress=False)
    try:
        assert db['docs'].count().execute() == 2
        assert db.databackend.query_engine._db is session
    finally:
        db.close()
    assert session.execute('SELECT 42').fetchone() == (42,)  # the caller's connection stays open


# ---- other programs' commits -----------------------------------------------------------------------------------
def test_appends_updates_and_deletes_by_another_program_reach_the_listener(folder):
    db = connect(folder, poll_interval=0.1)
    try:
        db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()  # a Delta table now
        listener = upper_listener(db)
        other_program(f"""
            path = {os.path.join(folder, 'docs')!r}
            write_deltalake(path, pa.table({{'id': [4, 5], 'txt': ['salut', 'hej']}}), mode='append')
            DeltaTable(path).update(updates={{'txt': "'hello again'"}}, predicate='id = 1')
            DeltaTable(path).delete('id = 2')
        """)
        wait_for(lambda: faults(folder, listener) == CLEAN)
        rows = db['docs'].select('id').outputs(listener.predict_id).order_by('id').execute().tolist()
        assert [(r['id'], r[listener.outputs]) for r in rows] == [
            (1, 'HELLO AGAIN'), (3, 'CIAO'), (4, 'SALUT'), (5, 'HEJ')]
    finally:
        db.close()


def test_a_plain_file_followed_before_it_became_a_delta_table_is_followed_after(folder):
    db = connect(folder, poll_interval=0.1)
    try:
        listener = upper_listener(db)  # docs is docs.parquet: nothing to follow yet
        db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()  # now a Delta table
        other_program(f"""
            write_deltalake({os.path.join(folder, 'docs')!r}, pa.table({{'id': [4], 'txt': ['salut']}}), mode='append')
        """)
        wait_for(lambda: faults(folder, listener) == CLEAN)
    finally:
        db.close()


def test_commits_made_while_the_folder_was_closed_are_computed_when_it_opens(folder):
    db = connect(folder)
    db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()
    listener = upper_listener(db)
    db.close()
    other_program(f"""
        path = {os.path.join(folder, 'docs')!r}
        write_deltalake(path, pa.table({{'id': [9], 'txt': ['later']}}), mode='append')
        DeltaTable(path).delete('id = 1')
    """)
    db = connect(folder, poll_interval=0.1)
    try:
        wait_for(lambda: faults(folder, listener) == CLEAN)
    finally:
        db.close()


def test_api_writes_and_another_programs_commits_at_once_leave_one_current_output_per_row(folder):
    db = connect(folder, poll_interval=0.05)
    try:
        db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()
        listener = upper_listener(db)
        failed = []

        def run(code: str) -> None:
            try:
                other_program(code)
            except Exception as e:  # noqa: BLE001  (reported by the test below)
                failed.append(e)

        program = threading.Thread(target=run, args=(f"""
            from deltalake.exceptions import CommitFailedError

            def retried(commit):  # as a Delta writer does when another commit wins
                while True:
                    try:
                        return commit()
                    except CommitFailedError:
                        pass

            path = {os.path.join(folder, 'docs')!r}
            for i in range(100, 115):
                retried(lambda: write_deltalake(path, pa.table({{'id': [i], 'txt': [f'other {{i}}']}}), mode='append'))
                if i % 3 == 0:
                    retried(lambda: DeltaTable(path).update(updates={{'txt': "'changed ' || CAST(id AS STRING)"}},
                                                            predicate=f'id = {{i - 1}} OR id = 1'))
                if i % 5 == 0:
                    retried(lambda: DeltaTable(path).delete(f'id = {{i - 2}}'))
        """,))
        program.start()
        t = db['docs']
        for i in range(200, 215):
            t.insert([{'id': i, 'txt': f'api {i}'}]).execute()
            t.filter(t['id'] == 1).update({'txt': f'api update {i}'}).execute()
        program.join()
        assert not failed
        wait_for(lambda: faults(folder, listener) == CLEAN, timeout=30)
    finally:
        db.close()


def test_a_writer_killed_after_its_commit_leaves_its_rows_to_the_next_process(folder, tmp_path):
    db = connect(folder)
    db['docs'].insert([{'id': 3, 'txt': 'ciao'}]).execute()
    listener = upper_listener(db)
    db.close()
    code = textwrap.dedent(f"""
        from superduper import superduper
        db = superduper({f'parquet://{folder}'!r}, artifact_store={f'filesystem://{folder}.artifacts'!r},
                        progress=False)
        db['docs'].insert([{{'id': 50, 'txt': 'killed'}}]).execute()
    """)
    died = subprocess.run([sys.executable, '-c', code], timeout=120,
                          env={**os.environ, 'SUPERDUPER_FAULT': 'before_finish'})
    assert died.returncode == -signal.SIGKILL
    assert faults(folder, listener)['lost'] == 1  # committed, not computed
    db = connect(folder, poll_interval=0.1)
    try:
        wait_for(lambda: faults(folder, listener) == CLEAN)
    finally:
        db.close()


# ---- in-memory DataFrames --------------------------------------------------------------------------------------
@pytest.mark.parametrize('make', [pd.DataFrame, pl.DataFrame, pa.table], ids=['pandas', 'polars', 'arrow'])
def test_dataframes_in_memory_take_listeners_writes_and_search(make, tmp_path):
    import numpy as np

    frame = make({'id': [1, 2, 3], 'txt': ['hello', 'bonjour', 'hola']})
    db = superduper({'docs': frame}, artifact_store=f'filesystem://{tmp_path}/artifacts', progress=False)
    try:
        listener = upper_listener(db)
        t = db['docs']
        t.insert([{'id': 4, 'txt': 'ciao'}]).execute()
        t.filter(t['id'] == 2).delete().execute()
        outputs = t.select('id').outputs(listener.predict_id).order_by('id').execute().to_pandas()
        assert outputs.to_dict('list') == {'id': [1, 3, 4], listener.outputs: ['HELLO', 'HOLA', 'CIAO']}
        vectors = ObjectModel('len', object=lambda x: np.array([len(x), 1.0], dtype='float32'),
                              datatype='vector[float32:2]').to_listener('docs', key='txt', identifier='len')
        db.apply(VectorIndex('by-len', indexing_listener=db.apply(vectors)))
        found = t.like({'txt': 'abcde'}, vector_index='by-len', n=1).select('id').execute().to_polars()
        assert found['id'].to_list() == [1]
    finally:
        db.close()


# ---- bad input -------------------------------------------------------------------------------------------------
def test_bad_settings_and_values_are_refused_by_name(folder, tmp_path):
    with pytest.raises(ConfigError, match="unknown lake engine 'spark': the engines are datafusion, duckdb, polars"):
        superduper(f'parquet://{folder}?engine=spark')
    with pytest.raises(ConfigError, match=r"unknown option 'format' in .*; known: engine"):
        superduper(f'parquet://{folder}?format=csv')
    with pytest.raises(QueryError, match="table 'docs': expected a pandas or Polars DataFrame or an Arrow table, got list"):
        superduper({'docs': [1, 2]})
    with pytest.raises(ConfigError, match='session= is a running query engine for parquet:// folders; sqlite://'):
        superduper(f'sqlite://{tmp_path}/x.db', session=object())
    assert not os.path.exists(tmp_path / 'x.db')
    db = connect(folder)
    try:
        db.apply(Table('items', fields={'name': 'str'}))
        with pytest.raises(DatabaseError, match="insert into table 'items' failed: a key is given twice"):
            db['items'].insert([{'id': 'a', 'name': 'x'}, {'id': 'a', 'name': 'y'}]).execute()
        assert db['items'].count().execute() == 0
    finally:
        db.close()
