"""What is particular to MongoDB: defaults (seed 000), GridFS artifacts, the Mongo query API, schemaless and
existing collections, and change streams.

The shared suite (test_query.py, test_listeners.py, ...) runs on mongomock too. Change streams need a replica set,
which mongomock does not have: their consumer is tested here against a stand-in stream, and end to end only when
``SUPERDUPER_TEST_MONGODB_URI`` names a server (``mongodb://host:27017``; change streams need a replica set).
"""

from __future__ import annotations

import os
import sys
import time
import uuid

import pytest
from bson import ObjectId, Timestamp

from superduper import Document, ObjectModel, Table, superduper
from superduper.base.exceptions import (
    ConfigError,
    DatabaseError,
    MissingDependency,
    NotFound,
    QueryError,
    UnknownTable,
)

MONGODB_URI = os.environ.get('SUPERDUPER_TEST_MONGODB_URI')
needs_server = pytest.mark.skipif(
    not MONGODB_URI, reason='no MongoDB server: set SUPERDUPER_TEST_MONGODB_URI=mongodb://host:27017 to test on one'
)


@pytest.fixture
def uri():
    from superduper.backends.mongodb.connection import mock_client

    name = f'sd_mongo_{uuid.uuid4().hex[:8]}'
    yield f'mongomock://{name}'
    mock_client().drop_database(name)


@pytest.fixture
def mdb(uri, tmp_path):
    """A mongomock database with everything in it by default: metadata, and artifacts in GridFS."""
    db = superduper(uri, home=str(tmp_path / 'home'), progress=False)
    yield db
    db.close()


def upper(db, source='docs', identifier='upper', **kwargs):
    listener = ObjectModel(identifier, object=lambda x: x.upper()).to_listener(source, key='txt', identifier=identifier,
                                                                               **kwargs)
    return db.apply(listener)


def outputs(db, listener) -> dict:
    return {r['_source']: r[listener.outputs] for r in db[listener.outputs].select().execute()}


# ---- connecting (seed 000) -------------------------------------------------------------------------------------
def test_defaults_keep_metadata_and_artifacts_in_the_database(mdb, uri):
    from superduper.backends.mongodb.artifacts import MongoArtifactStore
    from superduper.backends.mongodb.data_backend import MongoDataBackend
    from superduper.backends.mongodb.metadata import MongoMetaDataStore

    assert isinstance(mdb.databackend, MongoDataBackend)
    assert isinstance(mdb.metadata, MongoMetaDataStore)
    assert isinstance(mdb.artifact_store, MongoArtifactStore)
    upper(mdb, source=mdb['docs'].insert_one({'txt': 'a'}).execute() and 'docs')
    collections = mdb.databackend.table_names()
    assert '_superduper_components' in collections and '_superduper_artifacts.files' in collections
    # the same as naming all three
    same = superduper(uri, metadata_store=uri, artifact_store=uri, progress=False)
    assert same.show('Listener') == ['upper'] and same.predict('upper', 'x') == 'X'


def test_uris_are_checked(tmp_path):
    with pytest.raises(ConfigError, match='names no database'):
        superduper('mongodb://localhost:27017')
    with pytest.raises(ConfigError, match='names no database'):
        superduper('mongomock://')
    with pytest.raises(DatabaseError, match='cannot reach MongoDB at mongodb://user:\\*\\*\\*@127.0.0.1:1/x'):
        superduper('mongodb://user:secret@127.0.0.1:1/x?serverSelectionTimeoutMS=300')


def test_missing_driver_names_the_extra(monkeypatch):
    import superduper.backends.mongodb.connection as connection

    monkeypatch.setattr(connection, '_mock_client', None)
    monkeypatch.setitem(sys.modules, 'mongomock', None)
    with pytest.raises(MissingDependency, match=r"'mongomock://' needs the mongomock package.*superduper\[mongomock\]"):
        superduper('mongomock://test')
    monkeypatch.setitem(sys.modules, 'pymongo', None)
    with pytest.raises(MissingDependency, match=r"pip install 'superduper\[mongodb\]'"):
        superduper('mongodb://localhost/x')


