"""Replicas of a remote expert: per-replica state, the balancing choice, health probes, metrics.

An expert with ``endpoints`` has several upstream servers for one model. Each replica keeps its
own outstanding-request count, consecutive-failure count and cooldown, so one dead server costs
only its own share of traffic. The choice is "power of two choices": two random available
replicas, the one with fewer requests in flight wins (with two replicas: least outstanding).
It needs no global view and avoids the herd that plain least-outstanding causes when several
gateway replicas all see the same "emptiest" server.

A cooling replica is probed (``GET <endpoint>/models``) every ``router.health_check_interval``
seconds; any HTTP answer below 500 ends its cooldown, so traffic returns as soon as the server is
back rather than after the full ``cooldown_s``. A probe that fails (no answer, or a 5xx) keeps the
replica out even once its cooldown has run out: traffic returns on the first good probe, not on a
timer while the server is still down.

A failure episode (threshold reached, until a success or a good probe) is logged once
(``replica_cooldown``) and starts one cooldown: requests that were already in flight and fail
during it neither log again nor push its end further out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from forge_gateway.upstream.endpoints import join_endpoint
from forge_sdk.experts import ExpertModel

__all__ = ["HealthProber", "ReplicaSet", "ReplicaState", "UpstreamCollector"]

log = structlog.get_logger("forge_gateway.upstream")


@dataclass(slots=True)
class ReplicaState:
    """Health and load of one upstream endpoint of one expert."""

    url: str
    outstanding: int = 0
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    last_error: str | None = None
    requests: int = 0
    failures: int = 0
    probe_failing: bool = False
    """The last health probe failed: no traffic, whatever the cooldown says, until one succeeds."""
    in_episode: bool = False
    """A failure episode is under way (logged once; ends on a success or a good probe)."""

    def available(self, now: float) -> bool:
        return now >= self.cooldown_until and not self.probe_failing

    def release(self) -> None:
        """One request to this replica ended."""
        self.outstanding -= 1

    def as_dict(self, now: float) -> dict[str, Any]:
        cooling = not self.available(now)
        return {
            "endpoint": self.url,
            "state": "cooldown" if cooling else "ok",
            "outstanding": self.outstanding,
            "consecutive_failures": self.consecutive_failures,
            "cooldown_remaining_s": round(max(0.0, self.cooldown_until - now), 2) if cooling else 0.0,
            "probe_failing": self.probe_failing,
            "last_error": self.last_error,
            "requests": self.requests,
            "failures": self.failures,
        }


class ReplicaSet:
    """The replicas of one expert (in the expert's order) and the balancing choice.

    Args:
        urls: the expert's endpoints.
        failure_threshold: consecutive failed requests before a replica cools down.
        cooldown_s: how long a failing replica is skipped.
    """

    def __init__(self, urls: Iterable[str], *, failure_threshold: int, cooldown_s: float) -> None:
        self.states = [ReplicaState(url) for url in urls]
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s

    @property
    def urls(self) -> list[str]:
        return [s.url for s in self.states]

    def available(self, now: float) -> bool:
        """Whether any replica may take a request now."""
        return any(s.available(now) for s in self.states)

    def pick(self, now: float, exclude: set[str]) -> ReplicaState | None:
        """Power of two choices over the available replicas not in ``exclude`` (None: none left)."""
        if len(self.states) == 1:  # the common single-endpoint expert: no lists, no random draws
            only = self.states[0]
            return only if only.available(now) and only.url not in exclude else None
        candidates = [s for s in self.states if s.available(now) and s.url not in exclude]
        if len(candidates) > 2:
            candidates = random.sample(candidates, 2)
        if not candidates:
            return None
        return min(candidates, key=lambda s: (s.outstanding, random.random()))

    def failed(self, replica: ReplicaState, error: str, expert: str) -> None:
        """Count one failed request on ``replica``; cool it down at the threshold, once per episode."""
        replica.consecutive_failures += 1
        replica.failures += 1
        replica.last_error = error
        now = time.monotonic()
        if not replica.available(now):
            return  # sent before the cooldown began: the episode is already counted and timed
        if replica.consecutive_failures >= self.failure_threshold:
            # Out of cooldown and failing again (a trial after it ran out): cool down again.
            replica.cooldown_until = now + self.cooldown_s
            if not replica.in_episode:
                replica.in_episode = True
                log.warning(
                    "replica_cooldown",
                    expert=expert,
                    endpoint=replica.url,
                    seconds=self.cooldown_s,
                    error=error,
                )

    @staticmethod
    def succeeded(replica: ReplicaState) -> None:
        """A request (or a health probe) succeeded: the failure episode is over."""
        if (
            replica.consecutive_failures
            or replica.cooldown_until
            or replica.probe_failing
            or replica.in_episode
        ):
            replica.consecutive_failures = 0
            replica.cooldown_until = 0.0
            replica.probe_failing = False
            replica.in_episode = False

    def status(self, now: float) -> dict[str, Any]:
        """The expert's state for ``/experts``: cooling only when every replica is."""
        states = [s.as_dict(now) for s in self.states]
        cooling = not self.available(now)
        return {
            "state": "cooldown" if cooling else "ok",
            "consecutive_failures": min(s.consecutive_failures for s in self.states),
            "cooldown_remaining_s": round(max(0.0, min(s.cooldown_until for s in self.states) - now), 2)
            if cooling
            else 0.0,
            "last_error": next((s.last_error for s in self.states if s.last_error), None),
            "replicas": states,
        }


class HealthProber:
    """Background probes of cooling replicas; a server that answers again gets traffic at once.

    Args:
        replica_sets: returns ``(expert, replica set)`` pairs to look at (read on every round).
        interval: seconds between rounds (0: no probing).
    """

    def __init__(self, replica_sets: Callable[[], Iterable[tuple[ExpertModel, ReplicaSet]]], interval: float):
        self._sets = replica_sets
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(), name="forge-replica-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        import httpx

        # A separate small client: probes are rare GETs, off the hot path's pooled POST client.
        async with httpx.AsyncClient(
            timeout=min(5.0, max(0.5, self.interval)), follow_redirects=False
        ) as client:
            while True:
                await asyncio.sleep(self.interval)
                now = time.monotonic()
                probes = [
                    self._probe(client, expert, replica)
                    for expert, replicas in list(self._sets())
                    for replica in replicas.states
                    if not replica.available(now)
                ]
                if probes:
                    await asyncio.gather(*probes)

    async def _probe(self, client: Any, expert: ExpertModel, replica: ReplicaState) -> None:
        headers = {}
        if expert.api_key_env and (key := os.environ.get(expert.api_key_env)):
            headers["authorization"] = f"Bearer {key}"
        try:
            resp = await client.get(join_endpoint(replica.url, "models"), headers=headers)
        except Exception:  # still down (connect error, timeout, garbage): keep it out
            replica.probe_failing = True
            return
        if resp.status_code >= 500:
            replica.probe_failing = True
        else:
            log.info("replica_recovered", expert=expert.name, endpoint=replica.url, status=resp.status_code)
            ReplicaSet.succeeded(replica)


class UpstreamCollector:
    """Prometheus collector of per-replica state, read at scrape time (no per-request cost).

    Args:
        replica_sets: returns ``(expert name, replica set)`` pairs.
    """

    def __init__(self, replica_sets: Callable[[], Iterable[tuple[str, ReplicaSet]]]) -> None:
        self._sets = replica_sets

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["expert", "endpoint"]
        up = GaugeMetricFamily(
            "forge_upstream_replica_up", "1 if the replica takes traffic, 0 in cooldown", labels=labels
        )
        inflight = GaugeMetricFamily(
            "forge_upstream_replica_outstanding", "Requests in flight to the replica", labels=labels
        )
        requests = CounterMetricFamily(
            "forge_upstream_replica_requests", "Requests sent to the replica", labels=labels
        )
        failures = CounterMetricFamily(
            "forge_upstream_replica_failures",
            "Requests the replica failed (after its retries)",
            labels=labels,
        )
        now = time.monotonic()
        for name, replicas in list(self._sets()):
            for s in replicas.states:
                values = [name, s.url]
                up.add_metric(values, 1.0 if s.available(now) else 0.0)
                inflight.add_metric(values, s.outstanding)
                requests.add_metric(values, s.requests)
                failures.add_metric(values, s.failures)
        yield from (up, inflight, requests, failures)

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families are only known at scrape time
