"""Batches go to DuckDB and ClickHouse as Arrow only where Arrow stores what binding each value would."""

import datetime
import json

import pytest

from superduper.backends.sql.arrow_rows import arrow_table

pytest.importorskip('pyarrow')


def test_plain_columns_become_one_arrow_table():
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, 6)
    table = arrow_table(['id', 'n', 'f', 'b', 'ts'], [['a', None], [1, None], [1, 0.5], [True, None], [when, None]],
                        ['string', 'int64', 'float64', 'bool_', 'timestamp'])
    assert table.to_pydict() == {'id': ['a', None], 'n': [1, None], 'f': [1.0, 0.5], 'b': [True, None],
                                 'ts': [when, None]}


@pytest.mark.parametrize('values, kind', [
    (['a', 1], 'string'),  # another type: the database converts it, not Arrow
    ([b'a'], 'string'),  # Arrow would take bytes as text
    ([True], 'int64'),
    ([2**60 + 1], 'float64'),  # no double holds it exactly
    ([2**64], 'int64'),
    (['\ud800'], 'string'),  # not UTF-8: the database's own error
    ([datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)], 'timestamp'),
])
def test_values_arrow_would_store_otherwise_are_bound_as_before(values, kind):
    assert arrow_table(['x'], [values], [kind]) is None


def test_a_column_of_no_arrow_kind_or_no_rows_is_bound_as_before():
    assert arrow_table(['x', 'v'], [['a'], [[1.0]]], ['string', None]) is None
    assert arrow_table(['x'], [[]], ['string']) is None


def test_json_columns_are_written_as_json_dumps_writes_them():
    pytest.importorskip('clickhouse_connect')
    from superduper.backends.sql.clickhouse import _json_texts

    values = [None, {'a': [1, 2.5, None, True]}, 'é"\\', 3, float('nan'), [], {1: 'x'}, {'k': {'n': [{'y': '\u2028'}]}}]
    assert _json_texts(values) == [None if v is None else json.dumps(v) for v in values]
    cycle: list = []
    cycle.append(cycle)
    assert _json_texts([{'when': datetime.datetime(2024, 1, 1)}]) is None  # then bound one by one, raising as before
    assert _json_texts([cycle]) is None