# ---- GridFS artifacts ----------------------------------------------------------------------------------------
def test_gridfs_store_blobs_files_and_directories(mdb, tmp_path):
    store = mdb.artifact_store
    key = store.put_bytes(b'weights')
    assert store.put_bytes(b'weights') == key and store.get_bytes(key) == b'weights' and store.exists(key)
    assert list(store.keys()) == [key]
    folder = tmp_path / 'model'
    (folder / 'sub').mkdir(parents=True)
    (folder / 'sub' / 'w.bin').write_bytes(b'\x01\x02')
    file_key = store.put_file(str(folder))
    assert file_key.endswith('/model')
    local = store.get_file(file_key)
    assert open(os.path.join(local, 'sub', 'w.bin'), 'rb').read() == b'\x01\x02'
    store.delete(key)
    with pytest.raises(NotFound, match='is not in mongomock://'):
        store.get_bytes(key)
    with pytest.raises(NotFound, match='is not an artifact key'):
        store.get_bytes('../etc/passwd')


def test_models_and_lazy_values_live_in_gridfs(mdb, tmp_path):
    import pickle

    from superduper import DataType, LazyArtifact

    dt = DataType('p', encoder=pickle.dumps, decoder=pickle.loads, encodable='lazy_artifact')
    mdb.apply(Table('things', fields={'x': dt}))
    (i,) = mdb['things'].insert([{'x': {'big': list(range(5))}}]).execute()
    row = mdb['things'].find_one({'_id': i}).execute()
    assert isinstance(row['x'], LazyArtifact) and row.unpack()['x'] == {'big': list(range(5))}
    assert not (tmp_path / 'home' / 'artifacts').exists()  # nothing on the local disk


# ---- the Mongo query API ------------------------------------------------------------------------------------
@pytest.fixture
def people(mdb):
    t = mdb['people']
    t.insert_many([
        {'name': 'ann', 'age': 31, 'tags': ['a', 'b'], 'address': {'city': 'Paris'}},
        {'name': 'bob', 'age': 25, 'address': {'city': 'Rome'}},
        {'name': 'cy', 'age': 40, 'vip': True},
    ]).execute()
    return t


def names(query) -> list[str]:
    return sorted(r['name'] for r in query.execute())


def test_documents_keep_their_own_shape(mdb, people):
    ann = people.find_one({'name': 'ann'}).execute()
    assert isinstance(ann['_id'], ObjectId)
    assert ann == {'_id': ann['_id'], 'name': 'ann', 'age': 31, 'tags': ['a', 'b'], 'address': {'city': 'Paris'}}
    assert 'vip' not in people.find_one({'name': 'bob'}).execute()  # absent fields stay absent
    raw = mdb.databackend.database['people'].find_one({'name': 'cy'})
    assert raw == {'_id': raw['_id'], 'name': 'cy', 'age': 40, 'vip': True}


def test_find_filters_and_projections(people):
    assert names(people.find({'age': {'$gte': 30}})) == ['ann', 'cy']
    assert names(people.find({'address.city': 'Rome'})) == ['bob']
    assert names(people.find({'name': {'$nin': ['ann', 'bob']}})) == ['cy']
    assert names(people.find({'age': {'$not': {'$gt': 30}}})) == ['bob']
    assert names(people.find({'$nor': [{'name': 'ann'}, {'age': 40}]})) == ['bob']
    assert names(people.find({'$and': [{'age': {'$gt': 20}}, {'$or': [{'vip': True}, {'name': 'bob'}]}]})) == ['bob', 'cy']
    bob = people.find_one({'name': 'bob'}, {'age': 1}).execute()
    assert set(bob) == {'_id', 'age'} and bob['age'] == 25  # _id unless excluded, as in MongoDB
    assert people.find_one({'name': 'bob'}, {'age': 1, '_id': 0}).execute() == {'age': 25}
    assert people.find_one({'name': 'ann'}, {'address.city': 1, '_id': False}).execute() == {'address.city': 'Paris'}
    assert [r['name'] for r in people.find().order_by('age', descending=True).limit(2).execute()] == ['cy', 'ann']
    assert people.count_documents({'age': {'$lt': 35}}).execute() == 2
    assert people.find_one({'name': 'zed'}).execute() is None


