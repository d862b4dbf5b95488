"""The twins' and the model job's client of the Serve model deployments.

Implements :class:`twins.scoring.ModelClient` over Serve deployment handles: one call per
model with whole arrays (the deployments batch the calls that arrive together).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt
from ray import serve

from contracts.scoring import ScoreRequest
from runtime.names import SERVE_APP_NAME, model_deployment_name

__all__ = ["ServeModelClient"]


class ServeModelClient:
    """:class:`twins.scoring.ModelClient` over the Serve model deployments' handles."""

    def __init__(self, app_name: str = SERVE_APP_NAME) -> None:
        self.app_name = app_name
        self._handles: dict[str, Any] = {}

    async def call(
        self, model: str, ids: list[str], arrays: Mapping[str, npt.NDArray[Any]]
    ) -> dict[str, npt.NDArray[Any]]:
        handle = self._handles.get(model)
        if handle is None:
            handle = serve.get_deployment_handle(model_deployment_name(model), app_name=self.app_name)
            self._handles[model] = handle
        out: dict[str, npt.NDArray[Any]] = await handle.remote(ScoreRequest(ids, dict(arrays)))
        return out
