"""Alert rules: how long a signal must hold before its alert fires, how long it must stay
clear before the alert resolves, and which alerts explain (inhibit) which.

Timings are looked up most specific first: ``per_kind["<kind>:<severity>"]``, then
``per_kind["<kind>"]``, then ``per_category[<category>]``, then the defaults below.

=============  ======  =======  ======================================================
category       hold_s  clear_s  why
=============  ======  =======  ======================================================
health         0       300      single-sample critical thresholds: tell at once, but a
                                pack that cools for a minute is not fixed
anomaly        0       600      the models' flags are already smoothed upstream
maintenance    3600    21600    forecasts drift slowly; an hour-long blip is noise
operations     120     300      a broker or ingest hiccup of a minute fixes itself
=============  ======  =======  ======================================================
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from contracts.alerts import AlertCategory, AlertSeverity, InhibitRule

__all__ = ["DEFAULT_CATEGORY_TIMING", "DEFAULT_INHIBIT_RULES", "AlertRules", "KindTiming"]


@dataclass(frozen=True)
class KindTiming:
    """Hysteresis of one kind of alert.

    Parameters
    ----------
    hold_s
        How long the signal must hold, from first seen, before the alert fires; 0 fires it
        on the first observation.
    clear_s
        How long the signal must stay clear before the alert resolves; a signal that comes
        back sooner keeps the alert open without a new notification (flapping does not spam).
    """

    hold_s: float
    clear_s: float

    def __post_init__(self) -> None:
        for name in ("hold_s", "clear_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"Expected {name} to be a finite number >= 0, got {value!r}.")


#: Timings by category, used when no ``per_kind`` entry names the kind (see module table).
DEFAULT_CATEGORY_TIMING: Mapping[AlertCategory, KindTiming] = MappingProxyType(
    {
        AlertCategory.HEALTH: KindTiming(hold_s=0.0, clear_s=300.0),
        AlertCategory.ANOMALY: KindTiming(hold_s=0.0, clear_s=600.0),
        AlertCategory.MAINTENANCE: KindTiming(hold_s=3600.0, clear_s=6 * 3600.0),
        AlertCategory.OPERATIONS: KindTiming(hold_s=120.0, clear_s=300.0),
    }
)

#: A broker outage explains every silent battery; an area outage explains the silent
#: batteries of its depot. Without these, one outage pages once per battery.
DEFAULT_INHIBIT_RULES: tuple[InhibitRule, ...] = (
    InhibitRule(source={"kind": "broker_unreachable"}, target={"kind": "battery_silent"}),
    InhibitRule(
        source={"kind": "area_outage"}, target={"kind": "battery_silent"}, equal=("depot",)
    ),
)


@dataclass(frozen=True)
class AlertRules:
    """Every alert kind's timing and the inhibit rules, in one validated object.

    Parameters
    ----------
    per_kind
        Timing overrides by kind (``"pack_overtemp"``) or by kind and severity
        (``"ingest_lag:critical"``, which wins over the kind alone).
    per_category
        Timing overrides by category; a category not named keeps its default
        (:data:`DEFAULT_CATEGORY_TIMING`).
    inhibit_rules
        While a source alert fires (or is acknowledged), the target alerts it explains are
        muted (:class:`contracts.alerts.InhibitRule`).

    Examples
    --------
    >>> rules = AlertRules(per_kind={"battery_silent": KindTiming(hold_s=300, clear_s=60)})
    >>> rules.timing("battery_silent", AlertCategory.OPERATIONS, AlertSeverity.WARNING).hold_s
    300
    """

    per_kind: Mapping[str, KindTiming] = field(default_factory=dict)
    per_category: Mapping[AlertCategory, KindTiming] = field(default_factory=dict)
    inhibit_rules: tuple[InhibitRule, ...] = DEFAULT_INHIBIT_RULES

    def __post_init__(self) -> None:
        for kind, timing in self.per_kind.items():
            if not isinstance(kind, str) or not kind:
                raise ValueError(f"Expected per_kind keys to be non-empty kinds, got {kind!r}.")
            if not isinstance(timing, KindTiming):
                raise ValueError(
                    f"Expected per_kind[{kind!r}] to be a KindTiming, got {type(timing).__name__}."
                )
        for category, timing in self.per_category.items():
            if not isinstance(category, AlertCategory):
                raise ValueError(
                    f"Expected per_category keys to be AlertCategory values, got {category!r}."
                )
            if not isinstance(timing, KindTiming):
                raise ValueError(
                    f"Expected per_category[{category.value!r}] to be a KindTiming, "
                    f"got {type(timing).__name__}."
                )
        for rule in self.inhibit_rules:
            if not isinstance(rule, InhibitRule):
                raise ValueError(
                    f"Expected inhibit_rules to hold InhibitRule values, got {type(rule).__name__}."
                )
            if not rule.source or not rule.target:
                # An empty matcher matches every alert: one firing alert would mute them all.
                raise ValueError(
                    "Expected an inhibit rule with non-empty source and target matchers, "
                    f"got source={dict(rule.source)!r} target={dict(rule.target)!r}."
                )

    def timing(self, kind: str, category: AlertCategory, severity: AlertSeverity) -> KindTiming:
        """The hold and clear times of an alert of ``kind`` (most specific entry wins).

        Parameters
        ----------
        kind
            The alert's kind, e.g. ``"pack_overtemp"``.
        category
            Its category, whose timing applies when no ``per_kind`` entry names the kind.
        severity
            Its current severity: ``per_kind["<kind>:<severity>"]`` wins over
            ``per_kind["<kind>"]``, so a critical level may fire sooner than a warning one.
        """
        by_severity = self.per_kind.get(f"{kind}:{severity.value}")
        if by_severity is not None:
            return by_severity
        by_kind = self.per_kind.get(kind)
        if by_kind is not None:
            return by_kind
        by_category = self.per_category.get(category)
        if by_category is not None:
            return by_category
        return DEFAULT_CATEGORY_TIMING[category]
