"""A registry of implementations keyed by URI scheme, in the spirit of fsspec's ``known_implementations``.

Each entry names the class by import path, so nothing is imported until a URI with that scheme is used,
and the optional extra to install if the import fails.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from superduper.base.exceptions import ConfigError, MissingDependency


@dataclass(frozen=True)
class Implementation:
    path: str  # 'package.module:ClassName'
    extra: str | None = None  # pip extra that brings its dependencies
    driver: str | None = None  # the import that the extra provides, for the error message


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._known: dict[str, Implementation] = {}

    def register(self, scheme: str, path: str, extra: str | None = None, driver: str | None = None) -> None:
        self._known[scheme] = Implementation(path, extra, driver)

    def __contains__(self, scheme: str) -> bool:
        return scheme in self._known

    def schemes(self) -> list[str]:
        return sorted(self._known)

    def get(self, scheme: str) -> Implementation:
        try:
            return self._known[scheme]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} scheme '{scheme}://'; known schemes: "
                + ', '.join(f'{s}://' for s in self.schemes())
            ) from None

    def load(self, scheme: str) -> Any:
        impl = self.get(scheme)
        module_name, _, attr = impl.path.partition(':')
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise missing_dependency(scheme, impl, e) from e
        return getattr(module, attr)

    def create(self, scheme: str, *args: Any, shown_as: str | None = None) -> Any:
        """Instantiate the implementation; a driver it fails to import becomes ``MissingDependency``."""
        cls = self.load(scheme)
        try:
            return cls(*args)
        except MissingDependency:
            raise  # already names what to install
        except ImportError as e:
            raise missing_dependency(shown_as or scheme, self.get(scheme), e) from e


def missing_dependency(scheme: str, impl: Implementation, error: ImportError) -> MissingDependency:
    driver = impl.driver or getattr(error, 'name', None) or 'a driver'
    hint = f"pip install 'superduper[{impl.extra}]'" if impl.extra else f'pip install {driver}'
    return MissingDependency(f"'{scheme}://' needs the {driver} package, which is not installed: {hint}")
