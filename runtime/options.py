"""The options every actor of the system is started with, in one table.

Why each value:

* ``lifetime="detached"`` and a name: the ingress, the bridge and the CLI find the actors
  after their creator exits (``bms run`` restarts, ``bms status`` from another shell).
* ``max_restarts=-1``: a crashed actor comes back; twin shards restore their checkpoint and
  replay, the bridge resumes its persistent MQTT session, the planner re-queues the open
  work orders and puts its last saved plan back in force.
* ``max_task_retries=-1`` where calls are idempotent: shard ingest dedups by
  ``(battery_id, seq)`` and directory assignments are recorded in PostgreSQL, so a call that
  was in flight when the process died is safely retried against the new one.
* ``num_cpus=0``: these actors mostly wait on I/O; reserving a CPU each would cap a 2-core
  machine at two of them, and ``shard_size=1`` must still run one actor per battery.

Where each role runs on a cluster (:data:`PLACEMENT`; on one machine every choice is that
machine):

* ``"head"``: the singletons (directory, planner, alert manager, model job, what-if queue,
  supervisor) run on the head node, through the resource Ray gives the head alone
  (:data:`HEAD_RESOURCE`). The head going down ends the cluster anyway (its GCS is there);
  a worker node going down then never takes the routing of batteries, the plan or the
  alert book with it, and nothing waits for them to restart.
* ``"spread"``: twin shards and bridge workers go ``SPREAD`` across the nodes that can
  take them (shards also take one unit of the shard resource, :mod:`runtime.twins`), so a
  worker node's loss takes only its share of them; restarted, they go to the survivors.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ACTOR_ROLES", "HEAD_RESOURCE", "PLACEMENT", "actor_options"]

#: A resource only the head node has (Ray adds it); asking a tiny amount pins an actor there.
HEAD_RESOURCE = "node:__internal_head__"

#: Role → options beyond name and namespace.
ACTOR_ROLES: dict[str, dict[str, Any]] = {
    "shard": {"max_restarts": -1, "max_task_retries": -1, "num_cpus": 0},
    "directory": {"max_restarts": -1, "max_task_retries": -1, "num_cpus": 0},
    "bridge": {"max_restarts": -1, "num_cpus": 0},
    # Restarted, it resumes from PostgreSQL (the open work orders, the last saved plan)
    # before it answers or plans: no second order for a battery, no route lost.
    "planner": {"max_restarts": -1, "num_cpus": 0},
    # Restarted, it reloads the open alerts and silences from PostgreSQL; reports are
    # complete, so the next one from each shard brings the book up to date.
    "alerts": {"max_restarts": -1, "num_cpus": 0},
    "model_job": {"max_restarts": -1, "num_cpus": 0},
    # Its jobs live in memory: restarted, it answers again with an empty queue (a poll of an
    # older job is a 404). No task retries: a submit retried would queue the job twice.
    "simulations": {"max_restarts": -1, "num_cpus": 0},
    # Restarts the loops of the actors above that Ray restarted (runtime.supervisor); its
    # own loop starts in its constructor, so it needs nobody to restart it.
    "supervisor": {"max_restarts": -1, "num_cpus": 0},
}

#: Role → where it runs on a cluster (the module docstring says why).
PLACEMENT: dict[str, str] = {
    "shard": "spread", "bridge": "spread", "directory": "head", "planner": "head", "alerts": "head",
    "model_job": "head", "simulations": "head", "supervisor": "head",
}  # fmt: skip


def actor_options(role: str, name: str, namespace: str) -> dict[str, Any]:
    """``.options(...)`` of a named, detached actor of ``role`` (get it if it already runs)."""
    try:
        extra = ACTOR_ROLES[role]
    except KeyError:
        raise ValueError(f"Expected an actor role in {sorted(ACTOR_ROLES)}, got {role!r}.") from None
    opts = {"name": name, "namespace": namespace, "lifetime": "detached", "get_if_exists": True, **extra}
    if PLACEMENT[role] == "head":
        opts["resources"] = {HEAD_RESOURCE: 0.001}
    else:
        opts["scheduling_strategy"] = "SPREAD"
    return opts
