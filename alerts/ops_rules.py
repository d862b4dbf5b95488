"""Operations rules: pure functions that turn the system's own figures into alert signals.

Each function returns every signal that holds now (an empty list when all is well), so
its output is a complete report for :meth:`alerts.book.AlertBook.observe`. Keys are stable
per condition (``dead_letter_surge:<reason>``, ``model_drift:<model>:<feature>``,
``area_outage:<depot>``...), and every signal's evidence carries the numbers it was
decided on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from contracts.alerts import AlertCategory, AlertSeverity, AlertSignal

__all__ = [
    "OpsThresholds",
    "area_outages",
    "broker_unreachable",
    "dead_letter_surge",
    "ingest_lag",
    "model_drift",
]

_OPS = AlertCategory.OPERATIONS


@dataclass(frozen=True)
class OpsThresholds:
    """Where the operations rules draw their lines.

    Parameters
    ----------
    dead_letters_per_min
        Rejected messages per minute, per reason, above which a reason surges.
    ingest_lag_p99_s
        Telemetry freshness (p99 of receive time minus sample time) above which ingest lags
        (warning); above ``ingest_lag_critical_factor`` times it, critical.
    ingest_lag_critical_factor
        See ``ingest_lag_p99_s``; at least 1.
    drift_min_rows
        Drift rows computed on fewer scored rows than this are ignored: a PSI over a
        handful of rows is noise.
    area_outage_fraction
        Share of a depot's batteries that must be silent for an area outage, in (0, 1].
    area_outage_min_batteries
        And at least this many of them: three silent batteries of a depot of four are more
        likely three flat batteries than an outage.
    """

    dead_letters_per_min: float = 100.0
    ingest_lag_p99_s: float = 30.0
    ingest_lag_critical_factor: float = 4.0
    drift_min_rows: int = 1000
    area_outage_fraction: float = 0.5
    area_outage_min_batteries: int = 5

    def __post_init__(self) -> None:
        for name in ("dead_letters_per_min", "ingest_lag_p99_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Expected {name} to be a finite number > 0, got {value!r}.")
        if not (
            math.isfinite(self.ingest_lag_critical_factor) and self.ingest_lag_critical_factor >= 1
        ):
            raise ValueError(
                f"Expected ingest_lag_critical_factor >= 1, got {self.ingest_lag_critical_factor!r}."
            )
        if self.drift_min_rows < 0:
            raise ValueError(f"Expected drift_min_rows >= 0, got {self.drift_min_rows}.")
        if not 0 < self.area_outage_fraction <= 1:
            raise ValueError(
                f"Expected area_outage_fraction in (0, 1], got {self.area_outage_fraction!r}."
            )
        if self.area_outage_min_batteries < 1:
            raise ValueError(
                f"Expected area_outage_min_batteries >= 1, got {self.area_outage_min_batteries}."
            )


_DEFAULT = OpsThresholds()


def dead_letter_surge(
    counts_now: Mapping[str, int],
    counts_before: Mapping[str, int],
    window_s: float,
    now_s: float,
    thresholds: OpsThresholds = _DEFAULT,
) -> list[AlertSignal]:
    """One warning per reject reason whose rate over the window exceeds the limit.

    Parameters
    ----------
    counts_now, counts_before
        Cumulative rejects per reason now and ``window_s`` ago (the dead-letter counters).
        A reason missing before counts from 0; a counter lower than before was reset, and
        counts from 0 too.
    window_s
        Seconds between the two readings, > 0.
    now_s
        When ``counts_now`` was read (Unix s).

    Returns
    -------
    list of AlertSignal
        Key ``dead_letter_surge:<reason>``, label ``reason``, evidence ``rejects``,
        ``window_s``, ``per_min`` and ``limit_per_min``; sorted by reason.
    """
    if not (math.isfinite(window_s) and window_s > 0):
        raise ValueError(f"Expected window_s to be a finite number > 0, got {window_s!r}.")
    limit = thresholds.dead_letters_per_min
    out = []
    for reason in sorted(counts_now):
        now_count, before_count = counts_now[reason], counts_before.get(reason, 0)
        rejects = now_count - before_count if now_count >= before_count else now_count
        per_min = rejects * 60.0 / window_s
        if per_min <= limit:
            continue
        out.append(
            AlertSignal(
                key=f"dead_letter_surge:{reason}",
                kind="dead_letter_surge",
                category=_OPS,
                severity=AlertSeverity.WARNING,
                summary=(
                    f"{rejects} messages rejected as {reason} in {window_s:.0f} s "
                    f"({per_min:.1f}/min, limit {limit:g}/min)"
                ),
                at_s=now_s,
                labels={"reason": reason},
                evidence={
                    "rejects": rejects,
                    "window_s": window_s,
                    "per_min": per_min,
                    "limit_per_min": limit,
                },
            )
        )
    return out


def ingest_lag(
    freshness_p99_s: float, now_s: float, thresholds: OpsThresholds = _DEFAULT
) -> list[AlertSignal]:
    """``ingest_lag`` when telemetry arrives late: warning above the limit, critical above
    ``ingest_lag_critical_factor`` times it.

    Parameters
    ----------
    freshness_p99_s
        p99 of (received - sampled) over recent telemetry, seconds.
    now_s
        When it was measured (Unix s).

    Raises
    ------
    ValueError
        ``freshness_p99_s`` is NaN: an unmeasured lag is no evidence either way.
    """
    if math.isnan(freshness_p99_s):
        raise ValueError("Expected a measured freshness_p99_s, got NaN.")
    limit = thresholds.ingest_lag_p99_s
    critical_at = limit * thresholds.ingest_lag_critical_factor
    if freshness_p99_s <= limit:
        return []
    severity = AlertSeverity.CRITICAL if freshness_p99_s > critical_at else AlertSeverity.WARNING
    return [
        AlertSignal(
            key="ingest_lag",
            kind="ingest_lag",
            category=_OPS,
            severity=severity,
            summary=f"telemetry arrives {freshness_p99_s:.1f} s late at p99 (limit {limit:g} s)",
            at_s=now_s,
            evidence={
                "freshness_p99_s": freshness_p99_s,
                "limit_s": limit,
                "critical_s": critical_at,
            },
        )
    ]


def broker_unreachable(bridge_connected: Mapping[str, bool], now_s: float) -> list[AlertSignal]:
    """Critical ``broker_unreachable`` when every bridge worker has lost the broker.

    One worker down is its own problem (the others take its share); all of them down means
    no telemetry reaches the system at all. No bridges reporting is no evidence: empty.

    Parameters
    ----------
    bridge_connected
        Bridge worker name -> whether it is connected to the broker now.
    now_s
        When it was read (Unix s).
    """
    if not bridge_connected or any(bridge_connected.values()):
        return []
    n = len(bridge_connected)
    return [
        AlertSignal(
            key="broker_unreachable",
            kind="broker_unreachable",
            category=_OPS,
            severity=AlertSeverity.CRITICAL,
            summary=f"all {n} bridge workers have lost the MQTT broker",
            at_s=now_s,
            evidence={"bridges": n, "connected": 0},
        )
    ]


def model_drift(
    drift_alerts: Sequence[Mapping[str, Any]],
    now_s: float,
    thresholds: OpsThresholds = _DEFAULT,
) -> list[AlertSignal]:
    """One warning per drifting (model, feature).

    Parameters
    ----------
    drift_alerts
        Rows like ``{"model": "health", "version": 3, "feature": "efc", "psi": 0.4,
        "rows": 5000}``, already filtered to drift worth reporting upstream; ``version`` is
        optional. Rows over fewer than ``drift_min_rows`` rows are ignored.
    now_s
        When the drift was read (Unix s).

    Returns
    -------
    list of AlertSignal
        Key ``model_drift:<model>:<feature>``, labels ``model`` and ``feature``; a pair
        listed twice keeps its highest PSI.

    Raises
    ------
    ValueError
        A row lacks ``model``, ``feature``, ``psi`` or ``rows``.
    """
    best: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in drift_alerts:
        missing = [k for k in ("model", "feature", "psi", "rows") if k not in row]
        if missing:
            raise ValueError(
                f"Expected a drift row with model, feature, psi and rows, got one without "
                f"{', '.join(missing)}: {dict(row)!r}."
            )
        if int(row["rows"]) < thresholds.drift_min_rows:
            continue
        pair = (str(row["model"]), str(row["feature"]))
        if pair not in best or float(row["psi"]) > float(best[pair]["psi"]):
            best[pair] = row
    out = []
    for (model, feature), row in sorted(best.items()):
        psi, rows = float(row["psi"]), int(row["rows"])
        version = row.get("version")
        version_text = "" if version is None else f" v{version}"
        out.append(
            AlertSignal(
                key=f"model_drift:{model}:{feature}",
                kind="model_drift",
                category=_OPS,
                severity=AlertSeverity.WARNING,
                summary=f"{model}{version_text}: feature {feature} drifted (PSI {psi:.2f} over {rows} rows)",
                at_s=now_s,
                labels={"model": model, "feature": feature},
                evidence={
                    "model": model,
                    "version": None if version is None else int(version),
                    "feature": feature,
                    "psi": psi,
                    "rows": rows,
                },
            )
        )
    return out


def area_outages(
    silent: Sequence[AlertSignal],
    batteries_per_depot: Mapping[str, int],
    now_s: float,
    thresholds: OpsThresholds = _DEFAULT,
) -> list[AlertSignal]:
    """Critical ``area_outage:<depot>`` where much of a depot's fleet went silent at once.

    Many silent batteries in one area are one problem (coverage, a local network outage),
    not many: the default inhibit rule then mutes that depot's ``battery_silent`` alerts.

    Parameters
    ----------
    silent
        The current ``battery_silent`` signals; each names its depot in ``labels["depot"]``.
        Signals of other kinds, or without a depot, are ignored; a battery counts once.
    batteries_per_depot
        How many batteries each depot has; a depot missing here (or with none) is skipped,
        since its share cannot be known.
    now_s
        When (Unix s).

    Returns
    -------
    list of AlertSignal
        One per depot where at least ``area_outage_min_batteries`` and at least
        ``area_outage_fraction`` of its batteries are silent; label ``depot``, evidence
        ``silent``, ``batteries``, ``fraction``; sorted by depot.
    """
    silent_by_depot: dict[str, set[str]] = {}
    for signal in silent:
        depot = signal.labels.get("depot")
        if signal.kind != "battery_silent" or depot is None:
            continue
        silent_by_depot.setdefault(depot, set()).add(signal.battery_id or signal.key)
    out = []
    for depot in sorted(silent_by_depot):
        total = batteries_per_depot.get(depot, 0)
        n = len(silent_by_depot[depot])
        if total <= 0 or n < thresholds.area_outage_min_batteries:
            continue
        fraction = n / total
        if fraction < thresholds.area_outage_fraction:
            continue
        out.append(
            AlertSignal(
                key=f"area_outage:{depot}",
                kind="area_outage",
                category=_OPS,
                severity=AlertSeverity.CRITICAL,
                summary=f"{n} of {total} batteries of depot {depot} are silent ({fraction:.0%})",
                at_s=now_s,
                labels={"depot": depot},
                evidence={"silent": n, "batteries": total, "fraction": fraction},
            )
        )
    return out
