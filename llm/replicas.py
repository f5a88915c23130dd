"""Replicas of one model server: round-robin over the healthy ones, a cooldown for those that fail.

A replica that fails a request (no connection, a timeout, a 5xx reply) is skipped for `cooldown_s`.
When its cooldown is over, one request at a time is let through to try it (the backend checks it first);
a success makes it healthy again. A replica still cooling down is tried only as a last resort, after
every other one has failed the same request, so that a short outage of all of them costs the requests
made during the outage, not `cooldown_s` of refusals after it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Replica(Generic[T]):
    """One server: its URL, the client that talks to it, and until when it is skipped (None: healthy)."""

    url: str
    client: T
    down_until: float | None = None


@dataclass(frozen=True)
class Attempt(Generic[T]):
    """One replica to try for a request; `check` when it is not known to be healthy."""

    replica: Replica[T]
    check: bool


class ReplicaSet(Generic[T]):
    """Chooses the order in which one request tries the replicas; safe to use from many threads."""

    def __init__(
        self, replicas: list[Replica[T]], cooldown_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not replicas:
            raise ValueError("a replica set needs at least one replica")
        self.replicas = replicas
        self._cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._turn = 0

    def plan(self) -> list[Attempt[T]]:
        """Return the attempts for one request: a replica due for its trial, the healthy ones, the rest.

        A replica whose cooldown is over is claimed for this request (its cooldown restarts, so other
        requests skip it) and goes first, marked to be checked, so that it is tried once and not left
        behind a healthy one. The healthy ones follow in turn, starting one further at each request;
        replicas still cooling down come last, soonest first.
        """
        if len(self.replicas) == 1:
            return [Attempt(self.replicas[0], check=False)]
        with self._lock:
            now = self._clock()
            due: list[Replica[T]] = []
            healthy: list[Replica[T]] = []
            cooling: list[Replica[T]] = []
            for replica in self.replicas:
                if replica.down_until is None:
                    healthy.append(replica)
                elif replica.down_until <= now:
                    replica.down_until = now + self._cooldown_s
                    due.append(replica)
                else:
                    cooling.append(replica)
            if healthy:
                start = self._turn % len(healthy)
                self._turn += 1
                healthy = healthy[start:] + healthy[:start]
            cooling.sort(key=lambda replica: replica.down_until or 0.0)
            return (
                [Attempt(r, check=True) for r in due]
                + [Attempt(r, check=False) for r in healthy]
                + [Attempt(r, check=True) for r in cooling]
            )

    def succeeded(self, replica: Replica[T]) -> None:
        """Mark `replica` healthy: it answered."""
        with self._lock:
            replica.down_until = None

    def failed(self, replica: Replica[T]) -> None:
        """Skip `replica` for the cooldown: it could not be reached or failed."""
        with self._lock:
            replica.down_until = self._clock() + self._cooldown_s
