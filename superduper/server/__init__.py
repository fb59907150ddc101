"""``superduper serve``: a REST API, a web console and Prometheus metrics over one database (the ``serve`` extra:
FastAPI, uvicorn, prometheus-client). ``create_app(db)`` gives the ASGI application; ``serve(db, settings)`` runs
it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from superduper.base.exceptions import MissingDependency

if TYPE_CHECKING:
    from superduper.server.settings import ServeSettings

NEEDED = ('fastapi', 'uvicorn', 'prometheus_client', 'multipart')


def _check_installed() -> None:
    import importlib.util

    missing = [name for name in NEEDED if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingDependency(f"superduper serve needs {', '.join(missing)}, which is not installed: "
                                "pip install 'superduper[serve]'")


def create_app(db: Any, settings: 'ServeSettings | None' = None) -> Any:
    """The server's ASGI application (FastAPI) over the open datalayer ``db``."""
    _check_installed()
    from superduper.server.app import create_app as make

    return make(db, settings)


def serve(db: Any, settings: 'ServeSettings', started: Any = None) -> None:
    """Serve ``db`` until interrupted (SIGINT or SIGTERM); ``started(host, port)`` is called once it listens."""
    _check_installed()
    import uvicorn

    app = create_app(db, settings)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level='warning', access_log=False,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    if started is not None:
        original = server.startup

        async def startup(sockets: Any = None) -> None:
            await original(sockets)
            for s in server.servers:
                for sock in s.sockets:
                    host, port = sock.getsockname()[:2]
                    started(host, port)
                    return

        server.startup = startup  # type: ignore[method-assign]
    server.run()
