"""The ``superduper`` command: ``start`` a worker, ``status``, ``retry``, ``show``, ``remove``.

Exit codes: 0 success, 1 a superduper error (the message says what), 2 bad usage.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import Any, Optional

import typer

app = typer.Typer(help='Bring AI models to the databases you already run.', no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _connect(uri: str, **overrides: Any) -> Any:
    from superduper import superduper

    return superduper(uri, progress=False, **overrides)


def _fail(error: Exception) -> None:
    typer.echo(f'error: {error}', err=True)
    raise typer.Exit(1)


@app.command()
def start(
    uri: str = typer.Argument(..., help='database URI, e.g. postgresql://user@host/db'),
    batch: int = typer.Option(1000, help='changes taken per round'),
    interval: float = typer.Option(0.5, help='seconds between looks for changes when idle'),
    once: bool = typer.Option(False, help='follow what is pending, then exit'),
    compute: Optional[str] = typer.Option(None, help="where outputs are computed: 'local' (here) or a Dask "
                                          'scheduler, e.g. dask://tcp://host:8786'),
) -> None:
    """Run a worker: follow every recorded change (writes from any client, queued backfills) and retry failures.
    Several workers share the work (FOR UPDATE SKIP LOCKED on PostgreSQL and MariaDB). With --compute dask://...
    the worker reads the changes and the Dask cluster computes them."""
    from superduper.base.exceptions import SuperduperError

    try:
        db = _connect(uri, follow_changes=False, compute=compute)
    except SuperduperError as e:
        _fail(e)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    typer.echo(f'worker following {db.databackend}, computing with {db.compute}', err=True)
    failures = 0
    try:
        while not stopping:
            try:
                db.listening.load()
                taken = db.changes.consume(batch) or db.listening.retry_due()
                failures = 0
            except Exception as e:  # the database restarting, a lost connection: back off and go on
                failures += 1
                typer.echo(f'worker: {type(e).__name__}: {e}; retrying', err=True)
                taken = 0
                time.sleep(min(interval * 2**failures, 30.0))
                continue
            if not taken:
                if once:
                    break
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    finally:
        db.close()


@app.command()
def status(uri: str = typer.Argument(..., help='database URI')) -> None:
    """Per listener: rows with outputs, changes pending, rows failed, and the lag of the oldest pending change."""
    from superduper.base.exceptions import SuperduperError

    try:
        db = _connect(uri, follow_changes=False)
        report = db.status()
    except SuperduperError as e:
        _fail(e)
    header = f'{"listener":24} {"table":24} {"done":>8} {"pending":>8} {"failed":>7} {"lag (s)":>8}'
    typer.echo(header)
    for row in report:
        lag = '-' if row['lag_seconds'] is None else f'{row["lag_seconds"]:.1f}'
        typer.echo(f'{row["listener"]:24} {row["table"]:24} {row["done"]:>8} {row["pending"]:>8} '
                   f'{row["failed"]:>7} {lag:>8}')
    db.close()


@app.command()
def retry(uri: str = typer.Argument(..., help='database URI'),
          listener: str = typer.Argument(..., help='listener identifier')) -> None:
    """Recompute the rows a listener failed on (after fixing the model, say)."""
    from superduper.base.exceptions import SuperduperError

    try:
        db = _connect(uri, follow_changes=False)
        left = db.retry(listener)
    except SuperduperError as e:
        _fail(e)
    typer.echo(f'{left} rows still fail')
    db.close()
    raise typer.Exit(1 if left else 0)


@app.command()
def show(uri: str = typer.Argument(..., help='database URI'),
         type_id: Optional[str] = typer.Argument(None, help='component type, e.g. Listener'),
         identifier: Optional[str] = typer.Argument(None, help='component identifier')) -> None:
    """List components: all, one type's identifiers, or one component's versions."""
    from superduper.base.exceptions import SuperduperError

    try:
        db = _connect(uri, follow_changes=False)
        shown = db.show(type_id, identifier)
    except SuperduperError as e:
        _fail(e)
    for item in shown:
        typer.echo('  '.join(map(str, item)) if isinstance(item, tuple) else str(item))
    db.close()


def main() -> None:
    app()


if __name__ == '__main__':
    sys.exit(main())
