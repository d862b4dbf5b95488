"""The HTTP API: FastAPI routers per area over injected dependencies, with typed responses."""

from serve.http.app import create_api
from serve.http.deps import (
    ApiDeps,
    BridgeStatsSource,
    DeadLetterReader,
    FleetReader,
    ModelRegistryAccess,
    ModelStatusSource,
    PlannerClient,
    Stores,
    TelemetryHistory,
    WorkOrderReader,
)
from serve.http.errors import PlannerNotRunning, ServiceUnavailable

__all__ = [
    "ApiDeps",
    "BridgeStatsSource",
    "DeadLetterReader",
    "FleetReader",
    "ModelRegistryAccess",
    "ModelStatusSource",
    "PlannerClient",
    "PlannerNotRunning",
    "ServiceUnavailable",
    "Stores",
    "TelemetryHistory",
    "WorkOrderReader",
    "create_api",
]
