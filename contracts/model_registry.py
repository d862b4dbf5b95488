"""The model registry's records: a registered version, what Serve loads, and the audit trail.

Plain values, no I/O: :class:`store.model_registry_store.ModelRegistryStore` reads and writes
them, :class:`models.registry.ModelRegistry` adds the artifact files. A model's life::

    register ──> candidate ──promote──> production ──replaced (promote / rollback)──> archived
                   │  └──start_ab──> also answers a fraction of the batteries (A/B split)
                   └──archive──> archived
    archived ──promote / rollback──> production

At most one version of a model is in production; a promoted A/B candidate ends its split.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from contracts.errors import InvalidServingChange

__all__ = [
    "ModelAction",
    "ModelEvent",
    "ModelStage",
    "ModelVersion",
    "ServingConfig",
    "check_actor",
    "check_model_name",
]

# Names become directory names under the artifacts root and appear in URLs: letters, digits
# and ``_ . -``, not starting with a dot (no hidden directories, no ``..``).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_model_name(name: str) -> None:
    """Raise ``ValueError`` unless ``name`` is a usable model name (e.g. ``health_xgb``).

    A name is 1 to 64 letters, digits, ``_``, ``.`` or ``-``, starting with a letter or digit.
    """
    if not _NAME.fullmatch(name):
        raise ValueError(
            "Expected a model name of 1-64 letters, digits, '_', '.' or '-' starting with a "
            f"letter or digit, got {name!r}."
        )


def check_actor(actor: str) -> None:
    """Raise ``ValueError`` for an empty ``actor``: every change is attributed to someone."""
    if not actor.strip():
        raise ValueError(f"Expected a non-empty actor to attribute the change to, got {actor!r}.")


class ModelStage(StrEnum):
    """Where one version of a model is in its life."""

    CANDIDATE = "candidate"
    """Registered, not (yet) in production; may run as an A/B candidate."""
    PRODUCTION = "production"
    """The version Serve answers with; at most one per model."""
    ARCHIVED = "archived"
    """Retired, or replaced by a later production version; still a rollback target."""


class ModelAction(StrEnum):
    """What one audit-trail event records."""

    REGISTERED = "registered"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled_back"
    AB_STARTED = "ab_started"
    AB_STOPPED = "ab_stopped"
    ARCHIVED = "archived"


@dataclass(frozen=True)
class ModelVersion:
    """One registered version of a model.

    Parameters
    ----------
    name
        The model, e.g. ``"health_xgb"``.
    version
        1, 2, 3, ... per name, in registration order.
    created_at_s
        Registration time, Unix seconds.
    metrics
        Offline evaluation metrics, e.g. ``{"val_mae": 0.031}``.
    params
        Hyper-parameters and training settings (any JSON object).
    data_fingerprint
        Hash of the training data (:func:`models.registry.data_fingerprint`).
    artifact_path
        Where the artifact directory lies; :class:`models.registry.ModelRegistry` stores it
        relative to its artifacts root (``<name>/v<version>``).
    stage
        Where the version is in its life.
    created_by
        Who registered it.
    """

    name: str
    version: int
    created_at_s: float
    metrics: Mapping[str, float]
    params: Mapping[str, Any]
    data_fingerprint: str
    artifact_path: str
    stage: ModelStage
    created_by: str


@dataclass(frozen=True)
class ServingConfig:
    """What Serve should load for one model right now.

    Parameters
    ----------
    name
        The model.
    production_version
        The version every battery outside the A/B split is answered with.
    candidate_version
        The version under A/B test, or ``None`` when no split runs.
    candidate_fraction
        Share of the batteries routed to the candidate, in ``(0, 1]`` during a split and
        ``0.0`` otherwise (see :func:`models.ab_split.candidate_mask`).
    updated_at_s
        When this was last changed, Unix seconds.
    updated_by
        Who changed it last.
    """

    name: str
    production_version: int
    candidate_version: int | None
    candidate_fraction: float
    updated_at_s: float
    updated_by: str

    def __post_init__(self) -> None:
        if self.candidate_version is None:
            if self.candidate_fraction != 0.0:
                raise ValueError(
                    "Expected candidate_fraction 0.0 without a candidate version, got "
                    f"{self.candidate_fraction}."
                )
        else:
            if not (0.0 < self.candidate_fraction <= 1.0) or math.isnan(self.candidate_fraction):
                raise ValueError(
                    "Expected candidate_fraction in (0, 1] with a candidate version, got "
                    f"{self.candidate_fraction}."
                )
            if self.candidate_version == self.production_version:
                raise ValueError(
                    f"Expected a candidate version other than production "
                    f"v{self.production_version}, got v{self.candidate_version}."
                )

    @property
    def ab_active(self) -> bool:
        """Whether an A/B split is running."""
        return self.candidate_version is not None

    @property
    def ab_salt(self) -> str:
        """Salt of the split's battery hash: ``"<name>/v<candidate>"``.

        One salt per experiment, so each candidate sees a fresh, independent sample of the
        fleet, while ramping one candidate's fraction up only adds batteries to it.

        Raises
        ------
        InvalidServingChange
            No split runs, so there is no salt.
        """
        if self.candidate_version is None:
            raise InvalidServingChange(f"No A/B split runs for {self.name}; it has no salt.")
        return f"{self.name}/v{self.candidate_version}"


@dataclass(frozen=True)
class ModelEvent:
    """One entry of a model's append-only audit trail.

    Parameters
    ----------
    id
        Increasing with time across all models.
    name, version
        The model and the version the action was about (for a rollback: the version
        returned to; for A/B events: the candidate).
    action
        What happened.
    actor
        Who did it.
    at_s
        When, Unix seconds.
    detail
        Context, e.g. ``{"previous_production": 2}`` or ``{"fraction": 0.1}``.
    """

    id: int
    name: str
    version: int
    action: ModelAction
    actor: str
    at_s: float
    detail: Mapping[str, Any] = field(default_factory=dict)
