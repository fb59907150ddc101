"""PyTorch models built from a config in the test (no download), stored in PyTorch's format, on every backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from superduper import Table, VectorIndex
from superduper.ext.torch import TorchModel


def tiny_encoder() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


@pytest.mark.requires('opened_by_uri', reason='the database is opened again by its URI')
def test_torch_listener_vectors_and_reload(db, db_uri, tmp_path, backend, pk):
    db.apply(Table('points', fields={'x': 'vector[float32:4]'}))
    rng = np.random.default_rng(0)
    ids = db['points'].insert([{'x': rng.normal(size=4)} for _ in range(40)]).execute()
    module = tiny_encoder()
    model = TorchModel('enc', object=module, preprocess=lambda x: np.asarray(x, dtype=np.float32), batch_size=16)
    index = db.apply(VectorIndex('enc-idx', indexing_listener=model.to_listener('points', key='x')))
    outputs = index.indexing_listener.outputs
    row = db['points'].select().outputs(index.indexing_listener.predict_id).get(**{pk: ids[5]}).execute()
    expected = module(torch.as_tensor(row['x'])[None]).detach().numpy()[0]
    assert np.allclose(row[outputs], expected, atol=1e-6)
    (best,) = db['points'].like(expected, vector_index='enc-idx', n=1).execute().tolist()
    assert best[pk] == ids[5]
    record = db.show('Model', 'enc', 0)['record']
    assert record['object']['serializer'] == 'torch'
    db.close()
    if backend == 'mongomock':  # its data lives in this process only
        return
    script = textwrap.dedent(f"""
        import numpy as np
        from superduper import superduper
        db = superduper({db_uri!r}, artifact_store='filesystem://{tmp_path}/artifacts', progress=False)
        print(np.round(db.predict('enc', np.ones(4, dtype=np.float32)), 5).tolist())
    """)
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert eval(out.stdout.strip().splitlines()[-1]) == np.round(module(torch.ones(1, 4)).detach().numpy()[0], 5).tolist()


def test_postprocess_to_labels(sqlite_db):
    classifier = TorchModel('clf', object=torch.nn.Linear(2, 3), postprocess=lambda logits: int(np.argmax(logits)))
    labels = classifier.predict_batches([np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32)])
    assert all(isinstance(label, int) and 0 <= label < 3 for label in labels)
