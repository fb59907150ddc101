"""Errors as HTTP responses: a superduper error is a 4xx whose message names the thing; anything else is a 500
that says only "internal error" with an id to find the traceback in the server's log (no traceback, path or secret
reaches the caller)."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from superduper.base import exceptions as ex
from superduper.base.trust import UntrustedCode

log = logging.getLogger('superduper.server')

#: the status of each kind of superduper error (the first class in this order that the error is an instance of)
STATUS: list[tuple[type[Exception], int]] = [
    (ex.NotFound, 404),
    (ex.UnknownTable, 404),
    (UntrustedCode, 403),
    (ex.MissingDependency, 501),
    (ex.DatabaseError, 409),
    (ex.SuperduperError, 422),
]


class HTTPProblem(Exception):
    """A request refused before it reached the datalayer (auth, size, a model that is not served)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


def status_of(error: Exception) -> int:
    return next(code for cls, code in STATUS if isinstance(error, cls))


def body(message: str, kind: str, field: str | None = None) -> dict[str, Any]:
    return {'error': message, 'type': kind, **({'field': field} if field else {})}


def internal(error: BaseException, where: str) -> dict[str, Any]:
    """Log the traceback of an unexpected error; what the caller gets instead."""
    incident = uuid.uuid4().hex[:12]
    log.error('internal error %s in %s', incident, where, exc_info=error)
    return body(f'internal error (incident {incident}; the server log has the details)', 'InternalError')
