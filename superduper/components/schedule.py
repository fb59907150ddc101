"""``Schedule``: run one action on a cron expression, by the workers (``superduper start``), once per tick.

Exactly one action:

- ``model=``, ``select=``, ``key=``: predict over the rows the query picks at each tick, as a listener's backfill
  would, and keep the outputs in ``_outputs__<identifier>__<uuid8>`` keyed by the source row's key (``_source``),
  with the output in a column of the table's name: the outputs of the latest run (rows no longer picked lose theirs).
  ``db[table].select().outputs(schedule.predict_id)`` reads them next to the rows;
- ``fit=`` with ``X=``, ``y=`` (optional) and ``select=``: train the model on the rows picked (``db.fit``), each run
  storing a new version of it;
- ``listener=``: recompute all of a listener's outputs.

Ticks are in UTC; ``cron`` has 5 fields, or 6 with seconds last (croniter's form: ``'* * * * * */10'`` is every ten
seconds). How workers share the ticks is in ``superduper.runtime.schedules``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, ClassVar

from superduper.base.exceptions import ComponentError, MissingDependency
from superduper.base.query import Query
from superduper.components.component import Component
from superduper.components.inputs import input_maker
from superduper.components.listener import Outputs


def croniter_class() -> Any:
    """croniter's class, or ``MissingDependency`` with the install hint (an optional extra)."""
    try:
        from croniter import croniter
    except ImportError as e:
        raise MissingDependency("schedules need the croniter package, which is not installed: "
                                "pip install 'superduper[schedule]'") from e
    return croniter


def check_cron(expression: Any, what: str) -> None:
    """Refuse anything but a valid 5-field cron expression, or a 6-field one with seconds."""
    fields = expression.split() if isinstance(expression, str) else []
    if len(fields) not in (5, 6):
        raise ComponentError(f'{what}: cron={expression!r} is not a cron expression of 5 fields (minute hour day '
                             'month weekday), or 6 with seconds last')
    try:
        croniter_class()(expression, datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc))
    except MissingDependency:
        raise
    except Exception as e:  # croniter's own errors (CroniterBadCronError, ValueError, ...)
        raise ComponentError(f'{what}: cron={expression!r} is not a valid cron expression: {e}') from e


@dataclass(eq=False)
class Schedule(Outputs, Component):
    """``Schedule('nightly', cron='0 3 * * *', model=m, select=db['docs'].select(), key='txt')``, or ``fit=model``
    (with ``X=``, ``y=``, ``select=``), or ``listener=listener``."""

    type_id: ClassVar[str] = 'Schedule'
    extra: ClassVar[str | None] = 'schedule'

    identifier: str = ''
    cron: str = ''
    model: Any = None
    select: Any = None  # a query, or just a table name
    key: Any = None
    fit: Any = None
    X: Any = None
    y: str | None = None
    listener: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        what = f'Schedule {self.identifier!r}'
        check_cron(self.cron, what)
        actions = [name for name in ('model', 'fit', 'listener') if getattr(self, name) is not None]
        if len(actions) != 1:
            raise ComponentError(f'{what}: give exactly one action: model= (with select= and key=), fit= (with X= '
                                 f'and select=) or listener=; got {", ".join(actions) or "none"}')
        getattr(self, f'_check_{actions[0]}')(what)

    @property
    def action(self) -> str:
        """'predict', 'fit' or 'recompute'."""
        return 'predict' if self.model is not None else 'fit' if self.fit is not None else 'recompute'

    def _check_model(self, what: str) -> None:
        self._check_is_model(self.model, 'model', what)
        if self.key is None:
            raise ComponentError(f'{what}: key= names the input field(s) of model {self.model.identifier!r}')
        input_maker(self.key)
        self._check_select(what)
        self._check_unused(what, 'X', 'y')

    def _check_fit(self, what: str) -> None:
        self._check_is_model(self.fit, 'fit', what)
        if not getattr(self.fit, 'trainable', False):
            raise ComponentError(f'{what}: {type(self.fit).__name__} {self.fit.identifier!r} cannot be trained')
        if self.X is None:
            raise ComponentError(f'{what}: X= names the input field(s) to train {self.fit.identifier!r} on')
        self._check_select(what)
        self._check_unused(what, 'key')

    def _check_listener(self, what: str) -> None:
        if not isinstance(self.listener, Component) or self.listener.type_id != 'Listener':
            raise ComponentError(f'{what}: listener= must be a Listener, got {type(self.listener).__name__}')
        self._check_unused(what, 'select', 'key', 'X', 'y')

    @staticmethod
    def _check_is_model(value: Any, name: str, what: str) -> None:
        if not isinstance(value, Component) or value.type_id != 'Model':
            hint = ' (wrap a function as ObjectModel(identifier, object=fn))' if callable(value) else ''
            raise ComponentError(f'{what}: {name}= must be a Model, got {type(value).__name__}{hint}')

    def _check_select(self, what: str) -> None:
        if isinstance(self.select, str):
            self.select = Query(self.select)
        if not isinstance(self.select, Query) or self.select.action != 'select':
            raise ComponentError(f'{what}: select= must be a select query or a table name, got {self.select!r}')
        self.select = self.select.bind(None)  # stored declaratively; run against whichever db applies it

    def _check_unused(self, what: str, *names: str) -> None:
        given = [name for name in names if getattr(self, name) is not None]
        if given:
            raise ComponentError(f'{what}: {", ".join(given)}= not used by its {self.action} action')

    def check(self, db: Any) -> None:
        db.schedules.check(self)

    def on_create(self, db: Any) -> None:
        db.schedules.prepare(self)

    def on_remove(self, db: Any) -> None:
        db.schedules.stop(self)
