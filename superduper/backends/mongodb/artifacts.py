"""Content-addressed artifact store in MongoDB GridFS, the same interface as the fsspec store
(``superduper.backends.artifacts.ArtifactStore``).

A blob is one GridFS file whose ``_id`` is the SHA-256 of its bytes. GridFS writes the chunks first and the file
document last, so a crash never leaves a readable partial artifact under its key. A file or directory is stored as
a tar archive under the hash of its contents, keyed ``<hash>/<name>`` as on the filesystem, and unpacked into the
local cache when read.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
from typing import Any, Iterator

from superduper.backends.artifacts import file_key
from superduper.backends.mongodb.connection import connect, redact
from superduper.base.exceptions import NotFound

BUCKET = '_superduper_artifacts'


class MongoArtifactStore:
    """``artifact_store='mongodb://host:27017/<database>'`` (or ``mongomock://<database>``): GridFS bucket
    ``_superduper_artifacts`` in that database."""

    is_local = False

    def __init__(self, uri: str, cache_dir: str = '.superduper/cache', database: Any = None):
        import gridfs

        if database is None:
            database = connect(uri).database
        self.uri = uri
        self.database = database
        self.cache_dir = os.path.abspath(cache_dir)
        self.fs = gridfs.GridFS(database, collection=BUCKET)

    def __repr__(self) -> str:
        return f'MongoArtifactStore({redact(self.uri)!r})'

    @property
    def location(self) -> None:
        """Not recorded: a URI may hold a password, and the database's own GridFS is found from its URI anyway."""
        return None

    @staticmethod
    def _check(key: str) -> str:
        if not isinstance(key, str) or not key or '/' in key or key.startswith('.'):
            raise NotFound(f'{key!r} is not an artifact key')
        return key

    def _put(self, key: str, data: bytes, **metadata: Any) -> None:
        import gridfs.errors

        if self.fs.exists(key):
            return
        try:
            self.fs.put(data, _id=key, **metadata)
        except gridfs.errors.FileExists:  # another writer stored the same content first
            pass

    # ---- blobs ------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        self._put(key, data)
        return key

    def get_bytes(self, key: str) -> bytes:
        import gridfs.errors

        try:
            return self.fs.get(self._check(key)).read()
        except gridfs.errors.NoFile:
            raise NotFound(f'artifact {key!r} is not in {redact(self.uri)} (GridFS bucket {BUCKET!r})') from None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._check(key))

    def delete(self, key: str) -> None:
        self.fs.delete(self._check(key.partition('/')[0]))

    def keys(self) -> Iterator[str]:
        for doc in self.database[f'{BUCKET}.files'].find({}, {'_id': 1}):
            yield doc['_id']

    # ---- files and directories ----------------------------------------------------------------------------
    def put_file(self, local_path: str) -> str:
        """Copy a local file or directory in; the key is ``<content hash>/<name>``."""
        local_path, digest, name = file_key(local_path)
        if not self.fs.exists(digest):
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode='w') as tar:
                tar.add(local_path, arcname=name)
            self._put(digest, buffer.getvalue(), filename=name)
        return f'{digest}/{name}'

    def get_file(self, key: str) -> str:
        """A local path to the stored file or directory, unpacked into the cache on first use."""
        import gridfs.errors

        digest, _, name = key.partition('/')
        local = os.path.join(self.cache_dir, self._check(digest), name)
        if os.path.exists(local):
            return local
        try:
            data = self.fs.get(digest).read()
        except gridfs.errors.NoFile:
            raise NotFound(f'file artifact {key!r} is not in {redact(self.uri)} (GridFS bucket {BUCKET!r})') from None
        os.makedirs(os.path.dirname(local), exist_ok=True)
        # unpack beside the final place, then rename: a reader never sees a half-written file
        staging = tempfile.mkdtemp(prefix='.tmp-', dir=os.path.dirname(local))
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            tar.extractall(staging, filter='data')
        try:
            os.rename(os.path.join(staging, name), local)
        except OSError:
            if not os.path.exists(local):
                raise
        finally:
            _remove(staging)
        return local


def _remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
