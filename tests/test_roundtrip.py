"""Property-based round trips (hypothesis): any value of any field type is read back exactly as written, or refused
with ``InvalidValue`` and nothing stored, on every backend. Equal means equal as the type defines it: a JSON
number is its decimal value (``1.0`` and ``1`` are one JSON number), and ``-0.0 == 0.0`` (SQLite keeps no sign on
a zero)."""

from __future__ import annotations

import datetime
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from superduper import Table
from superduper.base.exceptions import InvalidValue

TEXT = st.one_of(st.text(), st.sampled_from(['\x00', 'a\udc80b', '\ud800', 'é\U0001F600', '']))
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53), max_value=2**53) | TEXT
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)
TYPES = {
    'str': TEXT,
    'int': st.integers(),
    'float': st.floats(),
    'bool': st.booleans(),
    'bytes': st.binary(max_size=300),
    'datetime': st.datetimes(min_value=datetime.datetime(1000, 1, 1)),
    'uuid': st.uuids(),
    'json': JSON,
    'vector[float32:4]': st.lists(st.floats(width=32) | st.none(), min_size=4, max_size=4),
    'array[int16:2x2]': st.lists(st.lists(st.integers(-(2**16), 2**16), min_size=2, max_size=2), min_size=2, max_size=2),
}
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


#: bugs these round trips found, not capabilities: expected to fail (strictly: a fix is noticed) until fixed
BUGS = {
    ('mariadb', 'uuid'): "MariaDB's UUID column refuses some uuid.UUID values (seen: variant 0; error 1292)",
    ('mongomock', 'uuid'): 'a uuid.UUID is handed to BSON with no UUID representation configured',
    ('mongomock', 'datetime'): 'MongoDB keeps milliseconds: microseconds are cut, not refused',
}


def same(a, b, json_numbers: bool = False) -> bool:
    """Equal, of the same type; a float keeps its sign and NaN. In JSON a number is a number (``1.0`` may come
    back as ``1``: JSON does not tell them apart)."""
    if json_numbers and isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        # the same decimal number: PostgreSQL's jsonb writes 4.2e+16 as 42000000000000000
        return not isinstance(b, bool) and (a == b if isinstance(a, int) and isinstance(b, int) else float(a) == float(b))
    if isinstance(a, float) and isinstance(b, float):  # -0.0 may come back as 0.0 from SQLite: the same number
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a, dtype=np.asarray(b).dtype), np.asarray(b), equal_nan=True)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], json_numbers) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, json_numbers) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


@pytest.mark.parametrize('ftype', TYPES)
def test_values_round_trip_exactly_or_are_refused(db, ftype, backend, request):
    if (backend, ftype) in BUGS:
        request.applymarker(pytest.mark.xfail(reason=f'bug: {BUGS[backend, ftype]}', strict=True))
    db.apply(Table('values', fields={'x': ftype}, folds=False))
    t = db['values']

    @PROPERTY
    @given(values=st.lists(TYPES[ftype], min_size=1, max_size=5))
    def check(values):
        t.delete().execute()
        rows = [{'id': str(i), 'x': v} for i, v in enumerate(values)]
        try:
            t.insert(rows).execute()
        except InvalidValue as e:
            assert "field 'x'" in str(e)
            assert t.count().execute() == 0  # nothing of the batch
            return
        stored = {r['id']: r['x'] for r in t.select().execute()}
        for i, v in enumerate(values):
            assert same(v, stored[str(i)], json_numbers=ftype == 'json'), (ftype, v, stored[str(i)])

    check()
