"""The models as Ray Serve deployments: one :class:`ModelServer` per model family.

Each replica answers with the versions the registry's ``model_serving`` row names, and
polls that row every ``poll_interval_s``: promoting, rolling back or starting an A/B split
is a database change the replicas pick up within seconds, with no restart (the registry is
the source of truth, so every replica converges on it, including ones started later).

Requests carry whole arrays, one call per shard per scoring tick, and ``@serve.batch``
merges the calls that arrive together into one model call: the per-item call rate of a
handle (~560/s measured with Ray 2.60) is what limits, not the model.

A replica of an LSTM family that the builder gave a GPU (``gpu``) runs its batched steps on
it, in ``dtype``; without a CUDA device it serves on the CPU
(:func:`models.inference_device.resolve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.util.metrics import Gauge

from contracts.scoring import ScoreRequest, merge_arrays, mergeable_groups
from models.drift import MAJOR_PSI
from models.inference_device import LstmDtype, resolve
from models.predictors import Arrays, predictor
from models.registry import POLL_INTERVAL_S
from models.served_model import ServedModel
from runtime.names import model_deployment_name
from store.model_registry_store import ModelRegistryStore
from store.postgres import open_postgres

__all__ = ["ModelServer", "ModelServerArgs", "ScoreRequest", "model_deployment_name"]

log = logging.getLogger(__name__)


class ModelServerArgs(BaseModel):
    """Arguments of one model deployment; unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(description="Registry name of the model, e.g. 'health'")
    postgres_url: str = Field(description="Where the registry lives", repr=False)
    artifacts_root: str = Field(description="Directory of the registry's model artifacts")
    poll_interval_s: float = Field(POLL_INTERVAL_S, gt=0, le=3600, description="Registry poll period")
    drift_threshold: float = Field(MAJOR_PSI, gt=0, description="PSI above which drift alerts")
    gpu: bool = Field(False, description="The replica was given a GPU: run on CUDA when torch sees one")
    dtype: LstmDtype = Field("float32", description="Float type of an LSTM family's weights and state")


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=64)
class ModelServer:
    """Serves every loaded version of one model family."""

    def __init__(self, args: ModelServerArgs) -> None:
        import torch

        # One thread per replica: torch's default pool fights the other replicas and the
        # shards for the same cores (a tiny LSTM call took 1.5 s with 2 threads on 2 busy cores).
        torch.set_num_threads(1)
        self.args = args
        device = resolve(args.gpu, args.dtype)
        self.model = ServedModel(args.name, predictor(args.name), args.drift_threshold, device)
        log.info("model %s: inference on %s", args.name, device.describe())
        self._root = Path(args.artifacts_root)
        self._store_cm: contextlib.AbstractAsyncContextManager[Any] | None = None
        self._store: ModelRegistryStore | None = None
        self._psi_gauge = Gauge(
            "bms_model_feature_psi",
            description="Population stability index of a model input against its training data",
            tag_keys=("model", "version", "feature"),
        )
        self._alerting: set[tuple[str, str]] = set()
        self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _registry(self) -> ModelRegistryStore:
        if self._store is None:
            self._store_cm = open_postgres(self.args.postgres_url, application_name="bms-model")
            conn = await self._store_cm.__aenter__()
            self._store = ModelRegistryStore(conn)
        return self._store

    async def _poll(self) -> None:
        while True:
            try:
                await self.refresh()
                self._export_drift()
            except Exception:  # the next poll retries; the loaded versions keep serving
                log.exception("model %s: registry poll failed", self.args.name)
                self._store = None
            await asyncio.sleep(self.args.poll_interval_s)

    async def refresh(self) -> bool:
        """Load what the registry says to serve now; True if that changed anything."""
        store = await self._registry()
        serving = await store.serving_or_none(self.args.name)
        if serving is None or serving == self.model.serving:
            return False
        versions = [serving.production_version]
        if serving.candidate_version is not None:
            versions.append(serving.candidate_version)
        dirs = {}
        for v in versions:
            record = await store.get(self.args.name, v)
            dirs[v] = self._root / record.artifact_path
        return await asyncio.to_thread(self.model.apply, serving, dirs)

    def _export_drift(self) -> None:
        status = self.model.status()
        now_alerting: set[tuple[str, str]] = set()
        for version, d in status["drift"].items():
            for feature, value in d["psi"].items():
                if np.isfinite(value):
                    tags = {"model": self.args.name, "version": version, "feature": feature}
                    self._psi_gauge.set(float(value), tags=tags)
            for alert in d["alerts"]:
                # Log when a feature starts drifting, not on every poll while it stays so.
                key = (version, alert["feature"])
                if key not in self._alerting:
                    log.warning(
                        "model %s v%s: drift alert on %s, PSI %.3f (%s)",
                        self.args.name, version, alert["feature"], alert["psi"], alert["level"],
                    )
                now_alerting.add(key)
        self._alerting = now_alerting

    async def __call__(self, request: ScoreRequest) -> Arrays:
        return await self._batched(request)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[ScoreRequest]) -> list[Arrays]:
        results: list[Arrays] = [{} for _ in requests]
        for group in mergeable_groups(requests):
            part = [requests[i] for i in group]
            ids = [i for r in part for i in r.ids]
            offsets = np.cumsum([0] + [len(r.ids) for r in part])
            merged = merge_arrays(part)
            # Tree and LSTM inference holds the GIL-free parts in C, but a 10k-row call still
            # takes milliseconds: off the loop, so polls and other batches keep moving.
            out = await asyncio.to_thread(self.model.run, ids, merged)
            for j, i in enumerate(group):
                results[i] = {k: v[offsets[j] : offsets[j + 1]] for k, v in out.items()}
        return results

    async def status(self) -> dict[str, Any]:
        """Loaded versions, per-version prediction metrics and drift with alerts."""
        return self.model.status()

    async def check_health(self) -> None:
        if self._poller.done():
            raise RuntimeError(f"model {self.args.name}: the registry poller stopped")
