"""The REST API under ``/api/v1``: predict, search, tables, components, listeners and jobs. Filters are the JSON
form of ``find()``'s (``{"brand": "a", "price": {"$lt": 10}}``), the same as ``like()`` takes through ``filter``."""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
from fastapi import APIRouter, Depends, File, Form, Query as Param, Request, UploadFile
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from superduper.base.exceptions import InvalidValue, ModelError, NotFound, QueryError, SuperduperError
from superduper.base.query import from_mongo
from superduper.base.video import MEDIA_TYPES
from superduper.components.datatype import Array, BadValue, DataType, resolve_type
from superduper.server.service import requires
from superduper.server.codec import from_json, to_json, without_signatures
from superduper.server.errors import HTTPProblem

router = APIRouter(prefix='/api/v1')
READ, WRITE, ADMIN = Depends(requires('read')), Depends(requires('write')), Depends(requires('admin'))
Filter = Optional[dict[str, Any]]
#: the types a stored value may be served as (a browser plays a video only with its type); anything else is bytes
SERVED_MEDIA_TYPES = frozenset(MEDIA_TYPES.values())
INTERNAL_PREFIX = '_superduper'
ARTIFACT_KEY = re.compile(r'[0-9a-f]{64}(/[A-Za-z0-9._-]{1,200})?')
#: a field type whose stored bytes are a plain file format, so that bytes sent by a client are decoded as it
FILE_FORMATS = ('image', 'audio', 'video')


class Strict(BaseModel):
    model_config = ConfigDict(extra='forbid')


class PredictBody(Strict):
    input: Any = Field(default=None, description='one input (give this or inputs)')
    inputs: Optional[list[Any]] = Field(default=None, description='a batch of inputs', max_length=100_000)


class RerankBody(Strict):
    model: str = Field(description='an applied reranker model, served (serve=True) unless the key is admin')
    query: str = Field(min_length=1, description='the text the candidates are scored against')
    key: str = Field(description='the field holding the text of each row')
    candidates: Optional[int] = Field(default=None, ge=1, le=10_000, description='how many nearest rows are '
                                      'reranked (default 4 n, at least 20)')


class MatchBody(Strict):
    keyword_index: str = Field(description='an applied keyword index over the same table')
    text: str = Field(min_length=1, description='the words to search for')
    weights: Optional[dict[str, float]] = Field(default=None, description='{"vector": w, "keyword": w}, default 1 each')
    rrf_k: float = Field(default=60, ge=0, description='the k of reciprocal rank fusion: sum(weight / (k + rank))')


class SearchBody(Strict):
    query: Union[list[float], dict[str, Any]] = Field(
        description="a vector (a list of numbers), or {key: value} encoded by the index's model")
    n: int = Field(default=10, ge=1, le=10_000, description='how many rows')
    filter: Filter = Field(default=None, description='only rows matching this filter, e.g. {"brand": "a"}')
    columns: Optional[list[str]] = Field(default=None, description='the columns to return (default: all)')
    rerank: Optional[RerankBody] = Field(default=None, description='reorder the nearest rows with a reranker; '
                                         'each result then has rerank_score')
    match: Optional[MatchBody] = Field(default=None, description='hybrid search: fuse the nearest rows with a '
                                       'keyword search by reciprocal rank fusion; each result then has vector_rank '
                                       'and keyword_rank, and score is the fused one')
    table: Optional[str] = Field(default=None, description="the table whose rows come back (default: the index's); "
                                 'for an index over chunks, the table they were cut from: each row once, with its '
                                 'best chunk and position')


class Hit(BaseModel):
    score: Optional[float]
    rerank_score: Optional[float] = None
    vector_rank: Optional[int] = None
    keyword_rank: Optional[int] = None
    chunk: Optional[Any] = None
    position: Optional[int] = None
    row: dict[str, Any]


class SearchResult(BaseModel):
    results: list[Hit]


class Rows(BaseModel):
    rows: list[dict[str, Any]]


class Prediction(BaseModel):
    output: Any = Field(default=None, description='the output for input')
    outputs: Optional[list[Any]] = Field(default=None, description='the outputs for inputs, in order')


def sent(content: Any) -> JSONResponse:
    """A response of values already made JSON (``to_json``): FastAPI's own check of the returned value would
    cost as much as the rest of a search."""
    return JSONResponse(content)