def test_updates_deletes_and_aggregate(people):
    assert people.update_one({'age': {'$gt': 20}}, {'$set': {'seen': True}}).execute() == 1
    assert people.count_documents({'seen': True}).execute() == 1
    assert people.update_many({}, {'$set': {'address.country': 'EU'}}).execute() == 3
    assert people.find_one({'name': 'cy'}).execute()['address'] == {'country': 'EU'}
    assert people.delete_one({'age': {'$gt': 20}}).execute() == 1
    assert people.count_documents().execute() == 2
    total = people.aggregate([{'$group': {'_id': None, 'age': {'$sum': '$age'}}}]).execute().tolist()
    assert len(total) == 1 and total[0]['age'] in (65, 71, 56)
    assert people.delete_many({}).execute() == 2
    assert people.count_documents().execute() == 0


def test_bad_mongo_queries_name_the_problem(mdb, people, sqlite_db):
    with pytest.raises(QueryError, match=r"unsupported operator '\$regex' on field 'name'"):
        people.find({'name': {'$regex': '^a'}})
    with pytest.raises(QueryError, match=r"unsupported filter operator '\$where'"):
        people.find({'$where': 'true'})
    with pytest.raises(QueryError, match=r"\$in on field 'age' takes a list"):
        people.find({'age': {'$in': 3}})
    with pytest.raises(QueryError, match=r'\$or takes a list of filters'):
        people.find({'$or': {'a': 1}})
    with pytest.raises(QueryError, match=r"unsupported update operator '\$inc' on 'people'; supported: \$set"):
        people.update_many({}, {'$inc': {'age': 1}})
    with pytest.raises(QueryError, match='name the fields to return'):
        people.find({}, {'age': 0})
    with pytest.raises(QueryError, match='list of stages'):
        people.aggregate({'$match': {}})
    with pytest.raises(QueryError, match='cannot change the primary key'):
        people.update_many({}, {'$set': {'_id': 1}}).execute()
    sqlite_db.apply(Table('t', fields={'a': 'int'}))
    with pytest.raises(QueryError, match=r"aggregate\(\) runs MongoDB pipelines; 't' is a table"):
        sqlite_db['t'].aggregate([{'$match': {}}]).execute()
    assert people.count_documents().execute() == 3  # nothing changed


def test_values_mongodb_cannot_store_are_refused_cleanly(people):
    import numpy as np

    with pytest.raises(DatabaseError, match=r"insert into collection 'people' failed: .*cannot encode"):
        people.insert_many([{'name': 'ok'}, {'name': 'bad', 'v': np.ones(2)}]).execute()
    assert people.count_documents().execute() == 3


# ---- listeners, vector search and existing collections ----------------------------------------------------------
def test_listener_on_a_collection_written_by_another_client(mdb):
    raw = mdb.databackend.database['notes']
    raw.insert_many([{'txt': 'one'}, {'txt': 'two', 'extra': [1, 2]}, {'other': 'no txt'}])
    listener = upper(mdb, source='notes')
    got = outputs(mdb, listener)
    assert sorted(v for v in got.values()) == ['ONE', 'TWO'] and all(isinstance(k, ObjectId) for k in got)
    assert len(mdb.failures('upper')) == 1  # the document without 'txt'
    stored = mdb.databackend.database[listener.outputs].find_one({'_source': raw.find_one({'txt': 'one'})['_id']})
    assert stored['_id'] == stored['_source']  # outputs are keyed by the source _id
    new = mdb['notes'].insert_one({'txt': 'three'}).execute()  # through the API: followed at once
    assert outputs(mdb, listener)[new] == 'THREE'
    rows = mdb['notes'].find({'txt': 'two'}).outputs(listener.predict_id).execute().tolist()
    assert rows[0][listener.outputs] == 'TWO' and rows[0]['extra'] == [1, 2]


