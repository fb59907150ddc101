"""A ``superduper serve`` process for tests: started on a free port of 127.0.0.1, stopped (SIGTERM, then SIGKILL)
afterwards; its stderr is kept for the test to read."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Iterator

CLI = [sys.executable, '-m', 'superduper.cli']


@contextlib.contextmanager
def server(uri: str, env: dict, *options: str, timeout: float = 60.0) -> Iterator[str]:
    """The base URL of a server process over ``uri`` (``options``: more ``superduper serve`` options)."""
    with tempfile.TemporaryFile('w+') as log:
        process = subprocess.Popen(CLI + ['serve', uri, '--port', '0', *options], env=env, stderr=log,
                                   stdout=subprocess.DEVNULL, text=True)
        try:
            yield _wait_listening(process, log, timeout)
        finally:
            _stop(process)


def _wait_listening(process: subprocess.Popen, log: object, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log.seek(0)  # type: ignore[attr-defined]
        text = log.read()  # type: ignore[attr-defined]
        if found := re.search(r'serving (http://[\d.]+:\d+)', text):
            return found.group(1)
        if process.poll() is not None:
            raise AssertionError(f'the server exited with code {process.returncode}:\n{text[-3000:]}')
        time.sleep(0.05)
    raise AssertionError('the server did not start listening in time')


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
