"""Models: ``predict`` one input, ``predict_batches`` many; ``ObjectModel`` wraps any callable. How a row becomes
a model's input (a ``key``) is in ``superduper.components.inputs``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

from superduper.base.exceptions import ComponentError, ConfigError, ModelError
from superduper.components.component import Component
from superduper.components.datatype import resolve_type
from superduper.components.inputs import Key

if TYPE_CHECKING:
    from superduper.base.protocols import Runtime
    from superduper.base.query import Query
    from superduper.components.listener import Listener

@dataclass(eq=False)
class Model(Component):
    """Subclass and implement ``predict``; set ``batched`` if ``predict_batches`` is implemented natively."""

    type_id: ClassVar[str] = 'Model'

    datatype: Any = None  # type of the outputs (a field type name or DataType); None infers it from the outputs
    batch_size: int = 64
    trainable: ClassVar[bool] = False
    fit_keys: Any = None  # (X, y) of the last fit, used by validate()
    #: an endpoint of ``superduper serve`` (``POST /api/v1/models/<identifier>/predict``)
    serve: bool = field(default=False, metadata={'optional': True})
    #: the field type of one input (``'str'``, ``'vector[float32:3]'``, ``'image'``): the server checks inputs by it
    input_type: Any = field(default=None, metadata={'optional': True})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.serve, bool):
            raise ComponentError(f'{type(self).__name__} {self.identifier!r}: serve is True or False, got {self.serve!r}')
        if self.input_type is not None:
            try:
                resolve_type(self.input_type)
            except ConfigError as e:
                raise ComponentError(f'{type(self).__name__} {self.identifier!r}: input_type: {e}') from None

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'{type(self).__name__} does not implement predict')

    def output_type(self) -> Any:
        """The type of the outputs where the model knows it without seeing data (``datatype`` if declared), else
        ``None``: the first successful outputs fix it."""
        return self.datatype

    def predict_batches(self, inputs: Sequence[Any]) -> list:
        """Outputs for single-argument inputs, in order."""
        return [self.predict(x) for x in inputs]

    def predict_inputs(self, calls: list[tuple[tuple, dict]]) -> list:
        """Outputs for ``(args, kwargs)`` calls, through ``predict_batches`` where the calls allow it."""
        if all(len(args) == 1 and not kwargs for args, kwargs in calls):
            outputs = list(self.predict_batches([args[0] for args, _ in calls]))
        else:
            outputs = [self.predict(*args, **kwargs) for args, kwargs in calls]
        if len(outputs) != len(calls):
            raise ModelError(f'model {self.identifier!r} returned {len(outputs)} outputs for {len(calls)} inputs')
        return outputs

    def to_listener(
        self, select: 'Query | str', key: Key, identifier: str | None = None, **kwargs: Any
    ) -> 'Listener':
        from superduper.components.listener import Listener

        return Listener(identifier=identifier or '', model=self, select=select, key=key, **kwargs)

    # ---- training (seed 002) ------------------------------------------------------------------------------
    def fit(self, X: Key, y: str | None = None, db: 'Runtime | None' = None, select: 'Query | None' = None) -> 'Model':
        """Fit on the rows ``select`` picks (its ``_fold == 'train'`` part when the table has folds), then store the
        fitted model as a new version."""
        if not self.trainable:
            raise ComponentError(f'{type(self).__name__} {self.identifier!r} cannot be trained')
        if db is None or select is None:
            raise ComponentError(f'fit {self.identifier!r}: pass db= and select= (a query picking the training rows)')
        return db.fit(self, X=X, y=y, select=select)

    def _fit(self, X: list, y: list | None) -> None:
        raise NotImplementedError


@dataclass(eq=False)
class ObjectModel(Model):
    """``ObjectModel('upper', object=lambda x: x.upper())``; ``batched=True`` if ``object`` takes a list."""

    object: Any = None
    batched: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.object):
            raise ComponentError(
                f'ObjectModel {self.identifier!r}: object must be callable, got {type(self.object).__name__}'
            )

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        if self.batched:
            return self.object([args[0]])[0]
        return self.object(*args, **kwargs)

    def predict_batches(self, inputs: Sequence[Any]) -> list:
        if self.batched:
            return list(self.object(list(inputs)))
        fn = self.object
        return [fn(x) for x in inputs]


@dataclass(eq=False)
class Reranker(Model):
    """A model whose ``predict(query, documents)`` returns one score per document, higher meaning more relevant.
    ``superduper.components.rerank.rerank`` orders fetched rows by it."""

    def predict(self, query: str, documents: Sequence[str]) -> list[float]:  # type: ignore[override]
        raise NotImplementedError(f'{type(self).__name__} does not implement predict')


@dataclass(eq=False)
class ObjectReranker(ObjectModel, Reranker):
    """``ObjectReranker('overlap', object=lambda query, documents: [...one score per document...])``."""


@dataclass(eq=False)
class Metric(Component):
    """``Metric('accuracy', object=lambda y_true, y_pred: ...)``: one number from targets and predictions."""

    type_id: ClassVar[str] = 'Metric'

    object: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.object):
            raise ComponentError(f'Metric {self.identifier!r}: object must be callable')

    def __call__(self, y_true: list, y_pred: list) -> float:
        return float(self.object(y_true, y_pred))


def replace_fitted(model: Model, **changes: Any) -> Model:
    """A copy of ``model`` with new fitted state, to be applied as a new version."""
    return dataclasses.replace(model, version=None, uuid=None, **changes)