def test_listener_errors_name_the_collection_and_key(mdb):
    with pytest.raises(UnknownTable, match=r"collection 'nope' does not exist; collections: \(none\)"):
        upper(mdb, source='nope')
    mdb['docs'].insert_one({'text': 'x'}).execute()
    with pytest.raises(Exception, match=r"key 'txt' is not a field of the select on 'docs'.*fields: _id, text"):
        upper(mdb, source='docs')
    assert mdb.show('Listener') == []


def test_metadata_elsewhere_keeps_objectid_keys(uri, tmp_path):
    """Data in MongoDB, metadata in SQLite: failed rows keyed by ObjectId are recorded and retried."""
    state = {'broken': True}

    def fragile(text):
        if state['broken'] and text == 'b':
            raise ValueError('not yet')
        return text.upper()

    db = superduper(uri, metadata_store=f'sqlite://{tmp_path}/meta.db', artifact_store=f'filesystem://{tmp_path}/a',
                    progress=False)
    ids = db['docs'].insert_many([{'txt': 'a'}, {'txt': 'b'}]).execute()
    listener = db.apply(ObjectModel('f', object=fragile).to_listener('docs', key='txt', identifier='f'))
    assert [f['source'] for f in db.failures('f')] == [ids[1]] and isinstance(ids[1], ObjectId)
    state['broken'] = False
    assert db.retry('f') == 0 and outputs(db, listener) == {ids[0]: 'A', ids[1]: 'B'}
    db.close()


# ---- change streams: the consumer, against a stand-in for the server's stream -----------------------------------
class Oplog:
    """Stands in for the server: a list of change events, and streams over it that resume by position."""

    def __init__(self):
        self.events: list[dict] = []
        self.fail_with: Exception | None = None

    def add(self, op: str, coll: str, key, second: int) -> None:
        event = {'operationType': op, 'ns': {'db': 'x', 'coll': coll}, 'documentKey': {'_id': key},
                 'clusterTime': Timestamp(second, 1)}
        self.events.append(event)

    def watch(self, pipeline, start_after=None, **options):
        return Stream(self, pipeline, len(self.events) if start_after is None else start_after['_data'])


class Stream:
    def __init__(self, oplog: Oplog, pipeline: list, position: int):
        self.oplog, self.position, self.alive = oplog, position, True
        match = pipeline[0]['$match']
        self.collections = match.get('ns.coll', {}).get('$in')

    @property
    def resume_token(self) -> dict:
        return {'_data': self.position}

    def try_next(self):
        if self.oplog.fail_with is not None:
            raise self.oplog.fail_with
        while self.position < len(self.oplog.events):
            event = self.oplog.events[self.position]
            self.position += 1
            if self.collections is None or event['ns']['coll'] in self.collections:
                return event
        return None

    def close(self):
        self.alive = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class Consumer:
    """What the background consumer does each round: ``db.listening.work(limit)``."""

    def __init__(self, db):
        self.db = db

    def consume(self, limit: int = 1000) -> int:
        return self.db.listening.work(limit)


def with_stream(db, oplog: Oplog) -> Consumer:
    feed = db.changes
    feed.supported = True
    feed._watch = oplog.watch
    return Consumer(db)


def test_change_stream_events_reach_the_outputs_in_batches_and_resume(uri, tmp_path):
    oplog = Oplog()
    db = superduper(uri, home=str(tmp_path / 'home'), progress=False, follow_changes=False)
    raw = db.databackend.database['docs']
    first = raw.insert_one({'txt': 'first'}).inserted_id
    feed = with_stream(db, oplog)
    listener = upper(db)
    assert outputs(db, listener) == {first: 'FIRST'}

    # another client writes; the stream reports it
    second = raw.insert_one({'txt': 'second'}).inserted_id
    oplog.add('insert', 'docs', second, 10)
    raw.update_one({'_id': first}, {'$set': {'txt': 'changed'}})
    oplog.add('update', 'docs', first, 11)
    oplog.add('insert', 'elsewhere', 'x', 12)  # a collection no listener reads
    assert feed.consume(limit=1) == 1  # batches are bounded
    assert feed.consume() == 1  # the filtered stream skips 'elsewhere'
    assert outputs(db, listener) == {first: 'CHANGED', second: 'SECOND'}
    raw.delete_one({'_id': second})
    oplog.add('delete', 'docs', second, 13)
    assert feed.consume() == 1 and outputs(db, listener) == {first: 'CHANGED'}
    assert feed.consume() == 0
    db.close()

    # a new process resumes where the last consumer stopped, even for writes made while nothing ran
    third = raw.insert_one({'txt': 'third'}).inserted_id
    oplog.add('insert', 'docs', third, 14)
    again = superduper(uri, home=str(tmp_path / 'home'), progress=False, follow_changes=False)
    feed = with_stream(again, oplog)
    assert feed.consume() == 1
    assert outputs(again, again.load('Listener', 'upper')) == {first: 'CHANGED', third: 'THIRD'}
    again.close()


