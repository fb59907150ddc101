"""The artifact store: content-addressed blobs and files on any fsspec filesystem."""

from __future__ import annotations

import hashlib
import os

import pytest

from superduper.backends.artifacts import ArtifactStore
from superduper.base.exceptions import NotFound


@pytest.fixture(params=['filesystem', 'memory'])
def store(request, tmp_path):
    if request.param == 'filesystem':
        return ArtifactStore(f'filesystem://{tmp_path}/store', cache_dir=str(tmp_path / 'cache'))
    return ArtifactStore(f'memory://{tmp_path.name}', cache_dir=str(tmp_path / 'cache'))


def test_blobs_are_content_addressed(store):
    key = store.put_bytes(b'payload')
    assert key == hashlib.sha256(b'payload').hexdigest()
    assert store.put_bytes(b'payload') == key
    assert store.get_bytes(key) == b'payload'
    assert list(store.keys()) == [key]
    store.delete(key)
    assert not store.exists(key)
    with pytest.raises(NotFound, match=key):
        store.get_bytes(key)


def test_files_and_directories(store, tmp_path):
    folder = tmp_path / 'ckpt'
    folder.mkdir()
    (folder / 'a.bin').write_bytes(b'a')
    key = store.put_file(str(folder))
    assert key.endswith('/ckpt')
    local = store.get_file(key)
    assert open(os.path.join(local, 'a.bin'), 'rb').read() == b'a'
    (folder / 'a.bin').write_bytes(b'changed')
    assert store.put_file(str(folder)) != key  # new content, new key; the old copy is untouched
    assert open(os.path.join(store.get_file(key), 'a.bin'), 'rb').read() == b'a'


def test_no_temporary_files_left(tmp_path):
    store = ArtifactStore(f'filesystem://{tmp_path}/s')
    store.put_bytes(b'x' * 1000)
    assert [n for n in os.listdir(tmp_path / 's') if n.startswith('.tmp')] == []


def test_bad_keys_are_refused(store):
    for key in ['../etc/passwd', '', '.hidden']:
        with pytest.raises(NotFound):
            store.get_bytes(key)


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_the_database_remembers_its_artifact_store(db_uri, backend, tmp_path, monkeypatch, caplog):
    """A client started in another folder, with no settings, finds the artifacts the first client stored."""
    from superduper import ObjectModel, superduper

    first_home = tmp_path / 'first'
    first_home.mkdir()
    monkeypatch.chdir(first_home)
    db = superduper(db_uri)  # default store: ./.superduper/artifacts, here
    db.apply(ObjectModel('shout', object=lambda x: x.upper() + '!'))
    db.close()

    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    again = superduper(db_uri)
    if backend != 'mongomock':  # MongoDB keeps its artifacts in its own GridFS, wherever the client runs
        assert again.artifact_store.location == f'filesystem://{first_home}/.superduper/artifacts'
    assert again.predict('shout', 'hi') == 'HI!'
    again.close()

    moved = superduper(db_uri, artifact_store=f'filesystem://{tmp_path}/new-store')  # an explicit store wins
    assert ('replaces' in caplog.text) == (backend != 'mongomock')  # GridFS is never recorded: nothing replaced
    moved.close()
    assert superduper(db_uri).artifact_store.location == f'filesystem://{tmp_path}/new-store'
