"""Models and listeners: outputs stored next to the data and kept current, on every backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from superduper import Listener, Model, ObjectModel, Table
from superduper.base.exceptions import ComponentError, QueryError, UnknownField

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


@pytest.fixture
def docs(db):
    db.apply(Table('docs', fields={'txt': 'str', 'lang': 'str', 'n': 'int'}))
    ids = db['docs'].insert([
        {'txt': 'hello', 'lang': 'en', 'n': 1},
        {'txt': 'bonjour', 'lang': 'fr', 'n': 2},
        {'txt': 'hola', 'lang': 'es', 'n': 3},
    ]).execute()
    return db['docs'], ids


def upper_listener(db, **kwargs):
    model = ObjectModel('upper', object=lambda x: x.upper())
    return model.to_listener(select=kwargs.pop('select', db['docs'].select()), key='txt', identifier='upper', **kwargs)


def outputs_by_txt(db, listener) -> dict:
    rows = db['docs'].select('txt').outputs(listener.predict_id).execute()
    return {r['txt']: r[listener.outputs] for r in rows}


def test_backfill_then_follow_inserts_updates_deletes(db, docs, pk):
    t, ids = docs
    listener = db.apply(upper_listener(db))
    assert listener.outputs == f'_outputs__upper__{listener.uuid[:8]}'
    assert outputs_by_txt(db, listener) == {'hello': 'HELLO', 'bonjour': 'BONJOUR', 'hola': 'HOLA'}

    new_id = t.insert_one({'txt': 'ciao', 'lang': 'it'}).execute()
    assert t.select().outputs(listener.predict_id).get(**{pk: new_id}).execute()[listener.outputs] == 'CIAO'
    t.filter(t['lang'] == 'en').update({'txt': 'hi'}).execute()
    assert outputs_by_txt(db, listener)['hi'] == 'HI'
    t.filter(t['lang'] == 'es').delete().execute()
    assert sorted(r['_source'] for r in db[listener.outputs].select().execute()) == sorted([ids[0], ids[1], new_id])
    # reprocessing overwrites: one output per source row, never duplicates
    db.listening.refresh(listener, [ids[0], ids[0]])
    assert db[listener.outputs].count().execute() == 3


def test_filtered_select_only_processes_matching_rows(db, docs):
    t, ids = docs
    listener = db.apply(upper_listener(db, select=t.filter(t['lang'] != 'fr').select()))
    assert outputs_by_txt(db, listener) == {'hello': 'HELLO', 'bonjour': None, 'hola': 'HOLA'}
    t.filter(t['lang'] == 'es').update({'lang': 'fr'}).execute()  # no longer selected: output removed
    t.filter(t['txt'] == 'bonjour').update({'lang': 'en'}).execute()  # now selected: output computed
    assert outputs_by_txt(db, listener) == {'hello': 'HELLO', 'bonjour': 'BONJOUR', 'hola': None}


def test_select_may_be_a_table_name(db, docs):
    listener = db.apply(ObjectModel('len', object=len).to_listener('docs', key='txt'))
    assert sorted(outputs_by_txt(db, listener).values()) == [4, 5, 7]


def test_chain_of_three_listeners(db, docs):
    t, _ = docs
    first = upper_listener(db)
    second = Listener(model=ObjectModel('exclaim', object=lambda s: s + '!'), select=db[first.outputs].select(),
                      key=first.outputs, upstream=[first], identifier='exclaim')
    third = Listener(model=ObjectModel('length', object=len), select=db[second.outputs].select(),
                     key=second.outputs, upstream=[second], identifier='length')
    db.apply(third)  # applies its upstream first
    assert db.show('Listener') == ['exclaim', 'length', 'upper']

    def chain(txt):
        row = t.select('txt').outputs(first.predict_id, second.predict_id, third.predict_id).get(txt=txt).execute()
        return row[first.outputs], row[second.outputs], row[third.outputs]

    assert chain('hola') == ('HOLA', 'HOLA!', 5)
    t.insert_one({'txt': 'hey'}).execute()
    assert chain('hey') == ('HEY', 'HEY!', 4)
    t.filter(t['txt'] == 'hey').update({'txt': 'heyyy'}).execute()
    assert chain('heyyy') == ('HEYYY', 'HEYYY!', 6)
    t.filter(t['txt'] == 'heyyy').delete().execute()
    assert [db[x.outputs].count().execute() for x in (first, second, third)] == [3, 3, 3]


def test_versions_and_noop_apply(db, docs):
    first = db.apply(upper_listener(db))
    again = db.apply(upper_listener(db))
    assert (again.version, again.uuid) == (first.version, first.uuid)
    assert db.show('Listener', 'upper') == [0]
    changed = db.apply(ObjectModel('upper', object=lambda x: x.lower()).to_listener('docs', key='txt', identifier='upper'))
    assert changed.version == 1 and changed.outputs != first.outputs
    assert db.show('Listener', 'upper') == [0, 1]
    assert db.show('Model', 'upper') == [0, 1]
    assert db.show('Listener', 'upper', 1)['record']['key'] == 'txt'
    assert sorted(db[changed.outputs].select(changed.outputs).execute().tolist(), key=str)[0][changed.outputs] == 'bonjour'
    # only the latest version follows new rows
    db['docs'].insert_one({'txt': 'Neu'}).execute()
    assert db[changed.outputs].count().execute() == 4 and db[first.outputs].count().execute() == 3


def test_remove_with_and_without_dependents(db, docs):
    listener = db.apply(upper_listener(db))
    outputs = listener.outputs
    with pytest.raises(ComponentError, match=r"Model 'upper' is used by Listener 'upper' \(v0\)"):
        db.remove('Model', 'upper')
    with pytest.raises(ComponentError, match="Table 'docs' is used by Listener 'upper'"):
        db.remove('Table', 'docs')
    artifacts_before = set(db.artifact_store.keys())
    db.remove('Listener', 'upper', recursive=True)
    assert db.show('Listener') == [] and db.show('Model') == []
    assert outputs not in db.databackend.table_names()
    assert db.jobs('upper') == []
    assert set(db.artifact_store.keys()) < artifacts_before  # the lambda's pickle is gone
    db['docs'].insert_one({'txt': 'after'}).execute()  # no listener follows any more
    assert db['docs'].count().execute() == 4


def test_force_remove_keeps_dependents_stored(db, docs):
    db.apply(upper_listener(db))
    db.remove('Model', 'upper', force=True)
    assert db.show('Model') == [] and db.show('Listener') == ['upper']


def test_failures_are_recorded_per_row_and_retried(db, docs, pk):
    t, ids = docs
    state = {'broken': True}

    def fragile(text):
        if state['broken'] and text.startswith('b'):
            raise ValueError(f'cannot handle {text}')
        return text[::-1]

    healthy = db.apply(ObjectModel('len', object=len).to_listener('docs', key='txt', identifier='len'))
    listener = db.apply(ObjectModel('fragile', object=fragile).to_listener('docs', key='txt', identifier='fragile'))
    assert outputs_by_txt(db, listener) == {'hello': 'olleh', 'bonjour': None, 'hola': 'aloh'}
    failures = db.failures('fragile')
    assert [(f['source'], f['attempts']) for f in failures] == [(ids[1], 1)]
    assert 'ValueError: cannot handle bonjour' in failures[0]['error']
    job = [j for j in db.jobs('fragile') if j['kind'] == 'backfill'][0]
    assert (job['status'], job['done'], job['failed']) == ('success', 3, 1)

    new_id = t.insert_one({'txt': 'bye'}).execute()  # fails too, but the write and other listeners go on
    assert t.get(**{pk: new_id}).execute()['txt'] == 'bye'
    assert outputs_by_txt(db, healthy)['bye'] == 3
    assert len(db.failures('fragile')) == 2

    state['broken'] = False
    assert db.retry('fragile') == 0
    assert outputs_by_txt(db, listener) == {'hello': 'olleh', 'bonjour': 'ruojnob', 'hola': 'aloh', 'bye': 'eyb'}
    assert db.failures('fragile') == []


def test_wrong_output_shape_is_a_row_failure(db, docs):
    model = ObjectModel('vec', object=lambda s: np.ones(2 if s == 'hola' else 3), datatype='vector[float32:3]')
    listener = db.apply(model.to_listener('docs', key='txt'))
    assert db[listener.outputs].count().execute() == 2
    (failure,) = db.failures('vec')
    assert 'vector of 3 float32' in failure['error']


def test_bad_listeners_fail_at_apply_before_any_work(db, docs):
    with pytest.raises(UnknownField, match=r"key 'text' is not a field of the select on 'docs'; fields: _?id, txt"):
        db.apply(ObjectModel('m', object=str).to_listener('docs', key='text'))
    with pytest.raises(UnknownField, match="key 'n'"):
        db.apply(ObjectModel('m', object=str).to_listener(db['docs'].select('txt'), key='n'))
    with pytest.raises(ComponentError, match='object must be callable, got int'):
        ObjectModel('m', object=42)
    with pytest.raises(ComponentError, match=r'model must be a Model, got function \(wrap a function'):
        Listener(model=lambda x: x, select='docs', key='txt')
    with pytest.raises(QueryError, match='no listener outputs'):
        db['docs'].select().outputs('nope__12345678').execute()
    assert db.show('Listener') == [] and db.show('Model') == []
    assert [t for t in db.databackend.table_names() if t.startswith('_outputs')] == []


def test_multi_input_keys_and_batched_models(db, docs):
    pair = ObjectModel('pair', object=lambda a, b: f'{a}:{b}').to_listener('docs', key=('txt', 'lang'))
    named = ObjectModel('named', object=lambda text, times: text * times).to_listener(
        'docs', key={'txt': 'text', 'n': 'times'})
    calls = []

    def batch_len(texts):
        calls.append(len(texts))
        return [len(x) for x in texts]

    batched = ObjectModel('blen', object=batch_len, batched=True, batch_size=2).to_listener('docs', key='txt')
    for listener in (pair, named, batched):
        db.apply(listener)
    row = db['docs'].select().outputs(pair.predict_id, named.predict_id, batched.predict_id).get(txt='hola').execute()
    assert row[pair.outputs] == 'hola:es' and row[named.outputs] == 'holaholahola' and row[batched.outputs] == 4
    assert max(calls) == 2  # the model's batch size bounds each call


def test_vector_outputs_are_inferred(db, docs):
    listener = db.apply(ObjectModel('emb', object=lambda s: np.full(4, len(s), dtype=np.float32)).to_listener(
        'docs', key='txt'))
    row = db['docs'].select().outputs(listener.predict_id).get(txt='hola').execute()
    assert row[listener.outputs].dtype == np.float32 and row[listener.outputs].tolist() == [4.0] * 4
    assert db.load('Table', listener.outputs).fields[listener.outputs] == 'vector[float32:4]'


def test_predict_and_custom_model_class(db):
    class Doubler(Model):
        def predict(self, x):
            return 2 * x

    db.apply(ObjectModel('inc', object=lambda x: x + 1))
    assert db.predict('inc', 1) == 2
    assert Doubler('d').predict_batches([1, 2]) == [2, 4]


@pytest.mark.requires(persistent=True, reason='another process opens the database after this one')
def test_component_with_a_lambda_reloads_in_a_new_process(db, db_uri, tmp_path, docs, pk):
    factor = 3
    db.apply(ObjectModel('times', object=lambda s: s * factor).to_listener('docs', key='txt', identifier='times'))
    db.close()  # DuckDB lets one process at a time open a file
    script = textwrap.dedent(f"""
        from superduper import superduper
        db = superduper({db_uri!r}, artifact_store='filesystem://{tmp_path}/artifacts', progress=False)
        print(db.predict('times', 'ab'))
        db['docs'].insert_one({{{pk!r}: 'new', 'txt': 'xy'}}).execute()  # followed in this process too
        listener = db.load('Listener', 'times')
        print(db['docs'].select().outputs(listener.predict_id).get(**{{{pk!r}: 'new'}}).execute()[listener.outputs])
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ['ababab', 'xyxyxy']


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_a_listener_that_cannot_load_blocks_nothing_else(db_uri, backend, tmp_path):
    """Its artifact is gone: writes to other tables, other listeners and applies go on; status names it and why."""
    from superduper import superduper

    artifacts = f'filesystem://{tmp_path}/artifacts'
    db = superduper(db_uri, artifact_store=artifacts, progress=False, follow_changes=False)
    db.apply(Table('docs', fields={'txt': 'str'}))
    db.apply(Table('other', fields={'txt': 'str'}))
    broken = db.apply(ObjectModel('broken', object=lambda x: x + '!').to_listener('docs', key='txt', identifier='broken'))
    fine = db.apply(ObjectModel('fine', object=str.upper, datatype='str').to_listener('other', key='txt', identifier='fine'))
    key = db.show('Model', 'broken', 0)['record']['object']['_artifact']
    db.close()
    lost = next((tmp_path / 'artifacts').rglob(key))
    lost.rename(lost.with_name(f'{key}.missing'))  # the model's pickle is lost (kept aside to bring back later)

    again = superduper(db_uri, artifact_store=artifacts, progress=False, follow_changes=False)
    try:
        again['other'].insert([{'txt': 'still works'}]).execute()
        assert [r[fine.outputs] for r in again[fine.outputs].select().execute()] == ['STILL WORKS']
        again.apply(Table('third', fields={'n': 'int'}))
        assert broken.outputs in again.databackend.table_names()
        # its own table's writes succeed; its rows are failures naming the cause, retried once it loads again
        (row,) = again['docs'].insert([{'txt': 'waits'}]).execute()
        status = {s['listener']: s for s in again.status()}
        assert "Listener 'broken'" not in (status['fine']['problem'] or '')
        assert 'cannot be loaded' in status['broken']['problem'] and key[:8] in status['broken']['problem']
        assert status['broken']['failed'] == 1
        (failure,) = again.failures('broken')
        assert failure['source'] == row and 'cannot be loaded' in failure['error'] and key[:8] in failure['error']
        lost.with_name(f'{key}.missing').rename(lost)
        assert again.retry('broken') == 0
        assert again[broken.outputs].get(_source=row).execute()[broken.outputs] == 'waits!'
    finally:
        again.close()