class SelectBody(Strict):
    filter: Filter = None
    columns: Optional[list[str]] = None
    limit: int = Field(default=100, ge=0)
    offset: int = Field(default=0, ge=0)
    order_by: Optional[str] = None
    descending: bool = False
    outputs: list[str] = Field(default_factory=list, description="listeners whose outputs are joined to the rows, "
                               "each as the column _outputs__<listener>")


class InsertBody(Strict):
    rows: list[dict[str, Any]] = Field(min_length=1)


class UpdateBody(Strict):
    filter: dict[str, Any] = Field(description='the rows to change ({} for every row)')
    set: dict[str, Any] = Field(min_length=1, description='field: new value')


class DeleteBody(Strict):
    filter: dict[str, Any] = Field(description='the rows to delete ({} for every row)')


def service(request: Request) -> Any:
    return request.app.state.service


def _capped(service: Any, n: int, what: str) -> None:
    if n > service.settings.max_rows:
        raise HTTPProblem(413, f'{what}: at most {service.settings.max_rows} rows per request, got {n}')


# ---- models -------------------------------------------------------------------------------------------------
@router.get('/models', tags=['models'], summary='models, and which are served as endpoints')
def list_models(request: Request, caller: Any = READ) -> list[dict]:
    db = service(request).db
    found = []
    for identifier in db.metadata.identifiers('Model'):
        record = db.metadata.get('Model', identifier)['record']
        found.append({'identifier': identifier, 'served': bool(record.get('serve')),
                      'input_type': record.get('input_type'), 'datatype': _type_name(record.get('datatype')),
                      'versions': db.metadata.versions('Model', identifier)})
    return found


