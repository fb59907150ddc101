"""Train a scikit-learn model on rows picked by a query, validate it, and keep its predictions current (seed 002).

    pip install -e '.[sklearn]' && python examples/sklearn_training.py
"""

from __future__ import annotations

import numpy as np
from sklearn.svm import SVC

from superduper import Metric, Table, superduper


def main() -> None:
    db = superduper('sqlite://.superduper/sklearn.db')
    db.apply(Table('flowers', fields={'x': 'vector[float64:2]', 'label': 'int'}))
    flowers = db['flowers']
    if flowers.count().execute() == 0:  # run again, the rows are already there
        rng = np.random.default_rng(0)
        flowers.insert([{'x': rng.normal(loc=3.0 * (i % 2), size=2), 'label': i % 2} for i in range(300)]).execute()

    model = superduper(SVC())  # wraps the estimator as a trainable model
    model.fit(X='x', y='label', db=db, select=flowers.find({'_fold': 'train'}))
    accuracy = Metric('accuracy', object=lambda y, p: float(np.mean(np.asarray(y) == np.asarray(p))))
    print('validation:', db.validate(model, flowers.select(), [accuracy]))

    listener = db.apply(model.to_listener(flowers.select(), key='x', identifier='svc-predictions'))
    if flowers.get(id='new-flower').execute() is None:
        flowers.insert([{'id': 'new-flower', 'x': [3.1, 2.9], 'label': 1}]).execute()
    print('predictions kept next to the data:', db[listener.outputs].count().execute(), 'rows')
    db.close()


if __name__ == '__main__':
    main()
