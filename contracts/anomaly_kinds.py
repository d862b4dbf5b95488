"""The kinds of anomaly a detector can flag: one bit each, shared by models and twins.

The anomaly models set these bits; the twins keep them per battery and the planner turns
them into inspection or replacement jobs, so the enum sits below all three.
"""

from __future__ import annotations

from enum import IntFlag

__all__ = ["DETECTOR_KINDS", "AnomalyKind"]


class AnomalyKind(IntFlag):
    """Bits of :attr:`AnomalyReport.flags`, one per detector."""

    NONE = 0
    VOLTAGE_RESIDUAL = 1
    TEMP_RISE = 2
    VOLTAGE_SAG = 4
    CELL_IMBALANCE = 8
    SEQUENCE_ERROR = 16


#: The detector kinds, in bit order (``NONE`` excluded).
DETECTOR_KINDS: tuple[AnomalyKind, ...] = (
    AnomalyKind.VOLTAGE_RESIDUAL,
    AnomalyKind.TEMP_RISE,
    AnomalyKind.VOLTAGE_SAG,
    AnomalyKind.CELL_IMBALANCE,
    AnomalyKind.SEQUENCE_ERROR,
)
