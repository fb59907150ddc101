"""PostgreSQL with pgvector 0.8 for the tests: PGlite (PostgreSQL 18 compiled to WASM, run by Node) with the pgvector
0.8.7 it bundles, served over the PostgreSQL wire protocol by ``pglite-server`` (``@electric-sql/pglite-socket``).
The other PostgreSQL the suite runs on (``pgserver``'s) has pgvector 0.6.2, without iterative index scans.

``python tests/pglite_server.py setup`` installs ``PACKAGES`` with npm (the README's test command runs it): once, at
``FOLDER`` (outside the checkout, so that fresh clones share it), skipped while the folder holds them. ``Server()``
serves an in-memory database on a free port; ``stop()`` ends it.

pglite-server multiplexes its client connections onto PGlite's one session: statements from several connections
take turns (a transaction has the database to itself until it ends), and what a connection leaves in the session is
seen by the others. psycopg names the statements it prepares ``_pg3_0``, ``_pg3_1``, ... on every connection, so a
second connection preparing one fails ("prepared statement "_pg3_0" already exists"): ``Server`` turns psycopg's
prepared statements off on the connections SQLAlchemy makes to it (as for a transaction-pooling PgBouncer), and
``connect()`` makes a raw one the same way.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from local_servers import ServedProcess, free_port, setup_main

PACKAGES = {'@electric-sql/pglite': '0.5.14', '@electric-sql/pglite-pgvector': '0.0.15',
            '@electric-sql/pglite-socket': '0.2.17'}
#: where the packages are installed: SUPERDUPER_TEST_PGLITE_DIR, else the user's cache folder
FOLDER = Path(os.environ.get('SUPERDUPER_TEST_PGLITE_DIR')
              or Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'superduper' / 'pglite')
#: written last by ``setup``: the folder holds ``PACKAGES``
READY = FOLDER / 'superduper-ready.txt'
SETUP_COMMAND = 'python tests/pglite_server.py setup'
SERVER_SCRIPT = FOLDER / 'node_modules' / '@electric-sql' / 'pglite-socket' / 'dist' / 'scripts' / 'server.js'
#: client connections pglite-server accepts at once (it refuses more): a superduper engine's pool and its
#: readers, and the tests' own connections
MAX_CONNECTIONS = 32


def _pins() -> list[str]:
    return [f'{name}@{version}' for name, version in PACKAGES.items()]


def ready() -> bool:
    return READY.exists() and READY.read_text().split() == _pins() and SERVER_SCRIPT.exists()


def missing() -> str | None:
    """Why the server cannot be started here (no Node or npm, or ``setup`` not run), or ``None``."""
    for tool in ('node', 'npm'):
        if shutil.which(tool) is None:
            return f'no `{tool}` on PATH: PGlite (pgvector 0.8) runs on Node.js'
    if not ready():
        return f'no PGlite packages at {FOLDER}: run `{SETUP_COMMAND}`'
    return None


def setup() -> None:
    """Install ``PACKAGES`` at ``FOLDER`` unless they are there. Peer dependencies are not installed
    (``--legacy-peer-deps``): pglite-socket names every PGlite extension package as one; only pgvector is used."""
    if ready():
        print(f'PGlite packages ready at {FOLDER}')
        return
    if shutil.which('npm') is None or shutil.which('node') is None:
        raise SystemExit('no `node` or `npm` on PATH: PGlite (pgvector 0.8) runs on Node.js')
    started = time.time()
    shutil.rmtree(FOLDER, ignore_errors=True)
    FOLDER.mkdir(parents=True)
    (FOLDER / 'package.json').write_text(json.dumps({'private': True, 'dependencies': PACKAGES}, indent=2) + '\n')
    subprocess.run(['npm', 'install', '--no-audit', '--no-fund', '--legacy-peer-deps', '--loglevel=error'],
                   cwd=FOLDER, check=True)
    READY.write_text('\n'.join(_pins()) + '\n')
    print(f'PGlite packages installed at {FOLDER} in {time.time() - started:.0f} s')


class Server:
    """pglite-server with pgvector on 127.0.0.1:``port``, an in-memory database, until ``stop``; ``uri`` is
    superduper's URI for it."""

    def __init__(self, timeout: float = 60.0):
        reason = missing()
        if reason is not None:
            raise RuntimeError(reason)
        self.port = free_port()
        self.uri = f'postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres'
        self._listening = False
        self.served = ServedProcess(
            ['node', str(SERVER_SCRIPT), '--db=memory://', '--host=127.0.0.1', f'--port={self.port}',
             '--extensions=@electric-sql/pglite-pgvector:vector', f'--max-connections={MAX_CONNECTIONS}'],
            tempfile.NamedTemporaryFile(prefix='sd-pglite-', suffix='.log'),
            lambda served: 'listening' in served.output(), f'pglite-server on port {self.port}', timeout, cwd=FOLDER)
        self._unprepared()

    def _unprepared(self) -> None:
        import sqlalchemy as sa

        sa.event.listen(sa.engine.Engine, 'connect', self._on_connect)
        self._listening = True

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        info = getattr(dbapi_connection, 'info', None)  # psycopg's ConnectionInfo (other drivers: none)
        if info is not None and getattr(info, 'port', None) == self.port and info.host == '127.0.0.1':
            dbapi_connection.prepare_threshold = None

    def connect(self, **kwargs: Any) -> Any:
        """A psycopg connection to the server, with prepared statements off."""
        import psycopg

        return psycopg.connect(self.uri, prepare_threshold=None, **kwargs)

    def output(self) -> str:
        return self.served.output()

    def stop(self) -> None:
        if self._listening:
            import sqlalchemy as sa

            sa.event.remove(sa.engine.Engine, 'connect', self._on_connect)
            self._listening = False
        self.served.stop()  # its log is a temporary file: removed


if __name__ == '__main__':
    setup_main(setup, SETUP_COMMAND, 'PGlite packages not installed', 'the pgvector 0.8 tests')
