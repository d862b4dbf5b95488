"""Typed builder of the Serve application (``serve run serve.app:build_app`` works too)."""

from __future__ import annotations

from typing import cast

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application, Deployment

from serve.ingress import ApiIngress, IngressConfig

__all__ = ["AppArgs", "build_app"]


class AppArgs(BaseModel):
    """Arguments of the application; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    namespace: str = Field("bms", description="Ray namespace of the twin actors")
    postgres_url: str
    redis_url: str
    redis_prefix: str = "bms:"
    bridge_actor_names: list[str] = Field(default_factory=list)
    ingress_replicas: int = Field(1, ge=1, le=64)


def build_app(args: AppArgs) -> Application:
    config = IngressConfig(
        namespace=args.namespace,
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        redis_prefix=args.redis_prefix,
        bridge_actor_names=args.bridge_actor_names,
    )
    # @serve.deployment made ApiIngress a Deployment; mypy ignores what class decorators return.
    deployment = cast(Deployment, ApiIngress)
    return deployment.options(num_replicas=args.ingress_replicas).bind(config)