def test_a_consumer_stopping_cannot_start_itself_again():
    """A consumer thread that, mid-work, asks for the consumer to be started (as a listener list reloaded then does)
    while it is being stopped does not leave a thread running."""
    import threading

    from superduper.base.background import BackgroundConsumer

    working, release = threading.Event(), threading.Event()

    def consume() -> int:
        working.set()
        release.wait(5)
        consumer.start(0.01)  # what Listening does when it sees listeners while working
        return 1

    consumer = BackgroundConsumer('superduper-test-consumer', consume, lambda: 0)
    consumer.start(0.01)
    assert working.wait(5)
    stopper = threading.Thread(target=consumer.stop)
    stopper.start()
    release.set()
    stopper.join(10)
    time.sleep(0.05)
    assert not [t for t in threading.enumerate() if t.name == 'superduper-test-consumer']


def test_a_closed_datalayer_starts_no_thread(sqlite_db):
    import threading

    sqlite_db.apply(Table('docs', fields={'txt': 'str'}))
    sqlite_db.apply(ObjectModel('up', object=str.upper).to_listener('docs', key='txt', identifier='up'))
    listening = sqlite_db.listening
    sqlite_db.close()
    listening.records(fresh=True)  # a reload after close (a late write, a save) must not start the consumer again
    listening._start_consumer()
    assert not [t for t in threading.enumerate() if t.name == 'superduper-changes' and t.is_alive()]
