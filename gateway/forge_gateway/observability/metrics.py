"""Prometheus metrics of one gateway (own registry, so several apps in one process never clash)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "GatewayMetrics"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class GatewayMetrics:
    """Counters, histograms and gauges exported at ``/metrics``.

    Args:
        engine_stats: returns ``(running, waiting)`` summed over the engines, read at scrape time.
        admission_stats: returns ``(running, waiting)`` of the gateway's admission queue.
    """

    def __init__(
        self,
        engine_stats: Callable[[], tuple[int, int]],
        admission_stats: Callable[[], tuple[int, int]],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "forge_requests",
            "HTTP requests by route, status and expert",
            ["route", "status", "expert"],
            registry=r,
        )
        self.latency = Histogram(
            "forge_request_duration_seconds",
            "Time from request start to the last response byte",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter(
            "forge_tokens", "Tokens processed by direction and expert", ["direction", "expert"], registry=r
        )
        self.rate_limited = Counter(
            "forge_rate_limited", "Requests refused by a rate limit, by limit kind", ["kind"], registry=r
        )
        self.auth_failures = Counter(
            "forge_auth_failures", "Requests refused with 401 or 403", ["status"], registry=r
        )
        self.overloaded = Counter(
            "forge_overloaded", "Requests refused by admission control (503)", registry=r
        )
        running = Gauge("forge_engine_running_requests", "Sequences the engines are generating", registry=r)
        waiting = Gauge("forge_engine_queue_depth", "Sequences waiting in the engines' queues", registry=r)
        running.set_function(lambda: engine_stats()[0])
        waiting.set_function(lambda: engine_stats()[1])
        adm_running = Gauge(
            "forge_gateway_inflight_requests", "Generation requests holding a slot", registry=r
        )
        adm_waiting = Gauge(
            "forge_gateway_queued_requests", "Generation requests waiting for a slot", registry=r
        )
        adm_running.set_function(lambda: admission_stats()[0])
        adm_waiting.set_function(lambda: admission_stats()[1])
        self._request_children: dict[tuple[str, str, str], Counter] = {}
        self._latency_children: dict[str, Histogram] = {}

    def observe_request(self, route: str, status: int, expert: str, seconds: float) -> None:
        """Count one finished request (label children cached: no per-request label lookup)."""
        key = (route, str(status), expert)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(*key)
        child.inc()
        hist = self._latency_children.get(route)
        if hist is None:
            hist = self._latency_children[route] = self.latency.labels(route)
        hist.observe(seconds)

    def observe_tokens(self, expert: str, prompt_tokens: int, completion_tokens: int) -> None:
        self.tokens.labels("in", expert).inc(prompt_tokens)
        self.tokens.labels("out", expert).inc(completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
