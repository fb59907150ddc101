"""The ``superduper`` command: ``apply``, ``show``, ``remove``, ``export``, ``start`` (a worker), ``status``, ``retry``,
``trust``.

Exit codes: 0 success, 1 a superduper error (the message says what), 2 bad usage.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NoReturn, Optional

import typer

app = typer.Typer(help='Bring AI models to the databases you already run.', no_args_is_help=True,
                  pretty_exceptions_enable=False, add_completion=False)


def _connect(uri: str, **overrides: Any) -> Any:
    from superduper import superduper

    return superduper(uri, progress=False, **overrides)


def _fail(error: Exception) -> NoReturn:
    typer.echo(f'error: {error}', err=True)
    raise typer.Exit(1)


@contextmanager
def _database(uri: str, create: bool = False, **overrides: Any) -> Iterator[Any]:
    """A connection for one command; a superduper error becomes its message and exit code 1. Unless ``create``,
    a database that does not exist is an error (looking at it must not make it)."""
    from superduper.backends.registry import missing_database
    from superduper.base.exceptions import SuperduperError

    try:
        if not create and (reason := missing_database(uri)):
            _fail(reason)
        db = _connect(uri, **{'follow_changes': False, **overrides})
    except SuperduperError as e:
        _fail(e)
    try:
        yield db
    except SuperduperError as e:
        _fail(e)
    finally:
        db.close()


def _pairs(values: list[str], option: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, text = value.partition('=')
        if not sep or not name:
            raise typer.BadParameter(f'{value!r}: expected name=value', param_hint=option)
        pairs[name] = text
    return pairs


def _table(rows: list[tuple], header: tuple) -> None:
    """Rows as aligned columns under a header."""
    cells = [tuple(map(str, header))] + [tuple(map(str, r)) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for row in cells:
        typer.echo('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@app.command()
def backends() -> None:
    """What each kind of database can do here (capabilities each backend declares), as a Markdown table."""
    from superduper.backends.registry import capability_table

    typer.echo(capability_table())


@app.command()
def start(
    uri: str = typer.Argument(..., help='database URI, e.g. postgresql://user@host/db'),
    batch: int = typer.Option(1000, help='changes taken per round'),
    interval: float = typer.Option(0.5, help='seconds between looks for changes when idle'),
    once: bool = typer.Option(False, help='follow what is pending (waiting for leases of dead workers to run out), '
                              'then exit'),
    compute: Optional[str] = typer.Option(None, help="where outputs are computed: 'local' (here), a Dask "
                                          'scheduler or a Ray cluster, e.g. dask://tcp://host:8786, ray://host:6379'),
) -> None:
    """Run a worker: follow every recorded change (writes from any client, queued backfills), retry failures and run
    schedules' ticks (each once, whichever worker claims it).
    Several workers share the work (FOR UPDATE SKIP LOCKED on PostgreSQL and MariaDB). With --compute dask://...
    (or ray://...) the worker reads the changes and the cluster computes them."""
    from superduper.base.exceptions import SuperduperError

    from superduper.backends.registry import missing_database

    try:
        if reason := missing_database(uri):
            _fail(reason)
        db = _connect(uri, follow_changes=False, compute=compute)
    except SuperduperError as e:
        _fail(e)
    from superduper.runtime import worker

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    typer.echo(f'worker following {db.databackend}, computing with {db.compute}', err=True)
    try:
        worker.run(db, stop, batch, interval, done=(lambda: not _pending(db)) if once else None,
                   report=lambda text: typer.echo(text, err=True))
    except KeyboardInterrupt:
        pass
    finally:
        db.close()


def _pending(db: Any) -> int:
    """Changes still waiting, claimed or not (a claim of a dead worker comes free when its lease runs out)."""
    return sum(s['pending'] or 0 for s in db.status())


@app.command()
def status(uri: str = typer.Argument(..., help='database URI')) -> None:
    """Per listener: rows with outputs, changes pending, rows failed, and the lag of the oldest pending change; then,
    if there are schedules, each one's latest tick and how it ended."""
    with _database(uri) as db:
        report = db.status()
        timed = db.schedule_status()
    rows = [(r['listener'], r['table'], r['done'], 'unknown' if r['pending'] is None else r['pending'], r['failed'],
             '-' if r['lag_seconds'] is None else f'{r["lag_seconds"]:.1f}', r['problem'] or '') for r in report]
    _table(rows, ('listener', 'table', 'done', 'pending', 'failed', 'lag (s)', 'problem'))
    for r in report:
        if r.get('switch'):
            typer.echo(r['switch'])
    if timed:
        typer.echo('')
        _table([(r['schedule'], r['cron'], r['action'], r['last_tick'] or '-', r['status'] or '-', r['error'] or '')
                for r in timed], ('schedule', 'cron', 'action', 'last tick', 'status', 'error'))


@app.command()
def retry(uri: str = typer.Argument(..., help='database URI'),
          listener: str = typer.Argument(..., help='listener identifier')) -> None:
    """Recompute the rows a listener failed on (after fixing the model, say). Exit code 1 if some still fail."""
    with _database(uri) as db:
        left = db.retry(listener)
    typer.echo(f'{left} rows still fail')
    raise typer.Exit(1 if left else 0)


@app.command()
def show(uri: str = typer.Argument(..., help='database URI'),
         type_id: Optional[str] = typer.Argument(None, help='component type, e.g. Listener'),
         identifier: Optional[str] = typer.Argument(None, help='component identifier'),
         version: Optional[int] = typer.Option(None, help="print this version's stored record (JSON)")) -> None:
    """List components: all of them, one type's, one component's versions, or one version's record."""
    with _database(uri) as db:
        if version is not None:
            if type_id is None or identifier is None:
                raise typer.BadParameter('give TYPE and ID with --version')
            typer.echo(json.dumps(db.show(type_id, identifier, version), indent=2, default=str))
            return
        records = [r for r in db.metadata.all() if type_id in (None, r['type_id'])
                   and identifier in (None, r['identifier'])]
        if type_id is not None and identifier is not None and not records:
            db.show(type_id, identifier, 0)  # raises NotFound, naming what exists
    if identifier is not None:
        _table([(r['version'], r['uuid'], f'{r["created_at"]:%Y-%m-%d %H:%M:%S}') for r in records],
               ('version', 'uuid', 'created'))
        return
    versions: dict[tuple[str, str], list[int]] = {}
    for r in records:
        versions.setdefault((r['type_id'], r['identifier']), []).append(r['version'])
    _table([(t, i, ','.join(map(str, v))) for (t, i), v in versions.items()], ('type', 'identifier', 'versions'))


@app.command()
def apply(path: Path = typer.Argument(..., help='a package folder or .zip (from export)'),
          uri: str = typer.Argument(..., help='database URI to apply it to'),
          var: list[str] = typer.Option([], '--var', help='a template variable, name=value (repeatable)'),
          trust: bool = typer.Option(False, '--trust', help='allow pickled objects in the package (runs their code)'),
          no_wait: bool = typer.Option(False, '--no-wait', help='return once the backfills are queued, printing their '
                                       'job ids: workers (superduper start) compute them'),
          ) -> None:
    """Apply an exported component or template to a database, filling in its variables."""
    from superduper.components.template import Template

    from superduper.base.exceptions import SuperduperError

    variables = _pairs(var, '--var')
    try:
        template = Template.read(path, trust=trust)  # a bad package is refused before the database is touched
    except SuperduperError as e:
        _fail(e)
    # without waiting, this process computes nothing (outputs='async'): it queues the work and returns
    with _database(uri, create=True, **({'outputs': 'async'} if no_wait else {})) as db:
        try:
            jobs, component = db.apply(template, wait=False, **variables) if no_wait else \
                ([], db.apply(template, **variables))
        finally:
            template.close()
        typer.echo(f'applied {component.type_id} {component.identifier!r} version {component.version} to {uri}')
        for job in jobs:
            typer.echo(f'queued job {job.id}')


@app.command()
def remove(uri: str = typer.Argument(..., help='database URI'),
           type_id: str = typer.Argument(..., help='component type, e.g. Application'),
           identifier: str = typer.Argument(..., help='component identifier'),
           version: Optional[int] = typer.Option(None, help='only this version (default: every version)'),
           recursive: bool = typer.Option(False, '--recursive', help='also remove what it uses that nothing else uses'),
           force: bool = typer.Option(False, '--force', help='even if other components use it; tables with rows too'),
           ) -> None:
    """Remove a component (an Application with its components), its outputs and unused artifacts."""
    with _database(uri) as db:
        db.remove(type_id, identifier, version, recursive=recursive, force=force)
    typer.echo(f'removed {type_id} {identifier!r}' + ('' if version is None else f' version {version}'))


@app.command()
def export(uri: str = typer.Argument(..., help='database URI'),
           type_id: str = typer.Argument(..., help='component type, e.g. Application'),
           identifier: str = typer.Argument(..., help='component identifier'),
           path: Path = typer.Argument(..., help='a new folder, or a file ending in .zip'),
           version: Optional[int] = typer.Option(None, help='this version (default: the latest)'),
           sub: list[str] = typer.Option([], '--sub', help='make a template: value=variable (repeatable)'),
           ) -> None:
    """Export a component with its artifacts and requirements, as a package others can `superduper apply`."""
    from superduper.components.template import Template

    substitutions = _pairs(sub, '--sub')
    with _database(uri) as db:
        component = db.load(type_id, identifier, version)
        written = Template(identifier, component=component, substitutions=substitutions).export(path)
    typer.echo(f'exported {type_id} {identifier!r} version {component.version} to {written}')


@app.command()
def trust(uri: str = typer.Argument(..., help='database URI'),
          yes: bool = typer.Option(False, '--yes', help='sign what is listed (after reading the list)'),
          ) -> None:
    """List the stored code (pickles) this deployment did not sign, e.g. written before signatures existed or by
    another deployment, with what loading it would import; with --yes, sign it so that it loads here."""
    from superduper.runtime import stored_code

    with _database(uri) as db:
        entries = stored_code.unsigned_code(db.metadata, db.artifact_store)
        if not entries:
            typer.echo('every stored code artifact is signed by this deployment')
            return
        rows = [(e['type_id'], e['identifier'], e['version'], e['key'][:12],
                 ', '.join(e['imports'][:5]) + (' ...' if len(e['imports']) > 5 else '') if e['intact']
                 else 'CHANGED: its bytes are not those its key names; never signed') for e in entries]
        _table(rows, ('type', 'identifier', 'version', 'artifact', 'imports'))
        if not yes:
            typer.echo('nothing signed: run again with --yes if you trust all of the above')
            return
        count = stored_code.sign_stored_code(db.metadata, entries)
        typer.echo(f'signed {count} code artifact(s)')


@app.command()
def serve(
    uri: str = typer.Argument(..., help='database URI'),
    host: str = typer.Option('127.0.0.1', help='address to listen on'),
    port: int = typer.Option(8000, help='port to listen on (0: any free port)'),
    anonymous: str = typer.Option('none', help="what a request without an API key may do: none, read or write"),
    outputs: Optional[str] = typer.Option(None, help="'async': writes only record changes and workers (superduper "
                                          "start) compute them, so the server loads no model for writes"),
    max_body: int = typer.Option(16 * 2**20, help='largest request body in bytes'),
    threads: Optional[int] = typer.Option(None, help='requests computed at once (default: twice the cores, at least 4)'),
    worker: bool = typer.Option(False, '--worker', help='also run a worker in this process (as superduper start '
                                'does: changes of every client, retries, schedules)'),
) -> None:
    """Serve the REST API (/api/v1, OpenAPI at /docs), the web console (/) and Prometheus metrics (/metrics).
    Requests need an API key (superduper apikey create) unless --anonymous allows them."""
    from pydantic import ValidationError

    from superduper.server import serve as run
    from superduper.server.settings import ServeSettings

    if outputs not in (None, 'sync', 'async'):
        raise typer.BadParameter(f'{outputs!r}: expected sync or async', param_hint='--outputs')
    try:
        settings = ServeSettings(host=host, port=port, anonymous=anonymous, max_body_bytes=max_body,
                                 **({} if threads is None else {'threads': threads}))
    except ValidationError as e:
        raise typer.BadParameter('; '.join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()))
    from superduper.runtime import worker as worker_loop

    # in sync mode the server also computes what other clients write, as an embedded process does, unless its own
    # worker does that (and more: schedules)
    follow = not worker and outputs in (None, 'sync')
    overrides = {'follow_changes': follow, **({} if outputs is None else {'outputs': outputs})}
    with _database(uri, create=True, **overrides) as db:
        background = worker_loop.in_background(db) if worker else None
        try:  # uvicorn stops on SIGINT and SIGTERM, finishing the requests under way
            run(db, settings, started=lambda h, p: typer.echo(f'serving http://{h}:{p} (OpenAPI at /docs)', err=True))
        finally:
            if background is not None:
                background[1].set()
                worker_loop.wait_stopped(background[0])


