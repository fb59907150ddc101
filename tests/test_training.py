"""Training on rows picked by a query (seed 002), with the _fold split assigned on insert, and validation."""

from __future__ import annotations

import numpy as np
import pytest

from superduper import Metric, ObjectModel, Table
from superduper.base.exceptions import ComponentError
from superduper.ext.sklearn import SklearnModel

#: also on a folder queried by the other engines (the shared suite runs ``parquet`` on DuckDB)
pytestmark = pytest.mark.backends('all', 'engines')


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


@pytest.fixture
def points(db):
    db.cfg.valid_fraction = 0.25
    db.apply(Table('points', fields={'x': 'vector[float64:2]', 'label': 'int'}))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(200):
        label = i % 2
        rows.append({'x': rng.normal(loc=3.0 * label, scale=0.5, size=2), 'label': label})
    db['points'].insert(rows).execute()
    return db['points']


def test_folds_are_assigned_on_insert_and_stable(db, points, pk):
    folds = [r['_fold'] for r in points.select('_fold').execute()]
    assert set(folds) == {'train', 'valid'}
    assert 20 <= folds.count('valid') <= 80  # about a quarter
    (row_id,) = points.insert([{pk: 'fixed', 'label': 1}]).execute()
    first = points.get(**{pk: row_id}).execute()['_fold']
    points.filter(points[pk] == row_id).delete().execute()
    points.insert([{pk: 'fixed', 'label': 1}]).execute()
    assert points.get(**{pk: 'fixed'}).execute()['_fold'] == first
    points.insert([{'label': 0, '_fold': 'valid'}]).execute()
    assert points.filter(points['label'] == 0).filter(points['_fold'] == 'valid').count().execute() >= 1


def test_fit_on_train_fold_validate_on_valid_fold(db, points):
    from sklearn.svm import SVC

    model = SklearnModel('svc', object=SVC())
    model.fit(X='x', y='label', db=db, select=points.find())
    train_rows = points.filter(points['_fold'] == 'train').count().execute()
    (job,) = [j for j in db.jobs('svc') if j['kind'] == 'fit']
    assert (job['status'], job['done']) == ('success', train_rows)
    assert db.show('Model', 'svc') == [0]

    values = db.validate(model, points.select(), [Metric('accuracy', object=accuracy)])
    assert values['accuracy'] > 0.95
    assert db.show('Model', 'svc', 0)['metrics'] == values

    # the fitted model reloads and serves as a listener
    loaded = db.load('Model', 'svc')
    assert loaded.predict(np.array([3.0, 3.0])) == 1
    listener = db.apply(loaded.to_listener(points.select(), key='x'))
    agree = [r[listener.outputs] == r['label'] for r in points.select('label').outputs(listener.predict_id).execute()]
    assert np.mean(agree) > 0.95


def test_seed_002_wrapping(db, points):
    from sklearn.svm import SVC

    from superduper import superduper

    model = superduper(SVC())
    assert isinstance(model, SklearnModel) and model.identifier == 'svc'
    model.fit(X='x', y='label', db=db, select=points.find({'_fold': 'train'}))
    assert db.show('Model', 'svc') == [0]


def test_refit_makes_a_new_version(db, points):
    from sklearn.linear_model import LogisticRegression

    model = SklearnModel('lr', object=LogisticRegression())
    model.fit(X='x', y='label', db=db, select=points.select())
    points.insert([{'x': [10.0, 10.0], 'label': 1}] * 5).execute()
    model.fit(X='x', y='label', db=db, select=points.select())
    assert db.show('Model', 'lr') == [0, 1]


def test_untrainable_models_and_bad_selects(db, points):
    with pytest.raises(ComponentError, match='cannot be trained'):
        ObjectModel('f', object=abs).fit(X='x', y='label', db=db, select=points.select())
    with pytest.raises(ComponentError, match='pass db= and select='):
        SklearnModel('s', object=__import__('sklearn.svm').svm.SVC()).fit(X='x', y='label')


def test_fitting_a_stored_version_leaves_it_as_it_was_stored(db, points):
    """Fitting makes a new object and version: the old version, its listener and the cache keep what was stored."""
    from sklearn.exceptions import NotFittedError
    from sklearn.svm import SVC

    v0 = db.apply(SklearnModel('svc', object=SVC()))
    listener = db.apply(v0.to_listener(points.select(), key='x', identifier='svc-labels'))  # every row fails: unfitted
    fitted = v0.fit(X='x', y='label', db=db, select=points.find())
    assert (v0.version, fitted.version) == (0, 1) and fitted is not v0
    with pytest.raises(NotFittedError):
        v0.predict(np.array([3.0, 3.0]))
    with pytest.raises(NotFittedError):
        db.load('Model', 'svc', 0).predict(np.array([3.0, 3.0]))
    with pytest.raises(NotFittedError):
        db.load('Listener', 'svc-labels').model.predict(np.array([3.0, 3.0]))
    assert db.load('Model', 'svc', 1).predict(np.array([3.0, 3.0])) == 1
    assert db.databackend.count(listener.outputs) == 0
