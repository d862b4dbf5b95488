"""An in-memory :class:`serve.http.deps.AlertAccess` for the HTTP unit and page tests.

It keeps alerts, their history and silences in dicts and a list of stream events with ids
``"1"``, ``"2"``...; acknowledging or adding a silence appends an event like the alert
manager would. The stream ends after the stored events when ``finite`` (unit tests read
it to the end); otherwise it waits for new ones, with keep-alives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any

from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertState,
    AlertTransition,
    Silence,
)
from serve.http.deps import AlertEvent

NOW_S = 1_795_700_000.0


def alert(
    alert_id: int,
    kind: str = "pack_overtemp",
    battery_id: str | None = "b-1",
    state: AlertState = AlertState.FIRING,
    severity: AlertSeverity = AlertSeverity.CRITICAL,
    category: AlertCategory = AlertCategory.HEALTH,
) -> Alert:
    """A stored alert on ``battery_id`` (fired a minute before ``NOW_S``)."""
    return Alert(
        id=alert_id, key=f"{kind}:{battery_id}", kind=kind, category=category, severity=severity,
        state=state, summary=f"{kind} on {battery_id}", source="shard-0", started_at_s=NOW_S - 60,
        last_active_at_s=NOW_S, battery_id=battery_id, vehicle_id="v-1", zone="z1", lat=52.52, lon=13.40,
        evidence={"temp_c": 80.0, "limit_c": 60.0},
        fired_at_s=None if state is AlertState.PENDING else NOW_S - 60,
    )  # fmt: skip


@dataclass
class MemoryAlerts:
    """Alerts, history, silences and stream events in memory."""

    alerts: dict[int, Alert] = field(default_factory=dict)
    history: dict[int, list[AlertTransition]] = field(default_factory=dict)
    silences_: dict[int, Silence] = field(default_factory=dict)
    events: list[AlertEvent] = field(default_factory=list)
    finite: bool = True
    now_s: float = NOW_S
    _new: asyncio.Event | None = None

    def add(self, a: Alert) -> Alert:
        assert a.id is not None
        self.alerts[a.id] = a
        self.history[a.id] = [AlertTransition(a.key, None, AlertState.PENDING, a.started_at_s, "system", alert_id=a.id)]
        if a.state is not AlertState.PENDING:
            self._emit(a, AlertTransition(a.key, AlertState.PENDING, a.state, a.last_active_at_s, "system", alert_id=a.id))
        return a

    def _emit(self, a: Alert, t: AlertTransition) -> None:
        self.history.setdefault(a.id or 0, []).append(t)
        data: dict[str, Any] = {
            "transition": {
                "alert_key": t.alert_key, "alert_id": t.alert_id, "from_state": t.from_state,
                "to_state": t.to_state, "at_s": t.at_s, "actor": t.actor, "note": t.note,
            },
            "alert": a.to_dict(),
        }  # fmt: skip
        self.events.append((str(len(self.events) + 1), data))
        if self._new is not None:
            self._new.set()

    async def list(
        self, *, state: str | None, severity: str | None, category: str | None,
        battery_id: str | None, limit: int,
    ) -> list[Alert]:
        rows = [
            a for a in self.alerts.values()
            if (state is None or (a.state.is_open if state == "open" else a.state.value == state))
            and (severity is None or a.severity.value == severity)
            and (category is None or a.category.value == category)
            and (battery_id is None or a.battery_id == battery_id)
        ]  # fmt: skip
        return sorted(rows, key=lambda a: -a.started_at_s)[:limit]

    async def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for a in self.alerts.values():
            if a.state.is_open:
                out[a.state.value] = out.get(a.state.value, 0) + 1
        return out

    async def get(self, alert_id: int) -> tuple[Alert, list[AlertTransition]]:
        return self.alerts[alert_id], list(self.history[alert_id])

    async def acknowledge(self, alert_id: int, actor: str, note: str | None) -> Alert:
        a = self.alerts[alert_id]
        if a.state is not AlertState.FIRING:
            raise ValueError(f"Expected a firing alert to acknowledge, got one that is {a.state.value}.")
        acked = replace(a, state=AlertState.ACKNOWLEDGED, acknowledged_at_s=self.now_s, acknowledged_by=actor)
        self.alerts[alert_id] = acked
        self._emit(acked, AlertTransition(a.key, a.state, acked.state, self.now_s, actor, note, alert_id))
        return acked

    async def silences(self, include_expired: bool) -> list[Silence]:
        rows = [s for s in self.silences_.values() if include_expired or s.ends_at_s > self.now_s]
        return sorted(rows, key=lambda s: -(s.id or 0))

    async def add_silence(self, matchers: dict[str, str], duration_s: float, author: str, comment: str) -> Silence:
        sid = len(self.silences_) + 1
        s = Silence(matchers, self.now_s, self.now_s + duration_s, author, comment, sid, self.now_s)
        self.silences_[sid] = s
        return s

    async def expire_silence(self, silence_id: int, actor: str) -> Silence:
        s = self.silences_[silence_id]
        if s.ends_at_s <= self.now_s:
            raise KeyError(silence_id)
        # Ends now; a silence always spans some time, so one made this instant started earlier.
        ended = replace(s, starts_at_s=min(s.starts_at_s, self.now_s - 1.0), ends_at_s=self.now_s)
        self.silences_[silence_id] = ended
        return ended

    async def stream(self, last_event_id: str | None, keepalive_s: float) -> AsyncIterator[AlertEvent | None]:
        if last_event_id is None:
            start = len(self.events)
        elif not last_event_id.isdigit() or int(last_event_id) > len(self.events):
            raise ValueError(f"expected an event id up to {len(self.events)}, got {last_event_id!r}")
        else:
            start = int(last_event_id)
        if self.finite:
            yield None
            for event in self.events[start:]:
                yield event
            return
        self._new = asyncio.Event()
        while True:
            while start < len(self.events):
                yield self.events[start]
                start += 1
            self._new.clear()
            try:
                await asyncio.wait_for(self._new.wait(), keepalive_s)
            except TimeoutError:
                yield None
