"""``Application``: components applied, shown, versioned and removed as one unit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from superduper.base.exceptions import ComponentError
from superduper.components.component import Component


@dataclass(eq=False)
class Application(Component):
    """``Application('my-app', components=[table, listener, index])``: applying it applies the components in order
    (each a no-op if already there); removing it removes them too, except tables that hold rows."""

    type_id: ClassVar[str] = 'Application'
    owns_children: ClassVar[bool] = True

    components: list = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.components, (list, tuple)) or not self.components:
            raise ComponentError(f'Application {self.identifier!r}: components= is a non-empty list of components')
        for i, component in enumerate(self.components):
            if not isinstance(component, Component):
                raise ComponentError(
                    f'Application {self.identifier!r}: components[{i}] is a {type(component).__name__}, not a component'
                )
        self.components = list(self.components)
