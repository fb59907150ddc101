"""PyTorch models: ``TorchModel('clf', object=nn.Module, preprocess=..., postprocess=...)``.

Inputs are preprocessed one by one, stacked into a batch of ``batch_size`` on ``device``, run under ``no_grad`` in
eval mode, and each output row postprocessed. The module is stored in PyTorch's own format (``torch.save``).
``pip install torch==2.13.0`` gives the CPU build; nothing here imports torch until a model runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

from superduper.base.exceptions import ComponentError
from superduper.base.registry import Implementation, missing_dependency
from superduper.components.model import Model


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise missing_dependency('torch', Implementation('', extra='torch', driver='torch'), e) from e
    return torch


@dataclass(eq=False)
class TorchModel(Model):
    extra: ClassVar[str | None] = 'torch'
    object: Any = None
    preprocess: Any = None
    postprocess: Any = None
    device: str = 'cpu'
    batch_size: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        if not callable(self.object):
            raise ComponentError(f'TorchModel {self.identifier!r}: object must be a torch.nn.Module')

    def predict(self, x: Any) -> Any:
        return self.predict_batches([x])[0]

    def predict_batches(self, inputs: Sequence[Any]) -> list:
        torch = _torch()
        items = [self.preprocess(x) for x in inputs] if self.preprocess else list(inputs)
        module = self.object.to(self.device).eval()
        outputs: list = []
        with torch.no_grad():
            for i in range(0, len(items), self.batch_size):
                batch = torch.stack([torch.as_tensor(x) for x in items[i : i + self.batch_size]]).to(self.device)
                result = module(batch)
                outputs.extend(result.detach().cpu().numpy())
        return [self.postprocess(o) for o in outputs] if self.postprocess else outputs
