"""Hugging Face Transformers pipelines: ``TransformersPipeline('sentiment', task='text-classification', model=path)``.

The component stores the task, the model's name or local path and the pipeline's keyword arguments; the pipeline is
built on first use; ``postprocess`` turns each pipeline output into the value stored. Batches of ``batch_size`` inputs go to the pipeline at once. Nothing is downloaded for a local path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Sequence

from superduper.base.registry import Implementation, missing_dependency
from superduper.components.model import Model


@dataclass(eq=False)
class TransformersPipeline(Model):
    extra: ClassVar[str | None] = 'transformers'
    task: str = ''
    model: str = ''
    device: str = 'cpu'
    pipeline_kwargs: dict = field(default_factory=dict)
    batch_size: int = 32
    postprocess: Any = None  # applied to each pipeline output, e.g. pooling token features into one vector
    _pipeline: Any = field(default=None, init=False, repr=False)

    def loaded(self) -> Any:
        if self._pipeline is None:
            try:
                from transformers import pipeline
            except ImportError as e:
                raise missing_dependency(
                    'transformers', Implementation('', extra='transformers', driver='transformers'), e
                ) from e
            self._pipeline = pipeline(self.task, model=self.model, device=self.device, **self.pipeline_kwargs)
        return self._pipeline

    def predict(self, x: Any) -> Any:
        return self.predict_batches([x])[0]

    def predict_batches(self, inputs: Sequence[Any]) -> list:
        outputs = list(self.loaded()(list(inputs), batch_size=self.batch_size))
        return [self.postprocess(o) for o in outputs] if self.postprocess else outputs