apikey = typer.Typer(help='API keys of superduper serve: create, list, revoke.', no_args_is_help=True)
app.add_typer(apikey, name='apikey')


@apikey.command('create')
def apikey_create(uri: str = typer.Argument(..., help='database URI'),
                  name: str = typer.Argument(..., help='who or what the key is for'),
                  scope: str = typer.Option('read', help='read, write (read and change rows) or admin (everything)'),
                  ) -> None:
    """Make an API key and print it (only its hash is stored: it cannot be shown again)."""
    from superduper.server.keys import ApiKeys

    with _database(uri) as db:
        typer.echo(ApiKeys(db.metadata).create(name, scope))


@apikey.command('list')
def apikey_list(uri: str = typer.Argument(..., help='database URI')) -> None:
    """The API keys: id, name, scope, when made and when revoked."""
    from superduper.server.keys import ApiKeys

    with _database(uri) as db:
        keys = ApiKeys(db.metadata).list()
    _table([(k['id'], k['name'], k['scope'], f"{k['created_at']:%Y-%m-%d %H:%M:%S}",
             '-' if k['revoked_at'] is None else f"{k['revoked_at']:%Y-%m-%d %H:%M:%S}") for k in keys],
           ('id', 'name', 'scope', 'created', 'revoked'))


@apikey.command('revoke')
def apikey_revoke(uri: str = typer.Argument(..., help='database URI'),
                  key_id: str = typer.Argument(..., help='the id of the key (superduper apikey list)')) -> None:
    """Revoke an API key: the server refuses it within seconds."""
    from superduper.server.keys import ApiKeys

    with _database(uri) as db:
        ApiKeys(db.metadata).revoke(key_id)
    typer.echo(f'revoked {key_id}')


def main() -> None:
    """Run the command; an error is one line on stderr and exit code 1 (``--debug`` or ``SUPERDUPER_DEBUG=1``: the
    traceback)."""
    debug = '--debug' in sys.argv[1:] or os.environ.get('SUPERDUPER_DEBUG', '') not in ('', '0')
    if '--debug' in sys.argv:
        sys.argv.remove('--debug')
    try:
        app()
    except Exception as e:
        if debug:
            raise
        from superduper.base.exceptions import SuperduperError

        text = str(e) if isinstance(e, SuperduperError) else f'{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ""}'
        typer.echo(f'error: {text} (--debug shows where)', err=True)
        sys.exit(1)


if __name__ == '__main__':
    sys.exit(main())
