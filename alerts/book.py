"""The alert book: signals in, alert lifecycles and their transitions out. Pure: no I/O, no
clock (every call takes ``now_s``), no asyncio.

What it keeps
-------------
Every *open* alert (pending, firing, acknowledged), one per dedup key, and the silences.
Resolved alerts leave the book; the store keeps them (:class:`alerts.manager.AlertManager`
persists what :meth:`AlertBook.drain_changed` hands it).

How a signal becomes an alert (timings from :class:`alerts.rules.AlertRules`)
----------------------------------------------------------------------------
* A key nobody has open opens a ``pending`` alert; it fires once it has been held for
  ``hold_s`` since first seen (at once when ``hold_s`` is 0).
* A source's report is *complete*: an open alert of that source whose key the report lacks
  is clear from now (``clear_since_s``). Clear for ``clear_s`` resolves it; back sooner, it
  stays open with no transition, so a flapping signal notifies once. A pending alert does
  not fire while it is clear, and one that resolves without firing is recorded as "never
  fired" (``fired_at_s`` is ``None``): notifiers skip it.
* A severity that rises while the alert fires (or is acknowledged) is recorded as a
  transition to the same state, noted "escalated from warning to critical".

Muting
------
A silence mutes the alerts it matches (``silenced_by``), and an inhibit rule mutes the
targets of a firing or acknowledged source alert (``inhibited_by``). Muting never changes
a lifecycle, only whether anyone is told.

Cost
----
A broker outage turns into ~100,000 ``battery_silent`` signals from a handful of sources, so
:meth:`AlertBook.observe` is O(signals + the source's open alerts) with dict look-ups, and
:meth:`AlertBook.evaluate` visits only the alerts with a running timer (pending or
clearing). Mute flags are recomputed for every open alert only when what decides them
changed: a silence added, expired, starting or ending, or an inhibiting alert firing or
resolving; otherwise only the alerts a report touched are looked at.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from alerts.rules import AlertRules, KindTiming
from contracts.alerts import (
    Alert,
    AlertCategory,
    AlertSeverity,
    AlertSignal,
    AlertState,
    AlertTransition,
    Silence,
    matches,
)

__all__ = ["NEVER_FIRED_NOTE", "SYSTEM_ACTOR", "AlertBook"]

#: The actor of every automatic transition.
SYSTEM_ACTOR = "system"

#: Note of a pending alert that resolved before it fired: nobody was told, nobody should be.
NEVER_FIRED_NOTE = "cleared before firing (never fired)"

# States in which an alert is "on": it may inhibit others, and acknowledging needs FIRING.
_ON = (AlertState.FIRING, AlertState.ACKNOWLEDGED)

# An ordered set of keys: dict insertion order keeps transitions deterministic (a set's
# iteration order over strings changes with hash randomisation between runs).
_KeySet = dict[str, None]


class AlertBook:
    """The open alerts, their timers, silences and inhibition.

    Parameters
    ----------
    rules
        Hold and clear times per kind, and the inhibit rules.

    Notes
    -----
    The book mutates its :class:`~contracts.alerts.Alert` objects in place (the store sets
    their ``id`` after saving them); copy one before handing it to code that runs later.
    """

    def __init__(self, rules: AlertRules | None = None) -> None:
        self._rules = AlertRules() if rules is None else rules
        # The timing of each (kind, category, severity) seen: evaluate() looks one up per
        # pending or clearing alert, every tick.
        self._timings: dict[tuple[str, AlertCategory, AlertSeverity], KindTiming] = {}
        self._reset()

    def _reset(self) -> None:
        self._open: dict[str, Alert] = {}
        self._by_source: dict[str, _KeySet] = {}
        self._pending: _KeySet = {}
        self._clearing: _KeySet = {}
        # Firing or acknowledged alerts that match some inhibit rule's source.
        self._inhibiting: _KeySet = {}
        self._silences: dict[int, Silence] = {}
        self._next_silence_id = 1
        # Alerts changed since the last drain, keyed by object identity: a key may name an
        # alert that resolved and the new one opened after it.
        self._changed: dict[int, Alert] = {}
        # Derived from the above, rebuilt when stale.
        self._index: list[dict[tuple[str, ...], list[str]]] | None = None
        self._active_silences: list[Silence] = []
        self._mutes_stale = True
        self._next_silence_change_s = -math.inf

    @property
    def rules(self) -> AlertRules:
        """The rules this book applies."""
        return self._rules

    # -- signals and timers ----------------------------------------------------------------

    def observe(
        self,
        source: str,
        signals: Sequence[AlertSignal],
        now_s: float,
        *,
        complete: bool = True,
    ) -> list[AlertTransition]:
        """Apply one source's report.

        Parameters
        ----------
        source
            Who reports, e.g. ``"shard-3"`` or ``"ops"``; an alert belongs to the source that
            last reported its key.
        signals
            What holds now. A key reported twice counts once (the later signal wins).
        now_s
            The book's clock (Unix s): started, last-active and clear times are taken from
            it, not from the signals, so one clock decides every timer.
        complete
            ``True``: the report is everything of this source that holds now, so this
            source's open alerts missing from it start to clear. ``False``: it only adds and
            refreshes (sources that report events rather than states).

        Returns
        -------
        list of AlertTransition
            New alerts (``None -> pending``), alerts that fired at once or whose hold ran out,
            and escalations, in the order they happened.
        """
        if not source:
            raise ValueError(f"Expected a non-empty source, got {source!r}.")
        out: list[AlertTransition] = []
        touched: list[Alert] = []
        owned = self._by_source.setdefault(source, {})
        reported: set[str] = set()
        for signal in signals:
            reported.add(signal.key)
            alert = self._open.get(signal.key)
            if alert is None:
                touched.append(self._open_alert(source, signal, now_s, out))
            elif self._refresh(alert, source, signal, now_s, out):
                touched.append(alert)
        if complete:
            # O(this source's open alerts): the per-source key set spares a scan of them all.
            for key in [k for k in owned if k not in reported]:
                alert = self._open[key]
                if alert.clear_since_s is None:
                    alert.clear_since_s = now_s
                    self._clearing[key] = None
                    self._mark(alert)
        self._refresh_mutes(now_s, touched)
        return out

    def evaluate(self, now_s: float) -> list[AlertTransition]:
        """Run the timers: fire held pending alerts, resolve alerts clear for long enough,
        and bring the mute flags up to date.

        Returns
        -------
        list of AlertTransition
            Resolutions first, then firings. A resolution from ``pending`` is noted
            :data:`NEVER_FIRED_NOTE`.
        """
        out: list[AlertTransition] = []
        for key in list(self._clearing):
            alert = self._open[key]
            assert alert.clear_since_s is not None  # in _clearing exactly while set
            clear_for_s = now_s - alert.clear_since_s
            if clear_for_s >= self._timing(alert).clear_s:
                if alert.state is AlertState.PENDING:
                    note = NEVER_FIRED_NOTE
                else:
                    note = f"clear for {clear_for_s:.0f} s"
                self._resolve(alert, now_s, note, out)
        for key in list(self._pending):
            alert = self._open[key]
            if (
                alert.clear_since_s is None
                and now_s - alert.started_at_s >= self._timing(alert).hold_s
            ):
                self._fire(alert, now_s, out)
        self._refresh_mutes(now_s, [])
        return out

    # -- operators -------------------------------------------------------------------------

    def acknowledge(
        self, alert: str | int, actor: str, note: str | None, now_s: float
    ) -> AlertTransition:
        """Someone is on it: a firing alert becomes acknowledged (it still resolves by itself).

        Parameters
        ----------
        alert
            Its dedup key, or its id once the store assigned one.
        actor
            Who acknowledges; recorded in the alert and its history.
        note
            Free text kept in the history.
        now_s
            When.

        Raises
        ------
        KeyError
            No open alert has that key or id.
        ValueError
            The alert is not firing (pending, or acknowledged already), or ``actor`` is empty.
        """
        if not actor.strip():
            raise ValueError(
                f"Expected a non-empty actor to attribute the change to, got {actor!r}."
            )
        found = self._find(alert)
        if found.state is not AlertState.FIRING:
            raise ValueError(
                f"Expected a firing alert to acknowledge, got one that is {found.state.value}."
            )
        found.state = AlertState.ACKNOWLEDGED
        found.acknowledged_at_s = now_s
        found.acknowledged_by = actor
        return self._transition(
            found, AlertState.FIRING, AlertState.ACKNOWLEDGED, now_s, actor, note
        )

    def add_silence(self, silence: Silence) -> Silence:
        """Start muting the alerts ``silence`` matches (from its ``starts_at_s``).

        A silence without an id gets the next free one; one with an id (from the store)
        keeps it. The mute flags change on the next :meth:`observe` or :meth:`evaluate`.

        Raises
        ------
        ValueError
            The book already holds a silence with that id.
        """
        if silence.id is None:
            silence = replace(silence, id=self._next_silence_id)
        elif silence.id in self._silences:
            raise ValueError(f"Expected a new silence id, got {silence.id}, which the book holds.")
        assert silence.id is not None
        self._next_silence_id = max(self._next_silence_id, silence.id + 1)
        self._silences[silence.id] = silence
        self._mutes_stale = True
        return silence

    def check_expirable(self, silence_id: int, now_s: float) -> Silence:
        """The silence :meth:`expire_silence` would end now; raises as that would.

        Raises
        ------
        KeyError
            No silence has that id, or it ended already.
        ValueError
            It has not started yet: a silence ends at ``now_s``, which must come after its
            start (:class:`~contracts.alerts.Silence` has no empty windows).
        """
        silence = self._silences.get(silence_id)
        if silence is None or now_s >= silence.ends_at_s:
            raise KeyError(f"No active silence with id {silence_id}.")
        if now_s <= silence.starts_at_s:
            raise ValueError(
                f"Expected silence {silence_id} to have started before expiring it, got one "
                f"that starts at {silence.starts_at_s} (now is {now_s})."
            )
        return silence

    def expire_silence(self, silence_id: int, now_s: float) -> Silence:
        """End a silence now (``ends_at_s = now_s``); the alerts it muted notify again.

        Raises
        ------
        KeyError, ValueError
            As :meth:`check_expirable`.
        """
        ended = replace(self.check_expirable(silence_id, now_s), ends_at_s=now_s)
        self._silences[silence_id] = ended
        self._mutes_stale = True
        return ended

    def silences(self, now_s: float, include_expired: bool = False) -> list[Silence]:
        """Silences that have not ended (active or starting later), newest first; with
        ``include_expired`` also the ended ones the book still holds."""
        out = [s for s in self._silences.values() if include_expired or now_s < s.ends_at_s]
        return sorted(out, key=lambda s: s.id or 0, reverse=True)

    # -- reads -----------------------------------------------------------------------------

    def open_alerts(self) -> list[Alert]:
        """Every open alert, oldest key first (the book's own objects)."""
        return list(self._open.values())

    def get(self, key: str) -> Alert:
        """The open alert with dedup key ``key``; :class:`KeyError` when none is open."""
        alert = self._open.get(key)
        if alert is None:
            raise KeyError(f"No open alert with key {key!r}.")
        return alert

    def counts(self) -> dict[tuple[AlertState, AlertSeverity], int]:
        """Open alerts per (state, severity), for metrics; combinations with none are left out."""
        out: dict[tuple[AlertState, AlertSeverity], int] = {}
        for alert in self._open.values():
            k = (alert.state, alert.severity)
            out[k] = out.get(k, 0) + 1
        return out

    def drain_changed(self) -> list[Alert]:
        """Every alert changed since the last drain (resolved ones included), in the order of
        their first change; the book forgets them. This is what a store must save."""
        out = list(self._changed.values())
        self._changed.clear()
        return out

    def restore(self, alerts: Iterable[Alert], silences: Iterable[Silence]) -> None:
        """Replace the book's contents with alerts and silences loaded after a restart.

        Resolved alerts are skipped. Timers go on from the stored ``started_at_s`` and
        ``clear_since_s``; a source that no longer reports a key clears it on its next
        complete report. Mute flags are recomputed on the next :meth:`evaluate`.

        Raises
        ------
        ValueError
            Two open alerts share a dedup key.
        """
        self._reset()
        for alert in alerts:
            if not alert.state.is_open:
                continue
            if alert.key in self._open:
                raise ValueError(f"Expected one open alert per key, got two for {alert.key!r}.")
            self._open[alert.key] = alert
            self._by_source.setdefault(alert.source, {})[alert.key] = None
            if alert.state is AlertState.PENDING:
                self._pending[alert.key] = None
            if alert.clear_since_s is not None:
                self._clearing[alert.key] = None
            if alert.state in _ON and self._matches_source(alert):
                self._inhibiting[alert.key] = None
        for silence in silences:
            self.add_silence(silence)

    # -- internals -------------------------------------------------------------------------

    def _timing(self, alert: Alert) -> KindTiming:
        k = (alert.kind, alert.category, alert.severity)
        timing = self._timings.get(k)
        if timing is None:
            timing = self._timings[k] = self._rules.timing(*k)
        return timing

    def _mark(self, alert: Alert) -> None:
        self._changed[id(alert)] = alert

    def _transition(
        self,
        alert: Alert,
        from_state: AlertState | None,
        to_state: AlertState,
        at_s: float,
        actor: str = SYSTEM_ACTOR,
        note: str | None = None,
    ) -> AlertTransition:
        self._mark(alert)
        return AlertTransition(alert.key, from_state, to_state, at_s, actor, note, alert.id)

    def _find(self, ref: str | int) -> Alert:
        if isinstance(ref, str):
            return self.get(ref)
        # Ids are assigned by the store after the book made the alert, so there is no id
        # index to keep in step; operators acknowledge rarely, a scan is fine.
        for alert in self._open.values():
            if alert.id == ref:
                return alert
        raise KeyError(f"No open alert with id {ref}.")

    def _open_alert(
        self, source: str, signal: AlertSignal, now_s: float, out: list[AlertTransition]
    ) -> Alert:
        alert = Alert(
            key=signal.key,
            kind=signal.kind,
            category=signal.category,
            severity=signal.severity,
            state=AlertState.PENDING,
            summary=signal.summary,
            source=source,
            started_at_s=now_s,
            last_active_at_s=now_s,
            battery_id=signal.battery_id,
            vehicle_id=signal.vehicle_id,
            zone=signal.zone,
            lat=signal.lat,
            lon=signal.lon,
            labels=dict(signal.labels),
            evidence=dict(signal.evidence),
        )
        self._open[alert.key] = alert
        self._by_source[source][alert.key] = None
        self._pending[alert.key] = None
        out.append(self._transition(alert, None, AlertState.PENDING, now_s))
        if self._timing(alert).hold_s <= 0:
            self._fire(alert, now_s, out)
        return alert

    def _refresh(
        self,
        alert: Alert,
        source: str,
        signal: AlertSignal,
        now_s: float,
        out: list[AlertTransition],
    ) -> bool:
        """Update an open alert from its signal; True when what mutes it may have changed."""
        if alert.source != source:
            # The last reporter owns the key: its complete reports decide when it clears.
            del self._by_source[alert.source][alert.key]
            self._by_source[source][alert.key] = None
            alert.source = source
            self._mark(alert)
        if alert.clear_since_s is not None:
            alert.clear_since_s = None
            del self._clearing[alert.key]
            self._mark(alert)
        # Refreshing the last-seen time alone does not mark the alert changed: a steady
        # report of 100,000 silent batteries would rewrite 100,000 rows each time. It is
        # saved with the alert's next real change.
        alert.last_active_at_s = now_s
        if alert.summary != signal.summary or alert.evidence != signal.evidence:
            alert.summary = signal.summary
            alert.evidence = dict(signal.evidence)
            self._mark(alert)
        if alert.lat != signal.lat or alert.lon != signal.lon:
            alert.lat, alert.lon = signal.lat, signal.lon
            self._mark(alert)
        old_severity = alert.severity
        relabelled = (
            old_severity is not signal.severity
            or alert.labels != signal.labels
            or alert.battery_id != signal.battery_id
            or alert.vehicle_id != signal.vehicle_id
            or alert.zone != signal.zone
        )
        if relabelled:
            was_inhibiting = alert.key in self._inhibiting
            alert.severity = signal.severity
            alert.labels = dict(signal.labels)
            alert.battery_id = signal.battery_id
            alert.vehicle_id = signal.vehicle_id
            alert.zone = signal.zone
            self._mark(alert)
            if alert.state in _ON:
                self._track_inhibiting(alert, was_inhibiting)
                if signal.severity.rank > old_severity.rank:
                    out.append(
                        self._transition(
                            alert, alert.state, alert.state, now_s,
                            note=f"escalated from {old_severity.value} to {signal.severity.value}",
                        )
                    )  # fmt: skip
        if (
            alert.state is AlertState.PENDING
            and now_s - alert.started_at_s >= self._timing(alert).hold_s
        ):
            self._fire(alert, now_s, out)
        return relabelled

    def _fire(self, alert: Alert, now_s: float, out: list[AlertTransition]) -> None:
        alert.state = AlertState.FIRING
        alert.fired_at_s = now_s
        del self._pending[alert.key]
        out.append(self._transition(alert, AlertState.PENDING, AlertState.FIRING, now_s))
        self._track_inhibiting(alert, False)

    def _resolve(self, alert: Alert, now_s: float, note: str, out: list[AlertTransition]) -> None:
        from_state = alert.state
        alert.state = AlertState.RESOLVED
        alert.resolved_at_s = now_s
        del self._open[alert.key]
        del self._by_source[alert.source][alert.key]
        self._pending.pop(alert.key, None)
        self._clearing.pop(alert.key, None)
        if alert.key in self._inhibiting:
            del self._inhibiting[alert.key]
            self._index = None
        # Its last mute flags stay on the record: a notifier skips the resolution of an
        # alert whose firing it never announced.
        out.append(self._transition(alert, from_state, AlertState.RESOLVED, now_s, note=note))

    def _matches_source(self, alert: Alert) -> bool:
        labels: dict[str, str] | None = None
        for rule in self._rules.inhibit_rules:
            if not _may_match(rule.source, alert):
                continue
            if labels is None:
                labels = alert.match_labels()
            if matches(rule.source, labels):
                return True
        return False

    def _track_inhibiting(self, alert: Alert, was_inhibiting: bool) -> None:
        """Keep ``_inhibiting`` in step with an alert that is on; stale index on change."""
        now_inhibiting = self._matches_source(alert)
        if now_inhibiting:
            self._inhibiting[alert.key] = None
        elif was_inhibiting:
            del self._inhibiting[alert.key]
        if now_inhibiting or was_inhibiting:
            self._index = None

    def _refresh_mutes(self, now_s: float, touched: Sequence[Alert]) -> None:
        if self._index is None or self._mutes_stale or now_s >= self._next_silence_change_s:
            self._recompute_mutes(now_s)
        else:
            for alert in touched:
                self._apply_mutes(alert)

    def _recompute_mutes(self, now_s: float) -> None:
        self._active_silences = sorted(
            (s for s in self._silences.values() if s.active(now_s)), key=lambda s: s.id or 0
        )
        upcoming = [
            t for s in self._silences.values() for t in (s.starts_at_s, s.ends_at_s) if t > now_s
        ]
        self._next_silence_change_s = min(upcoming, default=math.inf)
        self._index = self._build_index()
        self._mutes_stale = False
        for alert in self._open.values():
            self._apply_mutes(alert)

    def _build_index(self) -> list[dict[tuple[str, ...], list[str]]]:
        """Per inhibit rule: the values of its ``equal`` labels -> keys of source alerts."""
        index: list[dict[tuple[str, ...], list[str]]] = [{} for _ in self._rules.inhibit_rules]
        for key in self._inhibiting:
            labels = self._open[key].match_labels()
            for rule, by_values in zip(self._rules.inhibit_rules, index, strict=True):
                if not matches(rule.source, labels):
                    continue
                values = _equal_values(rule.equal, labels)
                if values is not None:
                    by_values.setdefault(values, []).append(key)
        return index

    def _apply_mutes(self, alert: Alert) -> None:
        # Labels are built only for an alert some silence or rule may match: during an
        # outage this runs for every one of 100,000 alerts.
        labels: dict[str, str] | None = None
        silenced_by: int | None = None
        for silence in self._active_silences:
            if not _may_match(silence.matchers, alert):
                continue
            if labels is None:
                labels = alert.match_labels()
            if matches(silence.matchers, labels):
                silenced_by = silence.id
                break
        inhibited_by = self._inhibitor_of(alert, labels)
        if silenced_by != alert.silenced_by or inhibited_by != alert.inhibited_by:
            alert.silenced_by = silenced_by
            alert.inhibited_by = inhibited_by
            self._mark(alert)

    def _inhibitor_of(self, alert: Alert, labels: dict[str, str] | None) -> str | None:
        assert self._index is not None  # rebuilt by _refresh_mutes before any use
        for rule, by_values in zip(self._rules.inhibit_rules, self._index, strict=True):
            if not by_values or not _may_match(rule.target, alert):
                continue
            if labels is None:
                labels = alert.match_labels()
            if not matches(rule.target, labels):
                continue
            values = _equal_values(rule.equal, labels)
            if values is None:
                continue
            for source_key in by_values.get(values, ()):
                if source_key != alert.key:  # an alert never explains itself
                    return source_key
        return None


def _may_match(matchers: Mapping[str, str], alert: Alert) -> bool:
    """False when the ``key`` or ``kind`` matcher already fails: a cheap test before
    building the alert's labels (:meth:`contracts.alerts.Alert.match_labels`)."""
    key = matchers.get("key")
    if key is not None and key != alert.key:
        return False
    kind = matchers.get("kind")
    return kind is None or kind == alert.kind


def _equal_values(names: tuple[str, ...], labels: dict[str, str]) -> tuple[str, ...] | None:
    """The values of ``names`` in ``labels``; ``None`` when one is missing, as
    :meth:`contracts.alerts.InhibitRule.inhibits` never matches a missing label."""
    values = []
    for name in names:
        value = labels.get(name)
        if value is None:
            return None
        values.append(value)
    return tuple(values)
