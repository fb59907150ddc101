"""Training by query: fit a copy of a model on the rows a query picks (its training fold), apply it as a new
version, recorded as a job; validate on the validation fold and store the metric values with the version."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from superduper.base.exceptions import ComponentError, QueryError
from superduper.base.query import Compare, Query
from superduper.base.protocols import Runtime
from superduper.components.inputs import input_maker
from superduper.components.model import Metric


class Training:
    def __init__(self, db: Runtime):
        self.db = db

    def fit(self, model: Any, X: Any, y: str | None = None, select: Query | None = None) -> Any:
        """Train a copy of ``model`` on the rows ``select`` picks (its ``_fold == 'train'`` rows where the table has
        folds) and apply it as a new version, which is returned; recorded as a job. With Dask compute a worker
        trains it. A stored version is never changed (an old version loads exactly as it was stored); a model that
        was not applied yet becomes the fitted one, as scikit-learn's ``fit`` does."""
        train = self._fold_query(select, 'train')
        stored = model.uuid is not None and self.db.metadata.get_by_uuid(model.uuid) is not None
        fitted = dataclasses.replace(copy.deepcopy(model), version=None, uuid=None)
        job = self.db.listening.jobs.start('fit', model, self.db.execute(train.count()))
        try:
            if self.db.compute.distributed:
                uuid, rows = self.db.compute.fit(self.db, fitted, X, y, train)
                fitted = self.db.load_record(self.db.metadata.get_by_uuid(uuid))
            else:
                rows = self.fit_and_apply(fitted, X, y, train)
        except Exception as e:
            self.db.listening.jobs.finish(job, error=f'{type(e).__name__}: {e}')
            raise
        self.db.listening.jobs.progress(job, rows, 0)
        self.db.listening.jobs.finish(job)
        if not stored:
            for f in dataclasses.fields(model):
                setattr(model, f.name, getattr(fitted, f.name))
        return fitted

    def fit_and_apply(self, model: Any, X: Any, y: str | None, train: Query) -> int:
        """Fit ``model`` (a copy nobody else holds) in this process on the rows ``train`` selects and apply it;
        returns how many rows."""
        rows = self.db.execute(train).tolist()
        calls = [input_maker(X)(row.unpack()) for row in rows]
        inputs = [args[0] if len(args) == 1 and not kwargs else args for args, kwargs in calls]
        targets = [row[y] for row in rows] if y is not None else None
        model._fit(inputs, targets)
        model.fit_keys = [X, y]
        self.db.apply(model)
        return len(rows)

    def validate(self, model: Any, select: Query, metrics: Any, X: Any = None, y: str | None = None) -> dict:
        """Score ``model`` on the ``_fold == 'valid'`` rows of ``select`` (all of them if the table has no folds);
        the values are stored with the model version (``db.show('Model', id, version)['metrics']``)."""
        if X is None or y is None:
            if not model.fit_keys:
                raise ComponentError(f'validate {model.identifier!r}: pass X= and y= (the model was not fitted here)')
            X, y = X or model.fit_keys[0], y or model.fit_keys[1]
        named = metrics.items() if isinstance(metrics, dict) else [
            (m.identifier if isinstance(m, Metric) else getattr(m, '__name__', str(m)), m) for m in metrics
        ]
        rows = self._fold_rows(select, 'valid')
        if not rows:
            raise ComponentError(f'validate {model.identifier!r}: the select matches no validation rows')
        predictions = model.predict_inputs([input_maker(X)(row.unpack()) for row in rows])
        targets = [row[y] for row in rows]
        values = {name: float(metric(targets, predictions)) for name, metric in named}
        if model.uuid is None or self.db.metadata.get_by_uuid(model.uuid) is None:
            self.db.apply(model)
        self.db.metadata.record_metrics(model.uuid, values, len(rows))
        return values

    def _fold_rows(self, select: Query | None, fold: str) -> list:
        return self.db.execute(self._fold_query(select, fold)).tolist()

    def _fold_query(self, select: Query | None, fold: str) -> Query:
        if not isinstance(select, Query):
            raise QueryError(f'select= must be a query picking rows, got {type(select).__name__}')
        if '_fold' in self.db.table_info(select.table).schema.types:
            select = select.filter(Compare('_fold', '==', fold))
        return select
