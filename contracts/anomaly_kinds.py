"""The kinds of anomaly a detector can flag: one bit each, shared by models and twins.

The anomaly models set the detector bits; the twins keep them per battery and the planner
turns them into inspection or replacement jobs, so the enum sits below all three.

The ingest kinds are raised by a twin when it refuses a message (forged or replayed
telemetry, a reset counter): they are events for the operators (``GET /api/v1/anomalies``),
not flags on the twin, so they never become swap or inspection jobs.

A twin keeps its flags as a bitmask; what leaves it as plain values (a twin's snapshot, the
API, a queued job) names them instead: :func:`flag_names` and :func:`flags_from_names` are
the two directions of that one mapping.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntFlag

__all__ = ["DETECTOR_KINDS", "INGEST_KINDS", "AnomalyKind", "flag_names", "flags_from_names"]


class AnomalyKind(IntFlag):
    """Bits of :attr:`AnomalyReport.flags`, one per detector."""

    NONE = 0
    VOLTAGE_RESIDUAL = 1
    TEMP_RISE = 2
    VOLTAGE_SAG = 4
    CELL_IMBALANCE = 8
    SEQUENCE_ERROR = 16
    # Ingest checks of the twins (names equal to their dead-letter reasons).
    BATTERY_CLAIM_CONFLICT = 32
    SEQ_OUT_OF_RANGE = 64
    IMPLAUSIBLE_TELEMETRY = 128
    # A sensor that disagrees with the others or stopped changing (after the ingest kinds:
    # bits are stored in checkpoints and jobs, so a new kind takes the next free one).
    SENSOR_FAULT = 256


#: The detector kinds, in bit order (``NONE`` excluded).
DETECTOR_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.VOLTAGE_RESIDUAL,
    AnomalyKind.TEMP_RISE,
    AnomalyKind.VOLTAGE_SAG,
    AnomalyKind.CELL_IMBALANCE,
    AnomalyKind.SEQUENCE_ERROR,
    AnomalyKind.SENSOR_FAULT,
)

#: The kinds a twin raises when it refuses a message; never set in a twin's flags.
INGEST_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.BATTERY_CLAIM_CONFLICT,
    AnomalyKind.SEQ_OUT_OF_RANGE,
    AnomalyKind.IMPLAUSIBLE_TELEMETRY,
)


def flag_names(flags: int) -> list[str]:
    """Names of the kinds set in a bitmask, in bit order: ``5`` gives
    ``["voltage_residual", "voltage_sag"]``."""
    return [str(k.name).lower() for k in AnomalyKind(flags)]


def flags_from_names(names: Iterable[str]) -> int:
    """The bitmask of named kinds, the inverse of :func:`flag_names` (a twin's snapshot
    names its flags; a swap candidate carries the bits).

    Raises
    ------
    ValueError
        A name that is no anomaly kind (a string is refused too: it would read as its
        letters).
    """
    if isinstance(names, str):
        raise ValueError(f"Expected a list of anomaly kind names, got the string {names!r}.")
    flags = AnomalyKind.NONE
    for name in names:
        kind = AnomalyKind.__members__.get(str(name).upper())
        if kind is None:
            known = ", ".join(str(k.name).lower() for k in AnomalyKind if k is not AnomalyKind.NONE)
            raise ValueError(f"Expected anomaly kind names among {known}; got {name!r}.")
        flags |= kind
    return int(flags)
