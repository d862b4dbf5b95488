"""AlertManager: the alert book behind one lock, persisted, then told to people and the planner.

Plain asyncio, no Ray (the runtime hosts it as an actor, as ``twins/shard.py``'s shard is
hosted): unit tests drive it with an in-memory store and a fake clock.

Every call that changes something runs in this order, under one :class:`asyncio.Lock`:

1. the book applies it (:class:`alerts.book.AlertBook`: the truth in memory);
2. the store saves every alert it changed and every transition, in one ``save`` call;
3. ``notify`` is awaited with the transitions people should hear about;
4. ``urgent`` is awaited with the critical battery alerts that just fired (the planner).

A failing ``notify`` or ``urgent`` is logged, never raised: the state is saved by then, and
the next change notifies as usual. A failing ``save`` is raised to the caller, and what it
held is kept and saved (and then notified) first on the next call, so no transition is lost
while the database is away.

Who hears what
--------------
``notify`` gets a transition to ``firing``, ``acknowledged`` or ``resolved`` and an
escalation, unless the alert is muted (silenced or inhibited) or the resolution is of an
alert that never fired. New ``pending`` alerts are history only. ``urgent`` gets the
alerts that went ``firing`` (or escalated to critical while firing) with severity
critical and a battery id, and are not muted: a silence or an explaining outage means
somebody already handles it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from alerts.book import AlertBook
from alerts.rules import AlertRules
from contracts.alerts import (
    Alert,
    AlertSeverity,
    AlertSignal,
    AlertState,
    AlertTransition,
    Silence,
)

__all__ = ["AlertManager", "AlertStoreProtocol", "ManagerStats", "Notify", "Urgent"]

log = logging.getLogger(__name__)

#: Called with (alert snapshot, transition) pairs people should hear about.
Notify = Callable[[Sequence[tuple[Alert, AlertTransition]]], Awaitable[None]]
#: Called with critical battery alerts that just fired (the planner's urgent feed).
Urgent = Callable[[Sequence[Alert]], Awaitable[None]]

_NOTIFIED_STATES = (AlertState.FIRING, AlertState.ACKNOWLEDGED, AlertState.RESOLVED)


class AlertStoreProtocol(Protocol):
    """Where the manager keeps alerts, their history and silences
    (:class:`store.alert_store.AlertStore`)."""

    async def load_open(self) -> tuple[Sequence[Alert], Sequence[Silence]]:
        """Every open alert and every silence that has not ended."""
        ...

    async def save(self, alerts: Sequence[Alert], transitions: Sequence[AlertTransition]) -> None:
        """Upsert ``alerts`` and append ``transitions``, in one transaction.

        An alert without an id is inserted and gets one (the store sets ``alert.id`` once
        the transaction committed); one with an id is updated. A transition whose
        ``alert_id`` is ``None`` belongs to the alert in ``alerts`` with its key and no id;
        the manager never passes two such alerts with one key.
        """
        ...

    async def add_silence(self, silence: Silence) -> Silence:
        """Store a new silence; returns it with its id and ``created_at_s``."""
        ...

    async def expire_silence(self, silence_id: int, actor: str, at_s: float) -> Silence:
        """End a silence at ``at_s``, attributed to ``actor``; :class:`KeyError` if none is
        active with that id."""
        ...


@dataclass(frozen=True)
class ManagerStats:
    """What the manager did since it started (for metrics and ``bms status``).

    Parameters
    ----------
    open_alerts
        Alerts open now; ``muted`` of them silenced or inhibited.
    silences
        Silences that have not ended.
    observed_signals, transitions, notified
        Totals: signals observed, transitions recorded, transitions handed to ``notify``.
    urgent_alerts
        Alerts handed to ``urgent``.
    save_failures, notify_failures, urgent_failures
        Calls of each that raised.
    unsaved_alerts, unsaved_transitions
        Held for the next save after a failed one (0 when the store is healthy).
    last_save_s
        Seconds the last successful save took.
    """

    open_alerts: int
    muted: int
    silences: int
    observed_signals: int
    transitions: int
    notified: int
    urgent_alerts: int
    save_failures: int
    notify_failures: int
    urgent_failures: int
    unsaved_alerts: int
    unsaved_transitions: int
    last_save_s: float


class AlertManager:
    """The alert book, its store and its listeners, serialised.

    Parameters
    ----------
    rules
        Timings and inhibit rules for the book.
    store
        Persistence (:class:`AlertStoreProtocol`).
    notify
        Awaited with the (alert snapshot, transition) pairs people should hear about (the
        runtime plugs in the live stream and webhooks); see the module doc for which.
    urgent
        Awaited with critical battery alerts that just fired (the planner feed), or ``None``.
    now
        The clock, Unix seconds.
    """

    def __init__(
        self,
        rules: AlertRules,
        store: AlertStoreProtocol,
        notify: Notify,
        urgent: Urgent | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._book = AlertBook(rules)
        self._store = store
        self._notify = notify
        self._urgent = urgent
        self._now = now
        self._lock = asyncio.Lock()
        self._started = False
        # What a failed save left behind, saved first next time (see module doc).
        self._unsaved_alerts: dict[int, Alert] = {}
        self._unsaved: list[tuple[Alert, AlertTransition]] = []
        self._observed_signals = 0
        self._transitions = 0
        self._notified = 0
        self._urgent_alerts = 0
        self._save_failures = 0
        self._notify_failures = 0
        self._urgent_failures = 0
        self._last_save_s = 0.0

    async def start(self) -> None:
        """Load the open alerts and live silences from the store; call once, before the rest.

        Timers resume from the stored times; mute flags are recomputed on the first
        :meth:`tick`.
        """
        async with self._lock:
            alerts, silences = await self._store.load_open()
            self._book.restore(alerts, silences)
            self._started = True
            log.info(
                "alert manager started with %d open alerts, %d silences", len(alerts), len(silences)
            )

    async def observe(
        self, source: str, signals: Sequence[AlertSignal], complete: bool = True
    ) -> list[AlertTransition]:
        """Apply one source's report (see :meth:`alerts.book.AlertBook.observe`).

        Returns
        -------
        list of AlertTransition
            The transitions it caused, with alert ids.

        Raises
        ------
        psycopg.Error or StoreError
            Whatever the store raised; the change is applied in memory and saved next time.
        """
        async with self._lock:
            self._require_started()
            self._observed_signals += len(signals)
            transitions = self._book.observe(source, signals, self._now(), complete=complete)
            return await self._commit(transitions)

    async def tick(self) -> list[AlertTransition]:
        """Run the timers (fire held alerts, resolve cleared ones, update mutes); the
        runtime calls it about every second."""
        async with self._lock:
            self._require_started()
            transitions = self._book.evaluate(self._now())
            return await self._commit(transitions)

    async def acknowledge(self, alert_id: int, actor: str, note: str | None = None) -> Alert:
        """A firing alert becomes acknowledged by ``actor``; returns a snapshot of it.

        Raises
        ------
        KeyError
            No open alert has ``alert_id``.
        ValueError
            It is not firing, or ``actor`` is empty.
        """
        async with self._lock:
            self._require_started()
            transition = self._book.acknowledge(alert_id, actor, note, self._now())
            await self._commit([transition])
            return replace(self._book.get(transition.alert_key))

    async def add_silence(
        self,
        matchers: Mapping[str, str],
        duration_s: float,
        author: str,
        comment: str = "",
        *,
        starts_at_s: float | None = None,
    ) -> Silence:
        """Mute the alerts that match from ``starts_at_s`` (default now) for ``duration_s``.

        The silence is stored first, then the mute flags of the open alerts are updated and
        saved at once.

        Raises
        ------
        ValueError
            No matchers, ``duration_s`` not > 0, or an empty author.
        """
        if not author.strip():
            raise ValueError(f"Expected a non-empty author for the silence, got {author!r}.")
        async with self._lock:
            self._require_started()
            now_s = self._now()
            # Stores keep microseconds: a start rounded up past now would leave the silence
            # inactive (and its alerts unmuted) until the next tick, so round down.
            start_s = math.floor(now_s * 1e6) / 1e6 if starts_at_s is None else starts_at_s
            silence = Silence(
                matchers=dict(matchers), starts_at_s=start_s, ends_at_s=start_s + duration_s,
                author=author, comment=comment, created_at_s=now_s,
            )  # fmt: skip
            stored = await self._store.add_silence(silence)
            self._book.add_silence(stored)
            await self._commit(self._book.evaluate(now_s))
            return stored

    async def expire_silence(self, silence_id: int, actor: str) -> Silence:
        """End a silence now; the alerts it muted notify again from their next change.

        Raises
        ------
        KeyError
            No silence with that id is active.
        ValueError
            It has not started yet, or ``actor`` is empty.
        """
        if not actor.strip():
            raise ValueError(f"Expected a non-empty actor to expire the silence, got {actor!r}.")
        async with self._lock:
            self._require_started()
            now_s = self._now()
            self._book.check_expirable(silence_id, now_s)
            stored = await self._store.expire_silence(silence_id, actor, now_s)
            self._book.expire_silence(silence_id, now_s)
            await self._commit(self._book.evaluate(now_s))
            return stored

    def list_open(self) -> list[Alert]:
        """Snapshots of the open alerts, newest first."""
        return sorted(
            (replace(a) for a in self._book.open_alerts()),
            key=lambda a: a.started_at_s,
            reverse=True,
        )

    def silences(self, include_expired: bool = False) -> list[Silence]:
        """Silences that have not ended (and ended ones with ``include_expired``), newest first."""
        return self._book.silences(self._now(), include_expired)

    def counts(self) -> dict[tuple[AlertState, AlertSeverity], int]:
        """Open alerts per (state, severity), for metrics."""
        return self._book.counts()

    def stats(self) -> ManagerStats:
        """What the manager did so far (see :class:`ManagerStats`)."""
        open_alerts = self._book.open_alerts()
        return ManagerStats(
            open_alerts=len(open_alerts),
            muted=sum(1 for a in open_alerts if a.muted),
            silences=len(self._book.silences(self._now())),
            observed_signals=self._observed_signals,
            transitions=self._transitions,
            notified=self._notified,
            urgent_alerts=self._urgent_alerts,
            save_failures=self._save_failures,
            notify_failures=self._notify_failures,
            urgent_failures=self._urgent_failures,
            unsaved_alerts=len(self._unsaved_alerts),
            unsaved_transitions=len(self._unsaved),
            last_save_s=self._last_save_s,
        )

    # -- internals -------------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise RuntimeError(
                "Cannot change alerts before the manager has loaded them: await start() first."
            )

    async def _commit(self, transitions: Sequence[AlertTransition]) -> list[AlertTransition]:
        """Save what the book changed (plus what a failed save left), then notify.

        Returns this call's transitions with the ids the store gave their alerts.
        """
        self._transitions += len(transitions)
        changed = self._book.drain_changed()
        # Within one book call a key names one alert, so the pairing by key is exact.
        by_key = {a.key: a for a in changed}
        for alert in changed:
            self._unsaved_alerts.setdefault(id(alert), alert)
        self._unsaved.extend((by_key[t.alert_key], t) for t in transitions)
        if not self._unsaved_alerts:
            return list(transitions)
        saved, failure = await self._save_unsaved()
        # What was saved is told even when a later chunk failed: it is history now.
        await self._tell([(alert, stamped) for alert, _, stamped in saved])
        if failure is not None:
            raise failure
        with_ids = {id(original): stamped for _, original, stamped in saved}
        return [with_ids.get(id(t), t) for t in transitions]

    async def _save_unsaved(
        self,
    ) -> tuple[list[tuple[Alert, AlertTransition, AlertTransition]], Exception | None]:
        """Save every unsaved alert and transition, in as few ``save`` calls as possible.

        Returns (alert, transition, transition with its alert id) for what was saved, and
        the store's error if a save failed (what it held stays unsaved). The n-th id-less
        alert of one key goes into the n-th save: an alert that opened, resolved and opened
        again while the store was away is two rows, and the older must be saved first (the
        store's open-key index refuses two open rows of one key).
        """
        chunks: list[tuple[list[Alert], list[tuple[Alert, AlertTransition]]]] = []
        chunk_of: dict[int, int] = {}
        generation: dict[str, int] = {}
        for alert in self._unsaved_alerts.values():
            n = 0
            if alert.id is None:
                n = generation.get(alert.key, 0)
                generation[alert.key] = n + 1
            while len(chunks) <= n:
                chunks.append(([], []))
            chunks[n][0].append(alert)
            chunk_of[id(alert)] = n
        for alert, transition in self._unsaved:
            chunks[chunk_of[id(alert)]][1].append((alert, transition))
        saved: list[tuple[Alert, AlertTransition, AlertTransition]] = []
        started_s = time.perf_counter()
        for i, (alerts, pairs) in enumerate(chunks):
            # Stamp the ids known by now (alerts saved by an earlier call or chunk); the
            # store pairs the others by key with this chunk's id-less alerts.
            try:
                await self._store.save(alerts, [_with_id(a, t) for a, t in pairs])
            except Exception as err:
                self._save_failures += 1
                self._unsaved = [p for _, later in chunks[i:] for p in later]
                log.warning(
                    "saving %d alerts and %d transitions failed; kept for the next call",
                    len(self._unsaved_alerts), len(self._unsaved), exc_info=True,
                )  # fmt: skip
                return saved, err
            for alert in alerts:
                del self._unsaved_alerts[id(alert)]
            saved.extend((a, t, _with_id(a, t)) for a, t in pairs)
        self._unsaved = []
        self._last_save_s = time.perf_counter() - started_s
        return saved, None

    async def _tell(self, saved: Sequence[tuple[Alert, AlertTransition]]) -> None:
        """Await ``notify`` and ``urgent`` with snapshots; log, never raise, their errors."""
        told = [(replace(a), t) for a, t in saved if _should_notify(a, t)]
        urgent: dict[int, Alert] = {}
        for alert, transition in saved:
            if _is_urgent(alert, transition):
                urgent.setdefault(id(alert), replace(alert))
        if told:
            try:
                await self._notify(told)
                self._notified += len(told)
            except Exception:
                self._notify_failures += 1
                log.exception("notifying %d alert transitions failed; they are saved", len(told))
        if urgent and self._urgent is not None:
            try:
                await self._urgent(list(urgent.values()))
                self._urgent_alerts += len(urgent)
            except Exception:
                self._urgent_failures += 1
                log.exception("feeding %d urgent alerts to the planner failed", len(urgent))


def _with_id(alert: Alert, transition: AlertTransition) -> AlertTransition:
    if transition.alert_id is not None or alert.id is None:
        return transition
    return replace(transition, alert_id=alert.id)


def _should_notify(alert: Alert, transition: AlertTransition) -> bool:
    if transition.to_state not in _NOTIFIED_STATES or alert.muted:
        return False
    # A pending alert that cleared: nobody was told it started, nobody is told it ended.
    return not (
        transition.from_state is AlertState.PENDING and transition.to_state is AlertState.RESOLVED
    )


def _is_urgent(alert: Alert, transition: AlertTransition) -> bool:
    """It went firing (or escalated while firing) and is, now, a critical battery alert
    nobody muted."""
    return (
        transition.to_state is AlertState.FIRING
        and alert.state is AlertState.FIRING
        and alert.severity is AlertSeverity.CRITICAL
        and alert.battery_id is not None
        and not alert.muted
    )
