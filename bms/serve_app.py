"""The system as a Serve application builder, for ``serve deploy`` and KubeRay's RayService.

``bms run`` starts the system from a process that stays (it also runs the simulated fleet
and embedded servers). On a cluster run by Serve's own tooling there is no such process:
``serve deploy deploy/serve-config.yaml`` (or a RayService's ``serveConfigV2``) names
``import_path: bms.serve_app:build``, and Serve calls :func:`build` with the config's
``args`` in a task on the cluster. :func:`build` starts every actor that is not a Serve
deployment (the directory and twin shards, the bridge workers, the model job, the planner,
the alert manager, the what-if queue and the supervisor that restarts their loops), all
named and detached, and returns the Serve application (HTTP ingress and model
deployments), whose replicas, autoscaling and resources the config file sets.

Building again (a redeploy, a changed config) finds the running actors by name and keeps
them: twins are not restarted by a deploy.

The servers must be external (``BMS_POSTGRES_URL``, ``BMS_REDIS_URL``, ``BMS_MQTT_URL`` on
every node, from a Secret on Kubernetes): an embedded server would live in the build task
and die with it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from bms.services import EmbeddedServices
from bms.settings import Settings
from bms.system import initial_shards, system_spec
from runtime.system import FleetSystem

__all__ = ["ServeAppArgs", "ServeAppError", "build"]

log = logging.getLogger(__name__)

#: The environment variables a cluster deployment must set, and the settings they fill.
REQUIRED_ENV = {"BMS_POSTGRES_URL": "postgres_url", "BMS_REDIS_URL": "redis_url", "BMS_MQTT_URL": "mqtt_url"}


class ServeAppError(ValueError):
    """The deployment's configuration cannot run the system (says what is missing)."""


class ServeAppArgs(BaseModel):
    """The ``args`` of the application in a Serve config; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    config: str | None = Field(None, description="The system's TOML config file on every node (None: defaults)")
    supervise_period_s: float = Field(1.0, gt=0, le=60, description="How often restarted actors get their loops back")


def cluster_settings(args: ServeAppArgs, env: dict[str, str] | None = None) -> Settings:
    """The settings of a cluster deployment: the config file plus the environment, with
    every server external."""
    settings = Settings.load(None if args.config is None else Path(args.config), env)
    missing = [name for name, field in REQUIRED_ENV.items() if getattr(settings, field) is None]
    if missing:
        raise ServeAppError(
            f"Expected {', '.join(REQUIRED_ENV)} set on every node of the cluster (from a Secret "
            f"on Kubernetes): a deployed system runs on external servers. Missing: {', '.join(missing)}."
        )
    return settings


def build(args: dict[str, Any]) -> Application:
    """Start the system's actors on the cluster this runs in, and return its Serve app."""
    parsed = ServeAppArgs.model_validate(args)
    settings = cluster_settings(parsed)
    # Every URL is set, so this starts nothing: it resolves the bridge's broker login
    # (BMS_MQTT_USERNAME / BMS_MQTT_PASSWORD, both or neither).
    urls = EmbeddedServices(settings).start()
    spec = system_spec(
        settings, urls, shared_subscriptions=True, mqtt_v5=True,
        initial_shards=initial_shards(settings),  # [twins] fleet_size / shard_size
    )  # fmt: skip
    fleet = FleetSystem(spec)
    fleet.start_core()
    fleet.start_services()
    fleet.start_supervisor(parsed.supervise_period_s)
    log.info("bms: actors running in namespace %s; deploying the Serve app", fleet.namespace)
    return fleet.serve_app()
