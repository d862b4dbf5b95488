"""Every name a Ray actor or Serve deployment of the system is found by.

Actors are named and detached so that the HTTP ingress, the bridge and the CLI find them
after a restart; the names live here, next to the options they are started with
(:mod:`runtime.options`), and nowhere else.
"""

from __future__ import annotations

__all__ = [
    "ALERTS_NAME",
    "DEFAULT_NAMESPACE",
    "DIRECTORY_NAME",
    "MODEL_JOB_NAME",
    "PLANNER_NAME",
    "SERVE_APP_NAME",
    "SIMULATIONS_NAME",
    "SUPERVISOR_NAME",
    "bridge_actor_name",
    "model_deployment_name",
    "shard_actor_name",
]

#: Ray namespace of every named actor (``[ray] namespace`` overrides it).
DEFAULT_NAMESPACE = "bms"
#: The Serve application holding the HTTP ingress and the model deployments.
SERVE_APP_NAME = "bms"
#: The battery → shard directory actor.
DIRECTORY_NAME = "bms-directory"
#: The planner actor (technician routing, work orders).
PLANNER_NAME = "bms-planner"
#: The alert manager (alert book, notifications, webhooks, vendor tickets).
ALERTS_NAME = "bms-alerts"
#: The scheduled model job (demand forecasts, rescoring, retraining).
MODEL_JOB_NAME = "bms-model-job"
#: The what-if simulation queue (``POST /api/v1/simulations`` jobs).
SIMULATIONS_NAME = "bms-simulations"
#: The supervisor (restarts the loops of restarted actors).
SUPERVISOR_NAME = "bms-supervisor"


def shard_actor_name(shard_id: int) -> str:
    """Actor name of twin shard ``shard_id`` (``7`` → ``bms-shard-7``)."""
    if shard_id < 0:
        raise ValueError(f"Expected a shard id >= 0, got {shard_id}.")
    return f"bms-shard-{shard_id}"


def bridge_actor_name(index: int) -> str:
    """Actor name of MQTT bridge worker ``index``."""
    if index < 0:
        raise ValueError(f"Expected a bridge worker index >= 0, got {index}.")
    return f"bms-bridge-{index}"


def model_deployment_name(model: str) -> str:
    """Serve deployment name of a model family (``health`` → ``model-health``)."""
    return f"model-{model}"