def test_change_stream_skips_what_the_writer_followed_and_reloads_listeners(mdb):
    oplog = Oplog()
    raw = mdb.databackend.database['docs']
    key = raw.insert_one({'txt': 'a'}).inserted_id
    feed = with_stream(mdb, oplog)
    listener = upper(mdb)
    # the writing process followed this document at time 20 (its acknowledgement): older events are skipped
    mdb.databackend.database['_superduper_acks'].insert_one({'_id': {'c': 'docs', 'k': key}, 't': Timestamp(20, 1)})
    raw.update_one({'_id': key}, {'$set': {'txt': 'b'}})
    oplog.add('update', 'docs', key, 19)
    feed.consume()
    assert outputs(mdb, listener) == {key: 'A'}  # skipped: not recomputed
    oplog.add('update', 'docs', key, 21)
    feed.consume()
    assert outputs(mdb, listener) == {key: 'B'}

    reloads = []
    original = mdb.listening.reload
    mdb.listening.reload = lambda: (reloads.append(1), original())
    oplog.add('insert', '_superduper_components', 'some-uuid', 22)  # another process applied a component
    feed.consume()
    assert reloads == [1]


def test_change_stream_history_lost_recomputes_every_listener(mdb):
    import pymongo.errors

    oplog = Oplog()
    raw = mdb.databackend.database['docs']
    key = raw.insert_one({'txt': 'a'}).inserted_id
    feed = with_stream(mdb, oplog)
    listener = upper(mdb)
    raw.update_one({'_id': key}, {'$set': {'txt': 'missed'}})  # its event is gone from the oplog
    oplog.fail_with = pymongo.errors.OperationFailure('resume point no longer in the oplog', code=286)
    assert feed.consume() == 1  # every followed document, queued again, computed in the same round
    assert outputs(mdb, listener) == {key: 'MISSED'}
    oplog.fail_with = None
    saved = mdb.databackend.database['_superduper_change_streams'].find_one({'_id': 'resume'})
    assert saved['token'] == {'_data': len(oplog.events)}  # a fresh start, from now


def test_a_transient_error_never_turns_change_streams_off(mdb, monkeypatch):
    """An error asking the server whether it has change streams is reported and asked again later; it does not
    switch following off for the life of the process."""
    import pymongo.errors

    from superduper.backends.mongodb import change_stream

    raw = mdb.databackend.database['docs']
    raw.insert_one({'txt': 'a'})
    listener = upper(mdb)
    feed = mdb.changes
    answers = [pymongo.errors.AutoReconnect('server restarting'), True]

    def ask():
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(mdb.databackend, 'supports_change_streams', ask)
    feed._supported = None
    assert feed.supported is False  # for now, with the reason shown
    (status,) = mdb.status()
    assert 'cannot tell whether the server has change streams' in status['problem'] and 'restarting' in status['problem']
    assert status['pending'] is None and status['listener'] == listener.identifier
    monkeypatch.setattr(change_stream, 'RECHECK_SECONDS', 0.0)
    feed._recheck_at = 0.0
    assert feed.supported is True and mdb.status()[0]['problem'] is None
    feed._supported = False  # a standalone server or mongomock: shown, not hidden
    feed.problem = 'the server has no change streams (not a replica set)'
    assert 'no change streams' in mdb.status()[0]['problem']


