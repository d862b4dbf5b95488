"""Registered model versions, what Serve loads, and their audit trail, in Postgres."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, SupportsFloat

import numpy as np
import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from contracts.errors import (
    InvalidServingChange,
    NoRollbackTarget,
    UnknownModel,
    UnknownModelVersion,
)
from contracts.model_registry import (
    ModelAction,
    ModelEvent,
    ModelStage,
    ModelVersion,
    ServingConfig,
    check_actor,
    check_model_name,
)
from store.postgres import connection_turn, own_transaction, require_autocommit

__all__ = ["LOCK_CLASS", "ModelRegistryStore"]

LOCK_CLASS = 0x626D7372
"""First key of the per-model advisory lock ``pg_advisory_xact_lock(LOCK_CLASS,
hashtext(name))`` that every change to a model holds ("bmsr": bms registry)."""

_VERSION_COLUMNS = (
    "name, version, extract(epoch FROM created_at)::float8 AS created_at_s, metrics, params,"
    " data_fingerprint, artifact_path, stage, created_by"
)

_SERVING_COLUMNS = (
    "name, production_version, candidate_version, candidate_fraction,"
    " extract(epoch FROM updated_at)::float8 AS updated_at_s, updated_by"
)

_EVENT_COLUMNS = "id, name, version, action, actor, extract(epoch FROM at)::float8 AS at_s, detail"

_LOCK = "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))"

_NEXT_VERSION = "SELECT coalesce(max(version), 0) + 1 AS next FROM model_versions WHERE name = %s"

_INSERT_VERSION = f"""
INSERT INTO model_versions (name, version, metrics, params, data_fingerprint, artifact_path,
                            stage, created_by)
VALUES (%s, %s, %s, %s, %s, %s, 'candidate', %s)
RETURNING {_VERSION_COLUMNS}
"""

_SELECT_VERSION = f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = %s AND version = %s"

_SET_STAGE = "UPDATE model_versions SET stage = %s WHERE name = %s AND version = %s"

_SELECT_SERVING = f"SELECT {_SERVING_COLUMNS} FROM model_serving WHERE name = %s"

_UPSERT_SERVING = f"""
INSERT INTO model_serving (name, production_version, candidate_version, candidate_fraction,
                           updated_by)
