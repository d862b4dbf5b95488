"""Alerts: what the system tells people, one record shape for every kind.

A *rule* (a threshold on a twin's latest samples, an anomaly flag, a forecast, an operations
figure) observes an :class:`AlertSignal`: "this condition holds now, with this evidence".
Sources send *complete reports*: every signal of theirs that holds now, so a signal a source
no longer reports is clear. The alert book (:mod:`alerts.book`) turns signals into
:class:`Alert` records with one lifecycle::

    pending ──(held for hold_s)──> firing ──(operator)──> acknowledged
       │                              │                        │
       └──(clear before firing)──┐    └──(clear for clear_s)───┴──> resolved
                                 ▼
                        resolved (never fired: nobody was told)

An alert is identified by its *dedup key* (stable: ``<kind>:<battery id>``,
``<kind>:<zone>``...): while one alert of a key is open, the same signal updates it; after it
resolved, the signal opens a new alert with the same key. Every state change is an
:class:`AlertTransition` in the alert's history. Silences (:class:`Silence`) and inhibition
(:class:`InhibitRule`) keep an alert's lifecycle but stop its notifications.

Labels an alert can be matched on (silences, inhibition, webhook filters) are its ``labels``
plus the built-in ones: ``key``, ``kind``, ``category``, ``severity``, ``battery_id``,
``vehicle_id``, ``zone`` (see :meth:`Alert.match_labels`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "Alert",
    "AlertCategory",
    "AlertSeverity",
    "AlertSignal",
    "AlertState",
    "AlertTransition",
    "InhibitRule",
    "Silence",
    "matches",
]

Evidence = dict[str, float | int | str | bool | None]


class AlertSeverity(enum.StrEnum):
    """How urgent: ``critical`` needs someone now (and is an urgent job for the planner)."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]

    def at_least(self, other: AlertSeverity) -> bool:
        return self.rank >= other.rank


_SEVERITY_RANK = {AlertSeverity.INFO: 0, AlertSeverity.WARNING: 1, AlertSeverity.CRITICAL: 2}


class AlertCategory(enum.StrEnum):
    """Which family of rules raised it."""

    HEALTH = "health"  # critical thresholds on single samples (temperature, imbalance, sag)
    ANOMALY = "anomaly"  # the anomaly models' flags
    MAINTENANCE = "maintenance"  # predictive: remaining life, health score falling fast
    OPERATIONS = "operations"  # silent batteries, dead-letter surges, ingest lag, drift, outages


class AlertState(enum.StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"

    @property
    def is_open(self) -> bool:
        return self is not AlertState.RESOLVED


@dataclass(frozen=True)
class AlertSignal:
    """One rule's observation that a condition holds now.

    Parameters
    ----------
    key
        Dedup key: the same condition on the same subject always has the same key.
    kind
        The rule, e.g. ``pack_overtemp``, ``anomaly_temp_rise``, ``battery_silent``.
    summary
        One human sentence with the numbers, e.g. ``"pack at 80.0 °C (limit 60.0 °C)"``.
    evidence
        The values that made the rule fire (and the model version where a model did).
    at_s
        When it was observed (Unix s; the source's clock).
    """

    key: str
    kind: str
    category: AlertCategory
    severity: AlertSeverity
    summary: str
    at_s: float
    battery_id: str | None = None
    vehicle_id: str | None = None
    zone: str | None = None
    lat: float | None = None
    lon: float | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.key or not self.kind:
            raise ValueError(f"Expected a non-empty key and kind, got key={self.key!r} kind={self.kind!r}.")


@dataclass
class Alert:
    """One alert: a signal's life from first seen to resolved (one row of ``alerts``)."""

    key: str
    kind: str
    category: AlertCategory
    severity: AlertSeverity
    state: AlertState
    summary: str
    source: str
    started_at_s: float
    last_active_at_s: float
    id: int | None = None
    battery_id: str | None = None
    vehicle_id: str | None = None
    zone: str | None = None
    lat: float | None = None
    lon: float | None = None
    labels: dict[str, str] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=dict)
    fired_at_s: float | None = None
    acknowledged_at_s: float | None = None
    acknowledged_by: str | None = None
    resolved_at_s: float | None = None
    #: When the signal was last seen clear while the alert is open (hysteresis), else None.
    clear_since_s: float | None = None
    #: The silence that mutes it now, if any.
    silenced_by: int | None = None
    #: The dedup key of the firing alert that explains (inhibits) it now, if any.
    inhibited_by: str | None = None

    def match_labels(self) -> dict[str, str]:
        """Its labels plus the built-in ones silences, inhibition and webhooks match on."""
        out = dict(self.labels)
        out.update(key=self.key, kind=self.kind, category=self.category.value, severity=self.severity.value)
        for name in ("battery_id", "vehicle_id", "zone"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @property
    def muted(self) -> bool:
        """Silenced or inhibited: its lifecycle goes on, its notifications do not."""
        return self.silenced_by is not None or self.inhibited_by is not None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["category"] = self.category.value
        d["severity"] = self.severity.value
        d["state"] = self.state.value
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Alert:
        d = dict(d)
        d["category"] = AlertCategory(d["category"])
        d["severity"] = AlertSeverity(d["severity"])
        d["state"] = AlertState(d["state"])
        return cls(**d)


@dataclass(frozen=True)
class AlertTransition:
    """One state change of an alert: a row of its history, and what notifications carry."""

    alert_key: str
    from_state: AlertState | None
    to_state: AlertState
    at_s: float
    actor: str
    note: str | None = None
    alert_id: int | None = None


def matches(matchers: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """Every matcher ``name=value`` holds in ``labels`` (equality; an empty set matches all)."""
    return all(labels.get(name) == value for name, value in matchers.items())


@dataclass(frozen=True)
class Silence:
    """Mute the alerts that match, from ``starts_at_s`` to ``ends_at_s``; attributed.

    ``matchers`` are label equalities (``{"key": "pack_overtemp:b-00042"}`` for one alert,
    ``{"zone": "z5849_906", "kind": "battery_silent"}`` for a set); at least one is required,
    so a silence cannot mute everything by accident.
    """

    matchers: Mapping[str, str]
    starts_at_s: float
    ends_at_s: float
    author: str
    comment: str = ""
    id: int | None = None
    created_at_s: float | None = None

    def __post_init__(self) -> None:
        if not self.matchers:
            raise ValueError("Expected at least one matcher in a silence, got none.")
        if not self.ends_at_s > self.starts_at_s:
            raise ValueError(
                f"Expected ends_at_s after starts_at_s, got {self.starts_at_s} .. {self.ends_at_s}."
            )

    def active(self, now_s: float) -> bool:
        return self.starts_at_s <= now_s < self.ends_at_s

    def mutes(self, alert: Alert, now_s: float) -> bool:
        return self.active(now_s) and matches(self.matchers, alert.match_labels())


@dataclass(frozen=True)
class InhibitRule:
    """While an alert matching ``source`` fires, alerts matching ``target`` whose ``equal``
    labels have the same values are inhibited (Alertmanager's inhibit rule).

    Example: ``InhibitRule({"kind": "broker_unreachable"}, {"kind": "battery_silent"}, ())``
    mutes every per-battery silence alert while the broker is down.
    """

    source: Mapping[str, str]
    target: Mapping[str, str]
    equal: tuple[str, ...] = ()

    def inhibits(self, source: Alert, target: Alert) -> bool:
        if source.key == target.key:
            return False
        s, t = source.match_labels(), target.match_labels()
        if not (matches(self.source, s) and matches(self.target, t)):
            return False
        return all(name in s and s.get(name) == t.get(name) for name in self.equal)
