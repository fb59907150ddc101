"""The local BigQuery emulator the BigQuery tests run on: ``local-bigquery`` 0.3.2 in a Python 3.13 venv of its own,
with DuckDB 1.5.5's extensions installed from PyPI packages (0.3.2 runs offline with them; 0.4.0 fetches extensions
at run time and fails offline). The tests' client side stays in the project's venv.

``python tests/bigquery_emulator.py setup`` makes the venv (the README's test command runs it): once, at ``VENV``
(outside the checkout, so that fresh clones share it), skipped while a venv there holds ``REQUIREMENTS``.
``start()`` serves it on free ports with its data in a temporary folder (``/dev/shm`` where there is one).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from local_servers import ServedProcess, free_port, setup_main

REQUIREMENTS = ['local-bigquery==0.3.2', 'duckdb==1.5.5', 'duckdb-extensions==1.5.5'] + [
    f'duckdb-extension-{name}==1.5.5' for name in ('icu', 'json', 'ducklake', 'spatial', 'parquet')]
EXTENSIONS = ('icu', 'json', 'ducklake', 'spatial', 'parquet')
#: where the venv is made: SUPERDUPER_TEST_BIGQUERY_VENV, else the user's cache folder
VENV = Path(os.environ.get('SUPERDUPER_TEST_BIGQUERY_VENV')
            or Path(os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache') / 'superduper' / 'bigquery-emulator')
#: written last by ``setup``: the venv is whole, with these requirements
READY = VENV / 'superduper-ready.txt'
SETUP_COMMAND = 'python tests/bigquery_emulator.py setup'
PROJECT = 'test-project'


def ready() -> bool:
    return READY.exists() and READY.read_text().split() == REQUIREMENTS


def python313() -> str | None:
    """A Python 3.13 interpreter: ``python3.13`` where it runs, else one of pyenv's versions."""
    found = shutil.which('python3.13')
    if found and subprocess.run([found, '--version'], capture_output=True).returncode == 0:
        return found
    root = os.environ.get('PYENV_ROOT') or str(Path.home() / '.pyenv')
    candidates = sorted(glob.glob(f'{root}/versions/3.13*/bin/python3.13'))
    return candidates[-1] if candidates else None


def setup() -> None:
    """Make the emulator's venv at ``VENV`` unless one with ``REQUIREMENTS`` is there; extensions are installed
    into DuckDB's folder under the venv (``home/.duckdb``), which the emulator is started with as its home."""
    if ready():
        print(f'BigQuery emulator venv ready at {VENV}')
        return
    python = python313()
    if python is None:
        raise SystemExit('no Python 3.13 found (python3.13, or pyenv\'s versions/3.13*): the BigQuery emulator '
                         '(local-bigquery 0.3.2) needs it')
    started = time.time()
    shutil.rmtree(VENV, ignore_errors=True)
    subprocess.run([python, '-m', 'venv', str(VENV)], check=True)
    subprocess.run([str(VENV / 'bin' / 'pip'), 'install', '-q', *REQUIREMENTS], check=True)
    (VENV / 'home').mkdir()
    subprocess.run([str(VENV / 'bin' / 'python'), '-c',
                    'import sys; from duckdb_extensions import import_extension\n'
                    'for name in sys.argv[1:]: import_extension(name)', *EXTENSIONS],
                   check=True, env={**os.environ, 'HOME': str(VENV / 'home')})
    READY.write_text('\n'.join(REQUIREMENTS) + '\n')
    print(f'BigQuery emulator venv made at {VENV} in {time.time() - started:.0f} s')


class Emulator:
    """The emulator serving on 127.0.0.1 at ``endpoint`` until ``stop``."""

    def __init__(self, timeout: float = 60.0):
        if not ready():
            raise RuntimeError(f'no BigQuery emulator venv at {VENV}: run `{SETUP_COMMAND}`')
        shm = '/dev/shm' if os.path.isdir('/dev/shm') and os.access('/dev/shm', os.W_OK) else None
        self.data = tempfile.mkdtemp(prefix='sd-bigquery-', dir=shm)  # tmpfs: each DML writes files
        port = free_port()
        self.endpoint = f'http://127.0.0.1:{port}'
        try:
            self.served = ServedProcess(
                [str(VENV / 'bin' / 'local-bigquery'), 'serve', '--host', '127.0.0.1', '--port', str(port),
                 '--grpc-port', str(free_port()), '--project', PROJECT, '--data-dir', os.path.join(self.data, 'data')],
                open(os.path.join(self.data, 'emulator.log'), 'w+b'), lambda served: self._answers(),
                f'the BigQuery emulator on {self.endpoint}', timeout, env={**os.environ, 'HOME': str(VENV / 'home')})
        except RuntimeError:
            shutil.rmtree(self.data, ignore_errors=True)
            raise

    def _answers(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(f'{self.endpoint}/bigquery/v2/projects/{PROJECT}/datasets', timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def output(self) -> str:
        return self.served.output()

    def stop(self) -> None:
        self.served.stop()
        shutil.rmtree(self.data, ignore_errors=True)


if __name__ == '__main__':
    setup_main(setup, SETUP_COMMAND, 'BigQuery emulator venv not made', 'the BigQuery emulator tests')
