"""The package's layers import only downward and no modules import each other in a circle.

Every import counts: at module level, inside functions, and under ``TYPE_CHECKING`` (grimp reads them all from
the source). The layers, top to bottom, are those of ARCHITECTURE.md; modules in one layer may import each other
(without a circle), and layers written side by side in one tuple know nothing of each other.
"""

from __future__ import annotations

import grimp
import pytest

LAYERS: list[tuple[str, ...]] = [
    ('superduper',),  # entry points: the package's exports (__init__) and the command line (cli)
    ('superduper.server',),  # superduper serve: the REST API, console and metrics over a datalayer
    ('superduper.compute',),  # engines running the runtime on workers (local, Dask, Ray)
    ('superduper.runtime',),  # the datalayer and its parts
    ('superduper.backends', 'superduper.ext'),  # databases; model integrations
    ('superduper.backends.base',),  # what a backend implements
    ('superduper.components',),  # declarations: components, field types
    ('superduper.vector_search',),  # searchers over vectors in memory
    ('superduper.base',),  # the query model, documents, settings, errors, trust, registries
]


@pytest.fixture(scope='module')
def graph() -> grimp.ImportGraph:
    return grimp.build_graph('superduper', cache_dir=None)


def container(module: str, layers: list[tuple[str, ...]]) -> tuple[int, str]:
    """The layer a module is in and the name of its part there: the longest prefix listed in ``layers``."""
    best: tuple[int, str] | None = None
    for level, parts in enumerate(layers):
        for part in parts:
            if (module == part or module.startswith(part + '.')) and (best is None or len(part) > len(best[1])):
                best = (level, part)
    assert best is not None, f'{module} is in no layer of LAYERS: add it there and to ARCHITECTURE.md'
    return best


def where(graph: grimp.ImportGraph, importer: str, imported: str) -> str:
    details = graph.get_import_details(importer=importer, imported=imported)
    return ', '.join(f"{importer.replace('.', '/')}.py:{d['line_number']}" for d in details) or importer


def against_layers(graph: grimp.ImportGraph, layers: list[tuple[str, ...]]) -> list[str]:
    """Imports of a higher layer, or of a side-by-side part of the same layer."""
    wrong = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & graph.modules):
            (low, part), (high, other) = container(importer, layers), container(imported, layers)
            if high < low or (high == low and part != other):
                wrong.append(f'{importer} ({part}) imports {imported} ({other}) at {where(graph, importer, imported)}')
    return wrong


def test_imports_go_only_down(graph):
    wrong = against_layers(graph, LAYERS)
    assert not wrong, 'imports against the layers:\n' + '\n'.join(wrong)


def test_no_import_circles(graph):
    circles = strongly_connected(graph)
    shown = [', '.join(sorted(c)) for c in circles]
    assert not circles, f'{len(circles)} import circle(s):\n' + '\n'.join(shown)


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Groups of modules that import each other, directly or through others (Tarjan's algorithm, iterative)."""
    following = {m: sorted(b for b in graph.find_modules_directly_imported_by(m) if b in graph.modules)
                 for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(following):
        if root in index:
            continue
        work = [(root, iter(following[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, successors = work[-1]
            step = next(successors, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(following[step])))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.add(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(group)
    return found


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path, monkeypatch):
    """The checks above find what they look for: a small package with a circle made by an import inside a
    function, and an upward import made for a type hint."""
    pkg = tmp_path / 'layered'
    (pkg / 'low').mkdir(parents=True)
    (pkg / '__init__.py').write_text('')
    (pkg / 'top.py').write_text('')
    (pkg / 'low' / '__init__.py').write_text('')
    (pkg / 'low' / 'a.py').write_text('from layered.low import b\n')
    (pkg / 'low' / 'b.py').write_text('def f():\n    from layered.low import a\n')
    (pkg / 'low' / 'c.py').write_text('from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from layered import top\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    small = grimp.build_graph('layered', cache_dir=None)
    assert strongly_connected(small) == [{'layered.low.a', 'layered.low.b'}]
    wrong = against_layers(small, [('layered.top',), ('layered.low',), ('layered',)])
    assert len(wrong) == 1 and wrong[0].startswith('layered.low.c (layered.low) imports layered.top')
