"""A PyTorch module as a listener: embeddings of a numeric column, searchable with a vector index.

    pip install -e '.[torch,hnsw]' && python examples/torch_model.py
"""

from __future__ import annotations

import numpy as np
import torch

from superduper import Table, VectorIndex, superduper
from superduper.ext.torch import TorchModel


def main() -> None:
    db = superduper('sqlite://.superduper/torch.db')
    db.apply(Table('sensors', fields={'reading': 'vector[float32:6]', 'site': 'str'}))
    if db['sensors'].count().execute() == 0:  # run again, the rows are already there
        rng = np.random.default_rng(0)
        db['sensors'].insert([{'reading': rng.normal(size=6), 'site': f'site-{i % 5}'} for i in range(500)]).execute()

    encoder = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    model = TorchModel('encoder', object=encoder, preprocess=lambda x: np.asarray(x, dtype=np.float32))
    db.apply(VectorIndex('sensor-index', indexing_listener=model.to_listener('sensors', key='reading')))

    probe = db['sensors'].select().limit(1).execute().tolist()[0]
    similar = db['sensors'].like({'reading': probe['reading']}, vector_index='sensor-index', n=3).execute()
    for row in similar:
        print(f"{row['_score']:.3f} {row['site']}")
    db.close()


if __name__ == '__main__':
    main()
