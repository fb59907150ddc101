"""Real text that ships with every Python: the docstrings of the standard library."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import warnings

SKIP = ('test', 'idlelib', 'tkinter', 'turtle', 'antigravity', 'this', 'lib2to3', 'ensurepip', 'venv', 'pydoc_data')


def docstrings(limit: int = 2000) -> list[dict]:
    """Up to ``limit`` rows ``{'name', 'module', 'doc'}``: module, class and function docstrings (first paragraph)."""
    rows: list[dict] = []
    names = sorted(m.name for m in pkgutil.iter_modules() if not m.name.startswith('_') and m.name not in SKIP)
    for module_name in names:
        if module_name not in _stdlib():
            continue
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            try:
                module = importlib.import_module(module_name)
            except Exception:  # platform-specific modules
                continue
        members = [(module_name, module)] + [
            (f'{module_name}.{n}', obj) for n, obj in vars(module).items()
            if not n.startswith('_') and (inspect.isfunction(obj) or inspect.isclass(obj))
            and getattr(obj, '__module__', None) == module_name
        ]
        for name, obj in members:
            doc = inspect.getdoc(obj)
            if doc and len(doc) > 40:
                rows.append({'name': name, 'module': module_name, 'doc': doc.split('\n\n')[0][:500]})
                if len(rows) >= limit:
                    return rows
    return rows


def _stdlib() -> frozenset[str]:
    import sys

    return frozenset(sys.stdlib_module_names)
