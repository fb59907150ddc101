"""Prometheus metrics of one server: requests (count and latency per route), and per listener the rows done,
pending and failed and the lag of the oldest pending change, read from ``db.status()`` when scraped."""

from __future__ import annotations

from typing import Any, Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ListenerCollector:
    """Gauges made from the listeners' status at each scrape."""

    def __init__(self, status: Callable[[], list[dict]]):
        self.status = status

    def describe(self) -> list[Metric]:
        return []  # the listeners are known only when scraped

    def collect(self) -> Iterator[Metric]:
        report = self.status()
        gauges = {
            'done': GaugeMetricFamily('superduper_listener_rows_done', 'rows with outputs', labels=['listener']),
            'pending': GaugeMetricFamily('superduper_listener_pending', 'changes waiting to be computed',
                                         labels=['listener']),
            'failed': GaugeMetricFamily('superduper_listener_failed', 'rows that failed', labels=['listener']),
            'lag_seconds': GaugeMetricFamily('superduper_listener_lag_seconds',
                                             'age of the oldest pending change', labels=['listener']),
        }
        for row in report:
            for name, gauge in gauges.items():
                if row.get(name) is not None:
                    gauge.add_metric([row['listener']], float(row[name]))
        yield from gauges.values()
        depth = GaugeMetricFamily('superduper_queue_depth', 'changes waiting, all listeners')
        depth.add_metric([], float(sum(r['pending'] or 0 for r in report)))
        yield depth


class Metrics:
    def __init__(self, status: Callable[[], list[dict]]):
        self.registry = CollectorRegistry()
        self.requests = Counter('superduper_http_requests', 'requests answered', ['method', 'route', 'status'],
                                registry=self.registry)
        self.latency = Histogram('superduper_http_request_seconds', 'time to answer a request', ['method', 'route'],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ListenerCollector(status))  # type: ignore[arg-type]
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        series = self._series.get((method, route, status))
        if series is None:  # labels() costs a lock and a lookup: once per series
            series = self._series[(method, route, status)] = (self.requests.labels(method, route, str(status)),
                                                              self.latency.labels(method, route))
        series[0].inc()
        series[1].observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def route_of(scope: dict[str, Any]) -> str:
    """The route's path template (``/api/v1/models/{identifier}/predict``), not the path asked for: one series per
    route, however many identifiers are asked for; ``other`` for paths no route matched."""
    route = scope.get('route')
    return getattr(route, 'path', None) or 'other'
