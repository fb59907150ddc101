"""What the servers the tests start from a tool of their own share (the BigQuery emulator, pglite-server): a child
process on free ports that ends with the test process, its output kept in a file, stopped politely then killed; and
the ``setup`` entry point the README's test command runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import IO, Any, Callable


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _ends_with_parent() -> None:
    """In the server's process, before it starts: Linux ends it when the test process dies without stopping it."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ServedProcess:
    """``command`` run with its output in ``log``, once ``ready(self)`` says it serves (within ``timeout`` seconds,
    else it is stopped and the error shows the end of its output)."""

    def __init__(self, command: list[str], log: IO[bytes], ready: Callable[['ServedProcess'], bool], what: str,
                 timeout: float, **popen: Any):
        self.log = log
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_ends_with_parent,
                                        **popen)
        deadline = time.time() + timeout
        while not ready(self):
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError(f'{what} did not serve within {timeout:.0f} s (exit status '
                                   f'{self.process.returncode}); its output:\n{self.output()[-3000:]}')
            time.sleep(0.1)

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors='replace')

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def setup_main(setup: Callable[[], None], command: str, what: str, skipped: str) -> None:
    """``python tests/<server>.py setup``: in CI a failure stops the run; elsewhere the tests needing it are skipped,
    saying why."""
    if sys.argv[1:] != ['setup']:
        raise SystemExit(f'usage: {command}')
    try:
        setup()
    except (SystemExit, subprocess.CalledProcessError, OSError) as e:
        message = f'{what}: {e}'
        if os.environ.get('CI'):
            raise SystemExit(message) from None
        print(f'{message} ({skipped} will be skipped)', file=sys.stderr)
