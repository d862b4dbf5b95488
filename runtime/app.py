"""Typed builder of the Serve application (``serve run runtime.app:build_app`` works too).

The app is the HTTP ingress plus one :class:`~runtime.model_deployments.ModelServer` per model
family; the ingress gets their handles injected (status, drift alerts), and the twin shards
find them by name (:func:`~runtime.model_deployments.model_deployment_name`).
"""

from __future__ import annotations

from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from models.drift import MAJOR_PSI
from models.inference_device import LstmDtype
from models.predictors import GPU_FAMILIES
from models.registry import POLL_INTERVAL_S
from runtime.ingress import ApiIngress, IngressConfig
from runtime.model_deployments import ModelServer, ModelServerArgs, model_deployment_name

__all__ = ["AppArgs", "build_app"]


class AppArgs(BaseModel):
    """Arguments of the application; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str = Field("bms", description="Ray namespace of the twin actors")
    # Out of reprs: a URL may carry a password.
    postgres_url: str = Field(repr=False)
    redis_url: str = Field(repr=False)
    redis_prefix: str = "bms:"
    bridge_actor_names: list[str] = Field(default_factory=list)
    ingress_replicas: int = Field(1, ge=1, le=64)
    models: list[str] = Field(default_factory=list, description="Model families to deploy")
    artifacts_root: str | None = Field(None, description="Model registry artifacts (needed with models)")
    model_poll_interval_s: float = Field(POLL_INTERVAL_S, gt=0)
    drift_threshold: float = Field(MAJOR_PSI, gt=0)
    lstm_num_gpus: float = Field(
        0.0, ge=0, le=1, description="GPUs per replica of each LSTM family (0: CPU; a fraction shares one)"
    )
    lstm_dtype: LstmDtype = Field("float32", description="Float type the LSTM families run in")
    alerts: bool = Field(False, description="The alert manager runs")
    webhook_allow_cidrs: list[str] = Field(default_factory=list)
    webhook_allow_http: bool = False


def build_app(args: AppArgs) -> Application:
    if args.models and args.artifacts_root is None:
        raise ValueError(f"Expected artifacts_root to deploy models {args.models}, got None.")
    config = IngressConfig(
        namespace=args.namespace,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        bridge_actor_names=args.bridge_actor_names,
        alerts=args.alerts,
        webhook_allow_cidrs=args.webhook_allow_cidrs,
        webhook_allow_http=args.webhook_allow_http,
    )
    models: dict[str, Any] = {name: _model_server(args, name) for name in args.models}
    deployment = cast(Deployment, ApiIngress)
    return deployment.options(num_replicas=args.ingress_replicas).bind(config, models)


def _model_server(args: AppArgs, name: str) -> Application:
    # Only the LSTM families get a GPU and a dtype; the trees and statistics stay on the CPU.
    lstm = name in GPU_FAMILIES
    gpus = args.lstm_num_gpus if lstm else 0.0
    # @serve.deployment made these classes Deployments; mypy ignores what class decorators return.
    server = cast(Deployment, ModelServer).options(name=model_deployment_name(name))
    if gpus > 0:
        server = server.options(ray_actor_options={"num_cpus": 0, "num_gpus": gpus})
    return server.bind(
        ModelServerArgs(
            name=name,
            postgres_url=args.postgres_url,
            artifacts_root=str(args.artifacts_root),
            poll_interval_s=args.model_poll_interval_s,
            drift_threshold=args.drift_threshold,
            gpu=gpus > 0,
            dtype=args.lstm_dtype if lstm else "float32",
        )
    )
