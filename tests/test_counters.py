"""The lock-free per-request families scrape exactly as prometheus_client's own classes do."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest

from apikeyrouter.observe.counters import CounterFamily, GaugeValue, HistogramFamily
from apikeyrouter.observe.metrics import ProxyMetrics

BUCKETS = (0.0005, 0.001, 0.25, 1, 2.5)
OBSERVED = (0.0001, 0.0005, 0.0007, 0.25, 0.3, 1.0, 2.5, 7.0, 120.0)


def _scrape(registry: CollectorRegistry) -> tuple[list[str], list[str]]:
    """(every line but the `_created` samples' values, the `_created` sample names with labels)."""
    lines = generate_latest(registry).decode().splitlines()
    created = [line.rsplit(" ", 1)[0] for line in lines if re.match(r"^\w+_created[{ ]", line)]
    rest = [line for line in lines if not re.match(r"^\w+_created[{ ]", line)]
    return rest, created


def test_a_scrape_of_the_families_equals_prometheus_clients_for_the_same_updates() -> None:
    theirs, ours = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    requests = Counter("t_requests", "Requests.", ("route", "status"), registry=theirs)
    duration = Histogram("t_seconds", "Durations.", ("route",), buckets=BUCKETS, registry=theirs)
    in_flight = Gauge("t_in_flight", "Now.", registry=theirs)
    attempts = Counter("t_attempts", "Attempts.", registry=theirs)
    my_requests = CounterFamily("t_requests", "Requests.", ("route", "status"))
    my_duration = HistogramFamily("t_seconds", "Durations.", ("route",), buckets=BUCKETS)
    my_in_flight = GaugeValue("t_in_flight", "Now.")
    my_attempts = CounterFamily("t_attempts", "Attempts.")
    for family in (my_requests, my_duration, my_in_flight, my_attempts):
        family.register(ours)

    for i, seconds in enumerate(OBSERVED):
        route, status = ("/v1/chat/completions", 200) if i % 3 else ("/v1/messages", 429)
        requests.labels(route, str(status)).inc()
        my_requests.inc((route, status))
        duration.labels(route).observe(seconds)
        my_duration.observe((route,), seconds)
        attempts.inc(i % 2 + 1)
        my_attempts.inc((), i % 2 + 1)
    in_flight.inc()
    in_flight.inc()
    in_flight.dec()
    my_in_flight.inc()
    my_in_flight.inc()
    my_in_flight.dec()

    assert _scrape(ours) == _scrape(theirs)
    assert my_attempts.value() == 1 + 2 + 1 + 2 + 1 + 2 + 1 + 2 + 1


def test_the_proxy_series_read_back_through_the_registry() -> None:
    metrics = ProxyMetrics()
    metrics.in_flight.inc()
    metrics.observe("/v1/chat/completions", 200, 0.002)
    metrics.observe("/v1/chat/completions", 200, 0.2)
    metrics.served("k1", "openai", 2)
    metrics.failed("rate_limited")
    r = metrics.registry
    assert r.get_sample_value("apikeyrouter_http_requests_in_flight") == 1.0
    chat = {"route": "/v1/chat/completions"}
    assert r.get_sample_value("apikeyrouter_http_requests_total", {**chat, "status": "200"}) == 2
    bucket = {"route": "/v1/chat/completions", "le": "0.005"}
    assert r.get_sample_value("apikeyrouter_http_request_duration_seconds_bucket", bucket) == 1
    assert r.get_sample_value("apikeyrouter_http_request_duration_seconds_count", chat) == 2
    assert r.get_sample_value("apikeyrouter_requests_served_total", {"key": "k1", "provider": "openai"}) == 1
    assert r.get_sample_value("apikeyrouter_upstream_attempts_total") == 2
    assert r.get_sample_value("apikeyrouter_request_failures_total", {"failure_class": "rate_limited"}) == 1