VALUES (%s, %s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET
    production_version = EXCLUDED.production_version,
    candidate_version = EXCLUDED.candidate_version,
    candidate_fraction = EXCLUDED.candidate_fraction,
    updated_at = now(),
    updated_by = EXCLUDED.updated_by
RETURNING {_SERVING_COLUMNS}
"""

_SET_SPLIT = f"""
UPDATE model_serving
SET candidate_version = %s, candidate_fraction = %s, updated_at = now(), updated_by = %s
WHERE name = %s
RETURNING {_SERVING_COLUMNS}
"""

_INSERT_EVENT = """
INSERT INTO model_events (name, version, action, actor, detail) VALUES (%s, %s, %s, %s, %s)
"""

_PRODUCTION_HISTORY = """
SELECT version, action FROM model_events
WHERE name = %s AND action IN ('promoted', 'rolled_back')
ORDER BY id
"""


def _version(row: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        created_at_s=row["created_at_s"],
        metrics=row["metrics"],
        params=row["params"],
        data_fingerprint=row["data_fingerprint"],
        artifact_path=row["artifact_path"],
        stage=ModelStage(row["stage"]),
        created_by=row["created_by"],
    )


def _serving(row: dict[str, Any]) -> ServingConfig:
    return ServingConfig(
        name=row["name"],
        production_version=row["production_version"],
        candidate_version=row["candidate_version"],
        candidate_fraction=row["candidate_fraction"],
        updated_at_s=row["updated_at_s"],
        updated_by=row["updated_by"],
    )


def _event(row: dict[str, Any]) -> ModelEvent:
    return ModelEvent(
        id=row["id"],
        name=row["name"],
        version=row["version"],
        action=ModelAction(row["action"]),
        actor=row["actor"],
        at_s=row["at_s"],
        detail=row["detail"],
    )


def _metrics_json(metrics: Mapping[str, SupportsFloat]) -> dict[str, float]:
    # jsonb has no NaN or infinity, and a metric that is not a number cannot be compared
    # between versions: refuse both here, naming the offending key.
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if not isinstance(key, str):
            raise ValueError(f"Expected metric names as str, got {key!r}.")
        if (
            isinstance(value, bool)
            or not isinstance(value, numbers.Real)
            or not math.isfinite(float(value))
        ):
            raise ValueError(f"Expected a finite number for metric {key!r}, got {value!r}.")
        out[key] = float(value)
    return out


def _numpy_scalar(value: object) -> object:
    # Hyper-parameters often come from numpy or scikit-learn as numpy scalars.
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _params_json(params: Mapping[str, Any]) -> dict[str, Any]:
    try:
        text = json.dumps(dict(params), allow_nan=False, default=_numpy_scalar)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"Expected params that form a JSON object of finite values, got {params!r}: {err}"
        ) from err
    out: dict[str, Any] = json.loads(text)
    return out


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
        raise ValueError(f"Expected a candidate fraction in (0, 1], got {fraction!r}.")
    value = float(fraction)
    if not 0.0 < value <= 1.0:  # NaN fails this too
        raise ValueError(f"Expected a candidate fraction in (0, 1], got {fraction!r}.")
    return value


class ModelRegistryStore:
    """Model versions in ``model_versions``, Serve's targets in ``model_serving`` and every
    change in the append-only ``model_events``.

    Every change to a model runs in one transaction holding the per-model advisory lock
    ``pg_advisory_xact_lock(LOCK_CLASS, hashtext(name))``: concurrent registrations get
    distinct, gap-free version numbers, and a promotion, rollback or A/B change is checked
    against the state the previous one left. Changes to different models do not wait for
    each other (unless their names' hashes collide, which only costs a wait).

    Rollback finds its target from the audit trail, not a column: replaying the
    ``promoted`` and ``rolled_back`` events of a model as pushes and pops of a stack gives
    the production versions in order, so repeated rollbacks walk back one version each.

    Parameters
    ----------
    conn
        An autocommit Postgres connection with the migrations applied. Concurrent tasks and
        other stores may share it: their calls take turns on it
        (:func:`store.postgres.connection_turn`), one transaction at a time.
    """

    def __init__(self, conn: psycopg.AsyncConnection) -> None:
        require_autocommit(conn, "ModelRegistryStore")
        self._conn = conn

    async def register(
        self,
        name: str,
        metrics: Mapping[str, SupportsFloat],
        params: Mapping[str, Any],
        data_fingerprint: str,
        artifact_path: str | Callable[[int], str],
        actor: str,
        *,
        before_commit: Callable[[ModelVersion], Awaitable[None]] | None = None,
    ) -> ModelVersion:
        """Record a new ``candidate`` version of ``name`` and the ``registered`` event.

        Parameters
        ----------
        name
            The model, e.g. ``"health_xgb"`` (see :func:`contracts.model_registry.check_model_name`).
        metrics
            Offline evaluation metrics; finite real numbers (numpy scalars are converted).
        params
            Hyper-parameters, any JSON object (numpy scalars are converted).
        data_fingerprint
            Hash of the training data.
        artifact_path
            Where the artifacts lie, or a function of the assigned version that says so.
        actor
            Who registers it.
        before_commit
            Awaited with the new version inside the transaction, while the model's lock is
            held; if it raises, nothing is recorded. :class:`models.registry.ModelRegistry`
            moves the artifact directory into place here, so a committed version always has
            its files. It holds the connection's turn meanwhile, so other stores on the
            connection wait for it; it may call this store's reads (they run inside the
            transaction), but not from a task of its own, which would wait for it forever.

        Returns
        -------
        ModelVersion
            Numbered one past the highest version of ``name`` so far (1 for the first).
        """
        check_model_name(name)
        check_actor(actor)
        if not data_fingerprint.strip():
            raise ValueError(f"Expected a non-empty data fingerprint, got {data_fingerprint!r}.")
        metrics_json = _metrics_json(metrics)
        params_json = _params_json(params)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            await cur.execute(_NEXT_VERSION, (name,))
            next_row = await cur.fetchone()
            assert next_row is not None  # an aggregate always returns one row
            version: int = next_row["next"]
            path = artifact_path(version) if callable(artifact_path) else artifact_path
            await cur.execute(
                _INSERT_VERSION,
                (
                    name,
                    version,
                    Jsonb(metrics_json),
                    Jsonb(params_json),
                    data_fingerprint,
                    path,
                    actor,
                ),
            )
            row = await cur.fetchone()
            assert row is not None  # INSERT ... RETURNING always returns the row
            registered = _version(row)
            await self._record(
                cur,
                name,
                version,
                ModelAction.REGISTERED,
                actor,
                {"artifact_path": path, "data_fingerprint": data_fingerprint},
            )
            if before_commit is not None:
                await before_commit(registered)
        return registered

    async def get(self, name: str, version: int) -> ModelVersion:
        """Version ``version`` of ``name``; :class:`UnknownModelVersion` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            return await self._get(cur, name, version)

    async def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first; :class:`UnknownModel` when there is none."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_VERSION_COLUMNS} FROM model_versions WHERE name = %s ORDER BY version",
                (name,),
            )
            rows = await cur.fetchall()
        if not rows:
            raise UnknownModel(f"No model named {name!r} is registered.")
        return [_version(row) for row in rows]

    async def names(self) -> list[str]:
        """The name of every registered model, sorted."""
        async with connection_turn(self._conn), self._conn.cursor() as cur:
            await cur.execute("SELECT DISTINCT name FROM model_versions ORDER BY name")
            rows = await cur.fetchall()
        return [row[0] for row in rows]

    async def serving(self, name: str) -> ServingConfig | None:
        """What Serve should load for ``name``, or ``None`` before its first promotion.

        Raises
        ------
        UnknownModel
            No version of ``name`` is registered.
        """
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            config = await self._serving_of(cur, name)
            if config is None:
                await self._require_known(cur, name)
        return config

    async def serving_or_none(self, name: str) -> ServingConfig | None:
        """Like :meth:`serving`, but ``None`` also for a model never registered.

        For callers that poll for what to serve (replicas, the start-up check), where an
        unknown model simply means nothing to load yet.
        """
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            return await self._serving_of(cur, name)

    async def events(self, name: str) -> list[ModelEvent]:
        """The audit trail of ``name``, oldest first; :class:`UnknownModel` when unknown."""
        async with connection_turn(self._conn), self._conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(
                f"SELECT {_EVENT_COLUMNS} FROM model_events WHERE name = %s ORDER BY id",
                (name,),
            )
            rows = await cur.fetchall()
        if not rows:
            raise UnknownModel(f"No model named {name!r} is registered.")
        return [_event(row) for row in rows]

    async def promote(self, name: str, version: int, actor: str) -> ServingConfig:
        """Make ``version`` the production version of ``name``.

        The previous production version (if any) is archived. The first promotion of a model
        creates its serving row. Promoting the running A/B candidate ends the split (an
        ``ab_stopped`` event precedes the ``promoted`` one); a split with another candidate
        keeps running against the new production version.

        Raises
        ------
        UnknownModelVersion
            ``name`` has no version ``version``.
        InvalidServingChange
            ``version`` is already in production.
        """
        check_actor(actor)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            target = await self._get(cur, name, version)
            if target.stage is ModelStage.PRODUCTION:
                raise InvalidServingChange(
                    f"Cannot promote {name} v{version}: it is already in production."
                )
            current = await self._serving_of(cur, name)
            return await self._make_production(
                cur, name, version, current, actor, ModelAction.PROMOTED
            )

    async def rollback(self, name: str, actor: str) -> ServingConfig:
        """Return ``name`` to the version that was in production before the current one.

        Repeated rollbacks walk further back: after promoting v1, v2 and v3, two rollbacks
        leave v1 in production. The version rolled back from is archived.

        Raises
        ------
        UnknownModel
            No version of ``name`` is registered.
        NoRollbackTarget
            ``name`` was never promoted, or its current production version is the first.
        """
        check_actor(actor)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            current = await self._serving_of(cur, name)
            if current is None:
                await self._require_known(cur, name)
                raise NoRollbackTarget(
                    f"Cannot roll back {name}: no version of it has been promoted yet."
                )
            await cur.execute(_PRODUCTION_HISTORY, (name,))
            stack: list[int] = []
            for event in await cur.fetchall():
                if event["action"] == ModelAction.PROMOTED.value:
                    stack.append(event["version"])
                else:
                    stack.pop()
            if len(stack) < 2:
                raise NoRollbackTarget(
                    f"Cannot roll back {name}: production v{current.production_version} has "
                    "no earlier production version to return to."
                )
            return await self._make_production(
                cur, name, stack[-2], current, actor, ModelAction.ROLLED_BACK
            )

    async def start_ab(
        self, name: str, candidate_version: int, fraction: float, actor: str
    ) -> ServingConfig:
        """Route ``fraction`` of the batteries of ``name`` to ``candidate_version``.

        Starting a split while one runs replaces it: the same candidate with a new fraction
        ramps it (batteries already on the candidate stay there when the fraction grows,
        see :func:`models.ab_split.candidate_mask`); another candidate ends the old split
        (an ``ab_stopped`` event) first.

        Parameters
        ----------
        name
            The model.
        candidate_version
            A version in the ``candidate`` stage.
        fraction
            Share of the batteries that see the candidate, in ``(0, 1]``.
        actor
            Who starts it.

        Raises
        ------
        UnknownModelVersion
            ``name`` has no version ``candidate_version``.
        InvalidServingChange
            Nothing of ``name`` is in production yet, or ``candidate_version`` is the
            production version or archived.
        """
        check_actor(actor)
        share = _check_fraction(fraction)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            candidate = await self._get(cur, name, candidate_version)
            current = await self._serving_of(cur, name)
            if current is None:
                raise InvalidServingChange(
                    f"Cannot start an A/B split of {name}: no version is in production yet; "
                    "promote one first."
                )
            if candidate.stage is not ModelStage.CANDIDATE:
                raise InvalidServingChange(
                    f"Expected an A/B candidate in the candidate stage, got {name} "
                    f"v{candidate_version} in the {candidate.stage.value} stage."
                )
            previous = current.candidate_version
            if previous is not None and previous != candidate_version:
                await self._record(
                    cur,
                    name,
                    previous,
                    ModelAction.AB_STOPPED,
                    actor,
                    {
                        "fraction": current.candidate_fraction,
                        "reason": f"replaced by v{candidate_version}",
                    },
                )
            await cur.execute(_SET_SPLIT, (candidate_version, share, actor, name))
            row = await cur.fetchone()
            assert row is not None  # the serving row exists and is ours under the lock
            await self._record(
                cur,
                name,
                candidate_version,
                ModelAction.AB_STARTED,
                actor,
                {
                    "fraction": share,
                    "production_version": current.production_version,
                    "previous_candidate": previous,
                    "previous_fraction": current.candidate_fraction,
                },
            )
        return _serving(row)

    async def stop_ab(self, name: str, actor: str) -> ServingConfig:
        """End the A/B split of ``name``: every battery sees the production version again.

        Raises
        ------
        UnknownModel
            No version of ``name`` is registered.
        InvalidServingChange
            No split is running.
        """
        check_actor(actor)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            current = await self._serving_of(cur, name)
            if current is None:
                await self._require_known(cur, name)
            if current is None or current.candidate_version is None:
                raise InvalidServingChange(f"Cannot stop the A/B split of {name}: none is running.")
            await cur.execute(_SET_SPLIT, (None, 0.0, actor, name))
            row = await cur.fetchone()
            assert row is not None  # the serving row exists and is ours under the lock
            await self._record(
                cur,
                name,
                current.candidate_version,
                ModelAction.AB_STOPPED,
                actor,
                {"fraction": current.candidate_fraction, "reason": "stopped"},
            )
        return _serving(row)

    async def archive(self, name: str, version: int, actor: str) -> ModelVersion:
        """Retire a candidate that will not be promoted; it stays a valid rollback target.

        Raises
        ------
        UnknownModelVersion
            ``name`` has no version ``version``.
        InvalidServingChange
            ``version`` is in production, already archived, or the running A/B candidate.
        """
        check_actor(actor)
        async with (
            own_transaction(self._conn, "model-registry", f"changing model {name!r}"),
            self._conn.cursor(row_factory=dict_row) as cur,
        ):
            await cur.execute(_LOCK, (LOCK_CLASS, name))
            target = await self._get(cur, name, version)
            if target.stage is not ModelStage.CANDIDATE:
                raise InvalidServingChange(
                    f"Expected a version in the candidate stage to archive, got {name} "
                    f"v{version} in the {target.stage.value} stage."
                )
            current = await self._serving_of(cur, name)
            if current is not None and current.candidate_version == version:
                raise InvalidServingChange(
                    f"Cannot archive {name} v{version}: it is the running A/B candidate; "
                    "stop the split first."
                )
            await cur.execute(_SET_STAGE, (ModelStage.ARCHIVED.value, name, version))
            await self._record(
                cur, name, version, ModelAction.ARCHIVED, actor, {"reason": "retired"}
            )
            return await self._get(cur, name, version)

    async def _make_production(
        self,
        cur: psycopg.AsyncCursor[dict[str, Any]],
        name: str,
        version: int,
        current: ServingConfig | None,
        actor: str,
        action: ModelAction,
    ) -> ServingConfig:
        # Called with the model's lock held, inside the caller's transaction.
        previous = current.production_version if current is not None else None
        if previous is not None:
            # Archive first: the partial unique index allows one production row per name.
            await cur.execute(_SET_STAGE, (ModelStage.ARCHIVED.value, name, previous))
            await self._record(
                cur, name, previous, ModelAction.ARCHIVED, actor, {"replaced_by": version}
            )
        await cur.execute(_SET_STAGE, (ModelStage.PRODUCTION.value, name, version))
        candidate: int | None = None
        fraction = 0.0
        if current is not None and current.candidate_version is not None:
            if current.candidate_version == version:
                await self._record(
                    cur,
                    name,
                    version,
                    ModelAction.AB_STOPPED,
                    actor,
                    {"fraction": current.candidate_fraction, "reason": action.value},
                )
            else:
                candidate, fraction = current.candidate_version, current.candidate_fraction
        await self._record(cur, name, version, action, actor, {"previous_production": previous})
        await cur.execute(_UPSERT_SERVING, (name, version, candidate, fraction, actor))
        row = await cur.fetchone()
        assert row is not None  # INSERT ... ON CONFLICT DO UPDATE ... RETURNING returns it
        return _serving(row)

    @staticmethod
    async def _get(
        cur: psycopg.AsyncCursor[dict[str, Any]], name: str, version: int
    ) -> ModelVersion:
        await cur.execute(_SELECT_VERSION, (name, version))
        row = await cur.fetchone()
        if row is None:
            raise UnknownModelVersion(f"Model {name!r} has no version {version}.")
        return _version(row)

    @staticmethod
    async def _serving_of(
        cur: psycopg.AsyncCursor[dict[str, Any]], name: str
    ) -> ServingConfig | None:
        await cur.execute(_SELECT_SERVING, (name,))
        row = await cur.fetchone()
        return None if row is None else _serving(row)

    @staticmethod
    async def _require_known(cur: psycopg.AsyncCursor[dict[str, Any]], name: str) -> None:
        await cur.execute("SELECT 1 FROM model_versions WHERE name = %s LIMIT 1", (name,))
        if await cur.fetchone() is None:
            raise UnknownModel(f"No model named {name!r} is registered.")

    @staticmethod
    async def _record(
        cur: psycopg.AsyncCursor[dict[str, Any]],
        name: str,
        version: int,
        action: ModelAction,
        actor: str,
        detail: Mapping[str, Any],
    ) -> None:
        await cur.execute(_INSERT_EVENT, (name, version, action.value, actor, Jsonb(dict(detail))))
