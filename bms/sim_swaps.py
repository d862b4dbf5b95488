"""The simulated field team's swaps, recorded in the twins as a technician's app records real ones.

The simulator swaps batteries (:mod:`sim.fleet`), and batteries in the pool do not report,
so nothing it sends tells the twins: the twin of a battery taken out would go on believing
it sits in its vehicle, fall silent and raise ``battery_silent`` a quarter of an hour
later, for every swap. In the field the technician's app records each swap (a done work
order sets the removed battery's vehicle to none and the installed one's to the vehicle);
:func:`swap_recorder` makes the callback that does the same for the simulated team, for
:func:`sim.publisher.run_fleet`'s ``on_swaps``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Protocol

from sim.fleet import SwapEvent

__all__ = ["SETTLE_S", "VehicleLinks", "swap_recorder"]

#: Seconds the recorder waits before it records a tick's swaps. run_fleet calls it once
#: the broker acknowledged the tick's messages, which hold the removed battery's last
#: samples; the bridge still has to batch them (``batch_max_wait_ms``) and hand them to
#: the shard. A removal recorded before they arrive would be undone by them. A second is
#: far more than that takes, and swaps are rare enough that the wait costs nothing.
SETTLE_S = 1.0


class VehicleLinks(Protocol):
    """Where the battery -> vehicle links are kept (``runtime.twins.FleetClient``)."""

    async def set_vehicle(self, battery_id: str, vehicle_id: str | None) -> None:
        """Record that ``battery_id`` is in ``vehicle_id`` (None: in no vehicle)."""


def swap_recorder(
    links: VehicleLinks, *, settle_s: float = SETTLE_S
) -> Callable[[list[SwapEvent]], Awaitable[None]]:
    """A callback that records swaps in ``links``: each removed battery in no vehicle, each
    installed one in its vehicle.

    Parameters
    ----------
    links
        The twins' links.
    settle_s
        Wait before recording (:data:`SETTLE_S`).

    Returns
    -------
    callable
        ``await record(events)``. It tries every change; if any failed it then raises
        ``RuntimeError`` saying how many of how many, and the first error.
    """
    if not settle_s >= 0:
        raise ValueError(f"Expected settle_s >= 0, got {settle_s}.")

    async def record(events: list[SwapEvent]) -> None:
        if not events:
            return
        await asyncio.sleep(settle_s)
        changes = [
            change
            for e in events
            for change in ((e.removed_battery_id, None), (e.installed_battery_id, e.vehicle_id))
        ]
        failures: list[Exception] = []
        for battery_id, vehicle_id in changes:
            try:
                await links.set_vehicle(battery_id, vehicle_id)
            except Exception as err:  # try the others; the caller hears of all of them
                failures.append(err)
        if failures:
            raise RuntimeError(
                f"Expected to record {len(changes)} battery-vehicle links for {len(events)} "
                f"swap(s), {len(failures)} failed; first: {failures[0]!r}"
            ) from failures[0]

    return record
