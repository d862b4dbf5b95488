"""The kinds of anomaly a detector can flag: one bit each, shared by models and twins.

The anomaly models set the detector bits; the twins keep them per battery and the planner
turns them into inspection or replacement jobs, so the enum sits below all three.

The ingest kinds are raised by a twin when it refuses a message (forged or replayed
telemetry, a reset counter): they are events for the operators (``GET /api/v1/anomalies``),
not flags on the twin, so they never become swap or inspection jobs.
"""

from __future__ import annotations

from enum import IntFlag

__all__ = ["DETECTOR_KINDS", "INGEST_KINDS", "AnomalyKind"]


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


#: The detector kinds, in bit order (``NONE`` excluded).
DETECTOR_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.VOLTAGE_RESIDUAL,
    AnomalyKind.TEMP_RISE,
    AnomalyKind.VOLTAGE_SAG,
    AnomalyKind.CELL_IMBALANCE,
    AnomalyKind.SEQUENCE_ERROR,
)

#: The kinds a twin raises when it refuses a message; never set in a twin's flags.
INGEST_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.BATTERY_CLAIM_CONFLICT,
    AnomalyKind.SEQ_OUT_OF_RANGE,
    AnomalyKind.IMPLAUSIBLE_TELEMETRY,
)
