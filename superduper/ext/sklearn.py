"""scikit-learn estimators as trainable models: ``SklearnModel('svc', object=SVC())``.

Estimators are stored with cloudpickle (scikit-learn's own persistence is pickle). ``pip install
'superduper[sklearn]'`` brings scikit-learn; nothing here imports it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from superduper.base.exceptions import ComponentError
from superduper.components.model import Model


@dataclass(eq=False)
class SklearnModel(Model):
    extra: ClassVar[str | None] = 'sklearn'
    object: Any = None  # an estimator
    predict_method: str = 'predict'
    trainable: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not hasattr(self.object, self.predict_method):
            raise ComponentError(
                f'SklearnModel {self.identifier!r}: {type(self.object).__name__} has no {self.predict_method}()'
            )

    def predict(self, x: Any) -> Any:
        return self.predict_batches([x])[0]

    def predict_batches(self, inputs: Sequence[Any]) -> list:
        import numpy

        return getattr(self.object, self.predict_method)(numpy.asarray(list(inputs))).tolist()

    def _fit(self, X: list, y: list | None) -> None:
        import numpy

        self.object.fit(numpy.asarray(X), None if y is None else numpy.asarray(y))
