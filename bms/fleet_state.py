"""Where ``bms run`` keeps its simulated fleet between runs: ``<data_dir>/sim/fleet.npz``.

The twins survive a restart (checkpoints in PostgreSQL, state in Redis), so the fleet that
feeds them must too, as a real fleet keeps its counters and batteries while the server is
down. A fleet that started over would jump every battery's ``seq``, put batteries back into
their first vehicles and reset charge and positions, and the twins would refuse all of it
as forged or implausible (docs/security.md, "Forged claims, replayed and poisoned sequence
numbers"). So ``bms run`` saves the fleet every :data:`SNAPSHOT_INTERVAL_S` and at the end
(:func:`sim.publisher.run_fleet`), and :func:`load_fleet` and :func:`resume_fleet` bring it
back on the next start: the vehicles stood still while the system was down
(:meth:`FleetSimulator.stand_still_until <sim.fleet.FleetSimulator.stand_still_until>`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from sim.fleet import FleetSimulator
from sim.fleet_params import FleetParams
from sim.fleet_snapshot import FleetSnapshotError

__all__ = ["SEQ_MARGIN", "SNAPSHOT_INTERVAL_S", "fleet_snapshot_path", "load_fleet", "resume_fleet"]

logger = logging.getLogger(__name__)

#: Wall-clock seconds between two saves of the running fleet.
SNAPSHOT_INTERVAL_S = 5.0
#: Added to every battery's ``seq`` on restore. After a crash the snapshot misses up to one
#: save interval of messages; a battery sends at most one message per tick (1 s in ``bms
#: run``), so at most about 6 of them, and their ``seq`` must not be reused (the twins would
#: drop the new messages as duplicates). 32 skips well past them, and staying within the
#: twins' ``max_seq_jump`` (64, allowed however little time passed) keeps the first message
#: after a clean stop, 33 ahead of the last, in range.
SEQ_MARGIN = 32


def fleet_snapshot_path(data_dir: Path) -> Path:
    """The fleet's snapshot file under ``data_dir``."""
    return data_dir / "sim" / "fleet.npz"


def load_fleet(path: Path, params: FleetParams, *, seq_start: int) -> FleetSimulator:
    """The fleet saved at ``path``, else a fresh one (the log says which, and why).

    Parameters
    ----------
    path
        The snapshot (:func:`fleet_snapshot_path`); missing on a first run.
    params
        The fleet to simulate now. A snapshot of a fleet with other params (another
        ``--vehicles``, seed or area) cannot continue: a fresh fleet starts, and the log
        says what differs. So does a damaged snapshot. Other fault settings do not count:
        the restored fleet keeps its faulty batteries (a snapshot from before live faults
        has none) and ``initial_faults`` only seeds a fresh fleet.
    seq_start
        The fresh fleet's first ``seq`` (``bms run`` passes the Unix time, above anything
        an earlier fleet of this data directory sent).

    Returns
    -------
    FleetSimulator
        Restored with :data:`SEQ_MARGIN` added to its ``seq`` counters (resume it with
        :func:`resume_fleet`), or fresh.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        logger.info("No saved fleet at %s: starting a fresh simulated fleet.", path)
        return FleetSimulator(params, seq_start=seq_start)
    except OSError as err:
        logger.warning("Cannot read the saved fleet at %s (%s): starting a fresh simulated fleet.", path, err)
        return FleetSimulator(params, seq_start=seq_start)
    try:
        sim = FleetSimulator.restore(data, params, seq_margin=SEQ_MARGIN)
    except FleetSnapshotError as err:
        logger.warning("Starting a fresh simulated fleet; the saved one at %s cannot continue: %s", path, err)
        return FleetSimulator(params, seq_start=seq_start)
    logger.info(
        "Restored the simulated fleet from %s: %d vehicles, %d swaps so far, %d faulty "
        "batteries; seq counters +%d.",
        path, params.vehicles, sim.swap_count, len(sim.faults()), SEQ_MARGIN,
    )  # fmt: skip
    return sim


def resume_fleet(sim: FleetSimulator, *, now_s: float, duration_s: float | None, time_scale: float) -> float:
    """Move a restored fleet's clock to the start of this run; the time scale to run it at.

    In real time (``time_scale <= 1``, or no duration) the run starts now and the fleet
    stood still since it stopped. A sped-up run (``time_scale > 1`` with a duration) is
    meant to simulate ``duration_s * time_scale`` seconds that end at the present, so it
    starts in the past (:func:`sim.publisher.run_fleet`); a restored fleet cannot go back
    before its own clock, so it starts there (standing still until the sped-up start, if
    that is later) and runs only as fast as still ends at the present. A fresh fleet (no
    clock) is left alone: ``run_fleet`` places it.

    Returns
    -------
    float
        The time scale to pass to ``run_fleet``: ``time_scale``, or lower for a restored
        fleet whose clock stopped less than ``duration_s * (time_scale - 1)`` ago.
    """
    saved_s = sim.now_s
    if saved_s is None:
        return time_scale
    if saved_s > now_s:
        logger.warning(
            "The saved fleet's clock is %.0f s ahead of this machine's: it resumes there, in real time.",
            saved_s - now_s,
        )
        return 1.0
    if duration_s is None or duration_s <= 0 or time_scale <= 1.0:
        sim.stand_still_until(now_s)
        logger.info("The simulated fleet stood still for the %.0f s it was down.", now_s - saved_s)
        return time_scale
    end_s = now_s + duration_s
    start_s = max(saved_s, end_s - duration_s * time_scale)
    sim.stand_still_until(start_s)
    scale = (end_s - start_s) / duration_s
    if scale < time_scale:
        logger.info(
            "The restored fleet runs at time scale %.2f, not %g: its clock stopped %.0f s ago, "
            "and the run must end at the present.",
            scale, time_scale, now_s - saved_s,
        )  # fmt: skip
    return scale