def _type_name(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else 'DataType'


@router.post('/models/{identifier}/predict', tags=['models'], response_model=Prediction,
             response_model_exclude_none=True, summary='outputs of a served model for one input or a batch')
def predict(identifier: str, body: PredictBody, request: Request, caller: Any = READ) -> JSONResponse:
    """Give ``input`` for one output, or ``inputs`` for a batch. Only models applied with ``serve=True`` are
    endpoints (an admin key may call any model). Bytes travel as ``{"$base64": ...}``."""
    model = _served(request, identifier, caller)
    if (body.input is None) == (body.inputs is None):
        raise InvalidValue('give exactly one of input and inputs')
    batch = body.inputs if body.inputs is not None else [body.input]
    _capped(service(request), len(batch), f'model {identifier!r}')
    inputs = [_model_input(model, x, 'input' if body.inputs is None else f'inputs[{i}]') for i, x in enumerate(batch)]
    outputs = _outputs_json(model, _run_model(model, inputs))
    return sent({'output': outputs[0]} if body.inputs is None else {'outputs': outputs})


def _served(request: Request, identifier: str, caller: Any) -> Any:
    """The latest version of model ``identifier``, if it is served (applied with ``serve=True``) or the caller is
    an admin."""
    model = service(request).component('Model', identifier)
    if not getattr(model, 'serve', False) and not caller.allows('admin'):
        raise HTTPProblem(403, f'model {identifier!r} is not served: apply it with serve=True to make it an endpoint')
    return model


def _model_input(model: Any, value: Any, where: str) -> Any:
    """``value`` as the model takes it, checked against its declared ``input_type`` if it has one."""
    value = from_json(value, where)
    spec = getattr(model, 'input_type', None)
    if spec is None or value is None:
        return value
    ftype = resolve_type(spec)
    try:
        if isinstance(ftype, DataType):
            if ftype.identifier in FILE_FORMATS and isinstance(value, bytes):
                return ftype.decode_one(value)
            ftype.encode_one(value)
            return value
        ftype.encode([value], None)  # type: ignore[arg-type]  # checks the value; scalars and arrays store nothing
    except Exception as e:
        reason = getattr(e, 'reason', '') if isinstance(e, BadValue) else f'{type(e).__name__}: {e}'
        raise InvalidValue(f'model {model.identifier!r}, {where}: expected {ftype.expected}, got '
                           f'{str(value)[:80]!r}' + (f' ({reason})' if reason else '')) from None
    return np.asarray(value, dtype=ftype.dtype) if isinstance(ftype, Array) else value


def _run_model(model: Any, inputs: list) -> list:
    try:
        outputs = list(model.predict_batches(inputs))
    except SuperduperError:
        raise
    except Exception as e:  # the model's own code failed on these inputs
        raise ModelError(f'model {model.identifier!r} failed: {type(e).__name__}: {str(e)[:500]}') from None
    if len(outputs) != len(inputs):
        raise ModelError(f'model {model.identifier!r} returned {len(outputs)} outputs for {len(inputs)} inputs')
    return outputs


def _outputs_json(model: Any, outputs: list) -> list:
    try:
        return to_json(outputs)
    except Exception:  # the model's own type failed to turn into text
        kinds = sorted({type(o).__name__ for o in outputs})
        raise ModelError(f'model {model.identifier!r} returned values ({", ".join(kinds)}) that cannot be sent as '
                         'JSON') from None


# ---- search --------------------------------------------------------------------------------------------------
@router.post('/indexes/{identifier}/search', tags=['search'], response_model=SearchResult,
             summary='the rows nearest to a query, with scores')
def search(identifier: str, body: SearchBody, request: Request, caller: Any = READ) -> JSONResponse:
    """Like ``db[table].like(query, vector_index=identifier, n=n)`` with ``filter``: the ``n`` nearest rows among
    those matching, nearest first."""
    db = service(request).db
    index = service(request).component('VectorIndex', identifier)
    spec = body.query
    if isinstance(spec, list):
        if not spec:
            raise InvalidValue('query: a vector is a non-empty list of numbers')
        spec = np.asarray(spec, dtype=np.float32)
    else:
        spec = from_json(spec, 'query')
    query = db[body.table or index.source].like(spec, vector_index=identifier, n=body.n)
    if (where := from_mongo(body.filter)) is not None:
        query = query.filter(where)
    if body.columns:
        query = query.select(*(c for c in body.columns if c != '_score'))  # a search always gives the score
    if body.match is not None:
        query = query.match(body.match.text, body.match.keyword_index, weights=body.match.weights,
                            rrf_k=body.match.rrf_k)
    if body.rerank is not None:
        reranker = _served(request, body.rerank.model, caller)
        query = query.rerank(reranker, body.rerank.query, body.rerank.key, body.rerank.candidates)
    results = []
    for row in query.execute():
        row = dict(row)
        hit = {'score': to_json(row.pop('_score', None))}
        if body.rerank is not None:
            hit['rerank_score'] = to_json(row.pop('_rerank_score'))
        if body.match is not None:
            hit['vector_rank'], hit['keyword_rank'] = row.pop('_vector_rank'), row.pop('_keyword_rank')
        if '_chunk' in row:  # searched through chunks: the row's best one
            hit['chunk'], hit['position'] = to_json(row.pop('_chunk')), row.pop('_position')
        results.append({**hit, 'row': to_json(row)})
    return sent({'results': results})


# ---- tables --------------------------------------------------------------------------------------------------
@router.get('/tables', tags=['tables'], summary='the tables of the database')
def list_tables(request: Request, caller: Any = READ) -> list[str]:
    return sorted(t for t in service(request).db.databackend.table_names() if not t.startswith(INTERNAL_PREFIX))


@router.post('/tables/{table}/select', tags=['tables'], response_model=Rows, summary='rows matching a filter')
def select(table: str, body: SelectBody, request: Request, caller: Any = READ) -> JSONResponse:
    query = _user_table(request, table)
    _capped(service(request), body.limit, f'table {table!r}')
    if (where := from_mongo(body.filter)) is not None:
        query = query.filter(where)
    if body.columns:
        query = query.select(*body.columns)
    named = {_predict_id(service(request).db, name): name for name in body.outputs}
    if named:
        query = query.outputs(*named)
    if body.order_by:
        query = query.order_by(body.order_by, descending=body.descending)
    query = query.limit(body.limit, body.offset)
    columns = {f'_outputs__{p}': f'_outputs__{name}' for p, name in named.items()}
    return sent({'rows': [to_json({columns.get(k, k): v for k, v in row.items()}) for row in query.execute()]})


def _predict_id(db: Any, listener: str) -> str:
    """The outputs of the latest version of ``listener`` (read from the metadata: no model is loaded)."""
    record = db.metadata.get('Listener', listener)
    if record is None:
        known = ', '.join(db.metadata.identifiers('Listener')) or 'none'
        raise NotFound(f'outputs: no listener {listener!r}; listeners: {known}')
    return f'{listener}__{record["uuid"][:8]}'


@router.get('/tables/{table}/rows', tags=['tables'], response_model=Rows,
            summary='rows of a table, a page at a time')
def rows(request: Request, table: str, limit: int = Param(100, ge=0), offset: int = Param(0, ge=0),
         filter: Optional[str] = Param(None, description='a JSON filter, e.g. {"brand": "a"}'),
         caller: Any = READ) -> JSONResponse:
    try:
        parsed = json.loads(filter) if filter else None
    except json.JSONDecodeError:
        raise InvalidValue('filter: not valid JSON') from None
    if parsed is not None and not isinstance(parsed, dict):
        raise InvalidValue('filter: a JSON object, e.g. {"brand": "a"}')
    return select(table, SelectBody(filter=parsed, limit=limit, offset=offset), request, caller)


@router.post('/tables/{table}/rows', tags=['tables'], summary='insert rows; returns their keys', status_code=201)
def insert(table: str, body: InsertBody, request: Request, caller: Any = WRITE) -> dict:
    query = _user_table(request, table)
    _capped(service(request), len(body.rows), f'table {table!r}')
    rows = _table_values(service(request).db, table, body.rows)
    return {'ids': to_json(query.insert(rows).execute())}


@router.patch('/tables/{table}/rows', tags=['tables'], summary='update the rows matching a filter')
def update(table: str, body: UpdateBody, request: Request, caller: Any = WRITE) -> dict:
    query = _user_table(request, table)
    values = _table_values(service(request).db, table, [body.set])[0]
    if (where := from_mongo(body.filter)) is not None:
        query = query.filter(where)
    return {'updated': query.update(values).execute()}


@router.post('/tables/{table}/delete', tags=['tables'], summary='delete the rows matching a filter')
def delete(table: str, body: DeleteBody, request: Request, caller: Any = WRITE) -> dict:
    query = _user_table(request, table)
    if (where := from_mongo(body.filter)) is not None:
        query = query.filter(where)
    return {'deleted': query.delete().execute()}


def _user_table(request: Request, table: str) -> Any:
    """``db[table]``, for a table of the user's (or listeners' outputs): superduper's own tables (metadata, API
    keys, change logs, full-text indexes) are not reached through the API."""
    if table.startswith(INTERNAL_PREFIX):
        raise NotFound(f'no table {table!r}: tables named {INTERNAL_PREFIX}* are superduper\'s own')
    return service(request).db[table]


def _table_values(db: Any, table: str, rows: list[dict]) -> list[dict]:
    """Rows from JSON: ``{"$base64": ...}`` to bytes, and bytes of an image, audio or video field decoded as that type."""
    types = db.table_info(table).schema.types
    out = []
    for i, row in enumerate(rows):
        values = {}
        for name, value in row.items():
            value = from_json(value, f'rows[{i}].{name}')
            ftype = types.get(name)
            if isinstance(value, bytes) and isinstance(ftype, DataType) and ftype.identifier in FILE_FORMATS:
                try:
                    value = ftype.decode_one(value)
                except Exception as e:
                    raise InvalidValue(f'table {table!r}, rows[{i}].{name}: not a valid {ftype.identifier} '
                                       f'({type(e).__name__})') from None
            values[name] = value
        out.append(values)
    return out


# ---- components ----------------------------------------------------------------------------------------------
@router.get('/components', tags=['components'], summary='components and their versions')
def list_components(request: Request, type_id: Optional[str] = None, caller: Any = READ) -> list[dict]:
    versions: dict[tuple[str, str], list[int]] = {}
    for record in service(request).db.metadata.all():
        if type_id in (None, record['type_id']):
            versions.setdefault((record['type_id'], record['identifier']), []).append(record['version'])
    return [{'type_id': t, 'identifier': i, 'versions': sorted(v)} for (t, i), v in sorted(versions.items())]


@router.get('/components/{type_id}/{identifier}', tags=['components'], summary="a component's versions")
def show_component(type_id: str, identifier: str, request: Request, caller: Any = READ) -> dict:
    db = service(request).db
    records = [r for r in db.metadata.all() if r['type_id'] == type_id and r['identifier'] == identifier]
    if not records:
        db.show(type_id, identifier, 0)  # raises NotFound naming what exists
    latest = max(records, key=lambda r: r['version'])
    return {'type_id': type_id, 'identifier': identifier,
            'versions': [{'version': r['version'], 'uuid': r['uuid'], 'created_at': to_json(r['created_at'])}
                         for r in sorted(records, key=lambda r: r['version'])],
            'latest': without_signatures(to_json(latest['record']))}


@router.get('/components/{type_id}/{identifier}/{version}', tags=['components'], summary="one version's record")
def show_version(type_id: str, identifier: str, version: int, request: Request, caller: Any = READ) -> dict:
    return without_signatures(to_json(service(request).db.show(type_id, identifier, version)))


@router.post('/components', tags=['components'], summary='apply a package (an exported .zip)', status_code=201)
def apply_package(request: Request, package: UploadFile = File(description='a .zip from `superduper export`'),
                  variables: str = Form('{}', description='template variables, a JSON object of strings'),
                  trust: bool = Form(False, description='allow pickled code in the package (runs it)'),
                  wait: bool = Form(True, description='answer once the backfills are computed; false: once they are '
                                    'queued, with their job ids (see /jobs)'),
                  caller: Any = ADMIN) -> dict:
    from superduper.components.template import Template

    try:
        values = json.loads(variables)
    except json.JSONDecodeError:
        raise InvalidValue('variables: not valid JSON') from None
    if not isinstance(values, dict) or not all(isinstance(v, str) for v in values.values()):
        raise InvalidValue('variables: a JSON object of strings, e.g. {"table": "docs"}')
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / 'package.zip'
        with path.open('wb') as f:
            while chunk := package.file.read(2**20):
                f.write(chunk)
        template = Template.read(path, trust=trust)
        try:
            jobs, component = service(request).db.apply(template, wait=False, **values) if not wait else \
                (None, service(request).db.apply(template, **values))
        finally:
            template.close()
            service(request).components_changed()
    applied = {'type_id': component.type_id, 'identifier': component.identifier, 'version': component.version}
    return applied if jobs is None else {**applied, 'jobs': [job.id for job in jobs]}


@router.delete('/components/{type_id}/{identifier}', tags=['components'], summary='remove a component')
def remove_component(type_id: str, identifier: str, request: Request, version: Optional[int] = None,
                     recursive: bool = False, force: bool = False, caller: Any = ADMIN) -> dict:
    try:
        service(request).db.remove(type_id, identifier, version, recursive=recursive, force=force)
    finally:
        service(request).components_changed()
    return {'removed': {'type_id': type_id, 'identifier': identifier, 'version': version}}


# ---- listeners and jobs --------------------------------------------------------------------------------------
@router.get('/listeners', tags=['listeners'], summary='per listener: rows done, pending, failed, lag')
def listener_status(request: Request, caller: Any = READ) -> list[dict]:
    return to_json(service(request).db.status())


@router.get('/listeners/{identifier}/failures', tags=['listeners'], summary='the rows a listener failed on')
def failures(identifier: str, request: Request, caller: Any = READ) -> list[dict]:
    return to_json(service(request).db.failures(identifier))


@router.post('/listeners/{identifier}/retry', tags=['listeners'], summary='recompute the failed rows')
def retry(identifier: str, request: Request, caller: Any = WRITE) -> dict:
    return {'still_failing': service(request).db.retry(identifier)}


@router.get('/jobs', tags=['jobs'], summary='backfills, training runs and scheduled runs, with progress')
def jobs(request: Request, identifier: Optional[str] = None, caller: Any = READ) -> list[dict]:
    return to_json(service(request).db.jobs(identifier))


# ---- schedules ------------------------------------------------------------------------------------------------
@router.get('/schedules', tags=['schedules'], summary='per schedule: cron, action and the latest tick')
def schedules(request: Request, caller: Any = READ) -> list[dict]:
    return to_json(service(request).db.schedule_status())


@router.post('/schedules/{identifier}/run', tags=['schedules'], summary='run a schedule once now, here')
def run_schedule(identifier: str, request: Request, caller: Any = WRITE) -> dict:
    """Through a tick of its own, claimed as a worker claims one; the answer is the tick with how it ended."""
    return to_json(service(request).db.run_schedule(identifier))


# ---- artifacts -----------------------------------------------------------------------------------------------
@router.get('/artifacts/{key:path}', tags=['artifacts'], summary='the bytes of a stored value',
            response_class=Response, responses={200: {'content': {'application/octet-stream': {}}}})
def artifact(key: str, request: Request, caller: Any = READ,
             media_type: Optional[str] = Param(None, description='the type to serve it as: one a video is stored as')
             ) -> Response:
    if not ARTIFACT_KEY.fullmatch(key):
        raise QueryError(f'{key[:80]!r} is not an artifact key')
    if media_type is not None and media_type not in SERVED_MEDIA_TYPES:
        raise QueryError(f'media_type {media_type[:80]!r} is not served; one of {sorted(SERVED_MEDIA_TYPES)}')
    store = service(request).db.artifact_store
    try:
        data = store.get_bytes(key)
    except (FileNotFoundError, KeyError):
        raise NotFound(f'no artifact {key[:16]}...') from None
    return Response(bytes(data), media_type=media_type or 'application/octet-stream')
