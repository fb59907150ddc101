"""Content-addressed artifact store on any fsspec filesystem.

``filesystem://path`` is the local disk; ``memory://name``, ``s3://bucket/prefix`` and every other fsspec
protocol work as fsspec provides them. A blob is stored once under the SHA-256 of its bytes; a file or
directory under the hash of its contents, as ``<key>/<name>``. Writes go to a temporary name first and are
renamed into place, so a crash never leaves a partial artifact under its final key.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any, Iterator

from superduper.base.exceptions import ConfigError, NotFound

_CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, uri: str, cache_dir: str = '.superduper/cache'):
        import fsspec

        protocol, _, path = uri.partition('://')
        if not path and protocol != 'memory':
            raise ConfigError(f"artifact store URI {uri!r} has no path; expected e.g. 'filesystem://./artifacts'")
        self.uri = uri
        self.protocol = 'file' if protocol in ('filesystem', 'file') else protocol
        if self.protocol == 'file':
            path = os.path.abspath(path)
        elif self.protocol == 'memory':
            path = '/' + (path.strip('/') or 'superduper')
        try:
            self.fs = fsspec.filesystem(self.protocol)
        except (ImportError, ValueError) as e:
            raise ConfigError(f'artifact store {uri!r}: fsspec cannot open protocol {self.protocol!r}: {e}') from e
        self.root = path.rstrip('/')
        self.cache_dir = os.path.abspath(cache_dir)
        self.fs.makedirs(self.root, exist_ok=True)

    def __repr__(self) -> str:
        return f'ArtifactStore({self.uri!r})'

    @property
    def location(self) -> str:
        """The URI that reaches this store from anywhere (absolute path), as recorded in the metadata."""
        return f'filesystem://{self.root}' if self.protocol == 'file' else f'{self.protocol}://{self.root.lstrip("/")}'

    @property
    def is_local(self) -> bool:
        return self.protocol == 'file'

    def _path(self, key: str) -> str:
        if not key or '/' in key or key.startswith('.'):
            raise NotFound(f'{key!r} is not an artifact key')
        return f'{self.root}/{key}'

    def _write_atomically(self, final: str, write: Any) -> None:
        tmp = f'{self.root}/.tmp-{uuid.uuid4().hex}'
        try:
            write(tmp)
            self.fs.mv(tmp, final, recursive=True)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    # ---- blobs ------------------------------------------------------------------------------------------
    def put_bytes(self, data: bytes) -> str:
        key = hashlib.sha256(data).hexdigest()
        path = self._path(key)
        if not self.fs.exists(path):
            self._write_atomically(path, lambda tmp: self.fs.pipe_file(tmp, data))
        return key

    def get_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise NotFound(f'artifact {key!r} is not in {self.uri}') from None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def delete(self, key: str) -> None:
        path = self._path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    def keys(self) -> Iterator[str]:
        for path in self.fs.ls(self.root, detail=False):
            name = path.rstrip('/').rsplit('/', 1)[-1]
            if not name.startswith('.'):
                yield name

    # ---- files and directories ----------------------------------------------------------------------------
    def put_file(self, local_path: str) -> str:
        """Copy a local file or directory in; the key is ``<content hash>/<name>``."""
        local_path, digest, name = file_key(local_path)
        folder = self._path(digest)
        if not self.fs.exists(f'{folder}/{name}'):
            def copy(tmp: str) -> None:
                self.fs.makedirs(tmp, exist_ok=True)
                self.fs.put(local_path, f'{tmp}/{name}', recursive=os.path.isdir(local_path))

            self._write_atomically(folder, copy)
        return f'{digest}/{name}'

    def get_file(self, key: str) -> str:
        """A local path to the stored file or directory (downloaded to the cache for remote stores)."""
        digest, _, name = key.partition('/')
        remote = f'{self._path(digest)}/{name}'
        if self.is_local:
            if not os.path.exists(remote):
                raise NotFound(f'file artifact {key!r} is not in {self.uri}')
            return remote
        local = os.path.join(self.cache_dir, digest, name)
        if not os.path.exists(local):
            if not self.fs.exists(remote):
                raise NotFound(f'file artifact {key!r} is not in {self.uri}')
            os.makedirs(os.path.dirname(local), exist_ok=True)
            self.fs.get(remote, local, recursive=self.fs.isdir(remote))
        return local


def file_key(local_path: str) -> tuple[str, str, str]:
    """The absolute path of a local file or directory, the hash of its contents and its name."""
    local_path = os.path.abspath(os.fspath(local_path))
    if not os.path.exists(local_path):
        raise FileNotFoundError(f'no such file or directory: {local_path}')
    return local_path, _hash_tree(local_path), os.path.basename(local_path.rstrip(os.sep))


def _hash_tree(path: str) -> str:
    digest = hashlib.sha256()
    if os.path.isfile(path):
        _hash_file(path, digest)
        return digest.hexdigest()
    for folder, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            full = os.path.join(folder, name)
            digest.update(os.path.relpath(full, path).encode() + b'\0')
            _hash_file(full, digest)
    return digest.hexdigest()


def _hash_file(path: str, digest: Any) -> None:
    with open(path, 'rb') as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
