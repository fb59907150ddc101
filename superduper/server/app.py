"""The ASGI application of ``superduper serve``: the REST API (``routes``), the web console (``console``), health,
readiness and Prometheus metrics, behind API keys (``keys``), request size limits and one error format
(``errors``)."""

from __future__ import annotations

import contextlib
import time
from typing import Any, AsyncIterator, Awaitable, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from superduper.base.exceptions import SuperduperError
from superduper.server import errors
from superduper.server.metrics import route_of
from superduper.server.service import Service, requires
from superduper.server.settings import ServeSettings

UPLOAD_PATH = '/api/v1/components'
Receive = Callable[[], Awaitable[dict]]


class BodyTooLarge(HTTPException):
    """Raised while the body is read (an HTTP error, so that FastAPI passes it on rather than calling it a body it
    could not parse)."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large(limit))


class Guard:
    """ASGI middleware around everything: refuses bodies over the size limit (413, before they are read whole),
    answers an unexpected error with a 500 that names an incident (the traceback goes to the log only) and times each
    request for the metrics."""

    def __init__(self, app: Any, service: Service):
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Receive, send: Callable) -> None:
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        settings = self.service.settings
        limit = settings.max_upload_bytes if scope['path'] == UPLOAD_PATH else settings.max_body_bytes
        declared = next((v for k, v in scope['headers'] if k == b'content-length'), None)
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            return await _send_json(send, 413, errors.body(_too_large(limit), 'RequestTooLarge'))
        started, status, seen = time.perf_counter(), [0], [0]

        async def counted() -> dict:  # a body without a length is counted as it arrives
            message = await receive()
            seen[0] += len(message.get('body', b''))
            if seen[0] > limit:
                raise BodyTooLarge(limit)
            return message

        async def watched(message: dict) -> None:
            if message['type'] == 'http.response.start':
                status[0] = message['status']
            await send(message)

        try:  # a declared length is the most the server reads
            await self.app(scope, receive if declared is not None else counted, watched)
        except Exception as error:  # not re-raised: the server would drop the connection and print the traceback
            if status[0]:
                raise
            status[0] = 500
            await _send_json(send, 500, errors.internal(error, f"{scope['method']} {scope['path']}"))
        finally:
            self.service.metrics.observe(scope['method'], route_of(scope), status[0], time.perf_counter() - started)


def _too_large(limit: int) -> str:
    return f'the request body is larger than the limit of {limit} bytes'


async def _send_json(send: Callable, status: int, content: dict) -> None:
    response = JSONResponse(content, status_code=status)
    await send({'type': 'http.response.start', 'status': status, 'headers': response.raw_headers})
    await send({'type': 'http.response.body', 'body': response.body})


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(errors.HTTPProblem)
    async def problem(request: Request, error: errors.HTTPProblem) -> JSONResponse:
        return JSONResponse(errors.body(error.message, 'HTTPError'), status_code=error.status, headers=error.headers)

    @app.exception_handler(SuperduperError)
    async def superduper_error(request: Request, error: SuperduperError) -> JSONResponse:
        return JSONResponse(errors.body(str(error), type(error).__name__), status_code=errors.status_of(error))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        field = '.'.join(str(p) for p in first.get('loc', ()))
        return JSONResponse(errors.body(f'{field}: {first.get("msg", "invalid")}', 'InvalidRequest', field),
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = 'RequestTooLarge' if isinstance(error, BodyTooLarge) else 'HTTPError'
        return JSONResponse(errors.body(str(error.detail), kind), status_code=error.status_code,
                            headers=getattr(error, 'headers', None))



def create_app(db: Any, settings: ServeSettings | None = None) -> FastAPI:
    """The server's application over an open datalayer (``superduper serve`` runs it with uvicorn)."""
    from superduper.server import console, routes

    service = Service(db, settings or ServeSettings())
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = service.settings.threads
        yield

    app = FastAPI(lifespan=lifespan, title='superduper', version='1', description='Models, search and tables of one superduper '
                  'database. Authenticate with `Authorization: Bearer <API key>`.')
    app.state.service = service

    _handlers(app)
    app.include_router(routes.router)
    app.include_router(console.router)

    @app.get('/health', tags=['server'], summary='the server is up')
    def health() -> dict:
        return {'status': 'ok'}

    @app.get('/ready', tags=['server'], summary='the database answers', responses={503: {}})
    def ready() -> Response:
        try:
            db.components_generation(fresh=True)
        except Exception as e:
            errors.log.warning('not ready: %s', e)
            return JSONResponse(errors.body('the database does not answer', 'NotReady'), status_code=503)
        return JSONResponse({'status': 'ready'})

    @app.get('/metrics', tags=['server'], summary='Prometheus metrics', dependencies=[Depends(requires('read'))])
    def metrics() -> Response:
        data, content_type = service.metrics.exposition()
        return Response(data, media_type=content_type)

    app.add_middleware(Guard, service=service)
    return app