def test_without_change_streams_other_clients_writes_wait_for_the_next_backfill(mdb):
    """mongomock and standalone servers: only API writes are followed (the documented fallback)."""
    assert mdb.changes.supported is False and mdb.listening.work() == 0
    listener = upper(mdb, source=mdb['docs'].insert_one({'txt': 'a'}).execute() and 'docs')
    mdb.databackend.database['docs'].insert_one({'txt': 'raw'})
    assert sorted(outputs(mdb, listener).values()) == ['A']
    assert mdb.status()[0]['pending'] is None  # not counted: never a made-up 0


# ---- on a real server ---------------------------------------------------------------------------------------
@pytest.fixture
def server_uri():
    import pymongo

    from conftest import mongodb_uri

    uri = mongodb_uri(f'sd_server_{uuid.uuid4().hex[:8]}')
    yield uri
    client = pymongo.MongoClient(uri)
    client.drop_database(uri.split('/')[-1].split('?')[0])
    client.close()


@needs_server
def test_gridfs_on_a_server(server_uri, tmp_path):
    db = superduper(server_uri, home=str(tmp_path / 'home'), progress=False)
    key = db.artifact_store.put_bytes(b'on the server')
    assert db.artifact_store.get_bytes(key) == b'on the server'
    listener = upper(db, source=db['docs'].insert_one({'txt': 'x'}).execute() and 'docs')
    db.close()
    again = superduper(server_uri, home=str(tmp_path / 'home'), progress=False)
    assert again.predict('upper', 'y') == 'Y' and again.load('Listener', 'upper').uuid == listener.uuid
    again.close()


@needs_server
def test_change_streams_follow_other_clients_on_a_replica_set(server_uri, tmp_path):
    import pymongo

    db = superduper(server_uri, home=str(tmp_path / 'home'), progress=False, poll_interval=0.1)
    if not db.changes.supported:
        db.close()
        pytest.skip('the server is not a replica set: no change streams')
    calls = []
    model = ObjectModel('upper', object=lambda x: (calls.append(x), x.upper())[1])
    listener = db.apply(model.to_listener(db['docs'].insert_one({'txt': 'a'}).execute() and 'docs', key='txt',
                                          identifier='upper'))
    other = pymongo.MongoClient(server_uri)
    collection = other.get_default_database()['docs']
    key = collection.insert_one({'txt': 'from elsewhere'}).inserted_id
    deadline = time.time() + 20
    while outputs(db, listener).get(key) != 'FROM ELSEWHERE':
        assert time.time() < deadline, 'the change stream did not deliver the write'
        time.sleep(0.1)
    api_key = db['docs'].insert_one({'txt': 'api'}).execute()
    time.sleep(1.5)  # the stream has seen the API write by now, and skipped it
    assert calls.count('api') == 1 and outputs(db, listener)[api_key] == 'API'
    db.close()
    # written while no consumer runs: the next one resumes from the saved token
    late = collection.insert_one({'txt': 'late'}).inserted_id
    again = superduper(server_uri, home=str(tmp_path / 'home'), progress=False, follow_changes=False)
    while again.listening.work():
        pass
    assert outputs(again, again.load('Listener', 'upper'))[late] == 'LATE'
    again.close()
    other.close()


def test_seed_002_wraps_a_database_object():
    """Seed 002: ``db = superduper(pymongo.MongoClient().my_db)``; here with mongomock's client."""
    import mongomock

    client = mongomock.MongoClient()
    db = superduper(client.my_db)
    assert db.databackend.uri == 'mongomock://my_db'
    db['docs'].insert_one(Document({'x': 1})).execute()
    assert client.my_db.docs.find_one()['x'] == 1  # the caller's own client sees the writes
    model = db.apply(ObjectModel('double', object=lambda x: 2 * x))
    assert db.predict('double', 4) == 8 and model.version == 0
    with pytest.raises(QueryError, match='a pymongo Database or a scikit-learn estimator, got int'):
        superduper(42)
