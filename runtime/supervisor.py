"""The supervisor actor: gives restarted actors their loops back.

Ray brings a dead actor's process back (``max_restarts=-1``), on a surviving node when its
node died, but runs only its constructor; the loop of a bridge worker (its MQTT session),
the planner (its schedule), the alert manager and the model job starts on their first
``start()``, which is idempotent. The supervisor calls ``start()`` on each of them every
``period_s``: a call to a healthy actor is cheap, and the period bounds how long a
restarted bridge worker stays unsubscribed (the broker keeps its messages meanwhile).

It is an actor, not a thread of the process that started the system, so it keeps working
when that process is gone: after ``serve deploy`` (``bms.serve_app``) no such process
stays. Its own loop starts in its constructor, so a restart of the supervisor needs no one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import ray

from runtime.names import SUPERVISOR_NAME
from runtime.options import actor_options

__all__ = ["start_supervisor", "supervise_once"]

log = logging.getLogger(__name__)

#: How long one actor's ``start()`` may take before it counts as unhealthy this round.
START_TIMEOUT_S = 30.0


def supervise_once(names: Sequence[str], namespace: str) -> list[str]:
    """Call ``start()`` on each named actor; the names that did not answer (logged)."""
    unhealthy = []
    for name in names:
        try:
            ray.get(ray.get_actor(name, namespace=namespace).start.remote(), timeout=START_TIMEOUT_S)
        except Exception:
            log.exception("%s is not healthy", name)
            unhealthy.append(name)
    return unhealthy


class _SupervisorActor:
    def __init__(self, names: list[str], namespace: str, period_s: float) -> None:
        self._names = names
        self._namespace = namespace
        self._period_s = period_s
        self._rounds = 0
        self._stop = threading.Event()
        # A thread, not an asyncio task: ray.get blocks, and this actor has nothing else to do.
        self._thread = threading.Thread(target=self._loop, name="bms-supervisor", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._period_s):
            supervise_once(self._names, self._namespace)
            self._rounds += 1

    def rounds(self) -> int:
        """Supervision rounds done since this process started (tests wait on it)."""
        return self._rounds

    def stop(self) -> None:
        self._stop.set()


def start_supervisor(names: Sequence[str], namespace: str, period_s: float = 1.0) -> Any:
    """Start (or find) the named, detached supervisor of ``names``."""
    if period_s <= 0:
        raise ValueError(f"Expected a supervision period > 0 s, got {period_s}.")
    options = actor_options("supervisor", SUPERVISOR_NAME, namespace)
    return ray.remote(_SupervisorActor).options(**options).remote(list(names), namespace, period_s)
