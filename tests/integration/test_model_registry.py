"""The model registry against the machine's real Postgres: versions, promotion, rollback,
A/B splits, the audit trail and the artifact directories on disk.

Every test gets its own Postgres schema with the migrations applied, dropped afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import psycopg
import pytest

from contracts.errors import (
    ArtifactError,
    InvalidServingChange,
    NoRollbackTarget,
    UnknownModel,
    UnknownModelVersion,
)
from contracts.model_registry import ModelAction, ModelStage
from models.registry import ModelRegistry, data_fingerprint
from store import StoreUsageError, open_postgres
from store.model_registry_store import LOCK_CLASS, ModelRegistryStore

pytestmark = pytest.mark.integration

A = ModelAction


async def register_n(store: ModelRegistryStore, name: str, n: int) -> None:
    """Register ``n`` versions of ``name`` with placeholder metrics and paths."""
    for i in range(n):
        await store.register(
            name, {"val_mae": 0.1 / (i + 1)}, {"depth": i}, f"fp{i}", f"{name}/v{i + 1}", "ci"
        )


async def actions(store: ModelRegistryStore, name: str) -> list[tuple[str, int]]:
    """The audit trail of ``name`` as (action, version) pairs."""
    return [(e.action.value, e.version) for e in await store.events(name)]


async def test_register_assigns_1_2_3_per_name_and_keeps_the_record(
    conn: psycopg.AsyncConnection,
) -> None:
    """Versions count from 1 per model name; metrics, params and provenance come back intact."""
    store = ModelRegistryStore(conn)
    versions = [
        await store.register(
            "health_xgb",
            {"val_mae": np.float32(0.5), "val_rmse": 0.75},
            {"max_depth": np.int64(6), "features": ["soc", "temp"]},
            "abc123",
            f"health_xgb/v{i}",
            "trainer",
        )
        for i in (1, 2, 3)
    ]
    other = await store.register("demand_lstm", {}, {}, "def", "demand_lstm/v1", "trainer")
    assert [v.version for v in versions] == [1, 2, 3]
    assert other.version == 1
    first = await store.get("health_xgb", 1)
    assert first == versions[0]
    assert first.metrics == {"val_mae": 0.5, "val_rmse": 0.75}
    assert first.params == {"max_depth": 6, "features": ["soc", "temp"]}
    assert first.stage is ModelStage.CANDIDATE and first.created_by == "trainer"
    assert [v.version for v in await store.versions("health_xgb")] == [1, 2, 3]
    assert await store.names() == ["demand_lstm", "health_xgb"]
    assert await store.serving("health_xgb") is None  # registered, never promoted
    assert await actions(store, "health_xgb") == [
        ("registered", 1),
        ("registered", 2),
        ("registered", 3),
    ]
    assert (await store.events("health_xgb"))[0].detail == {
        "artifact_path": "health_xgb/v1",
        "data_fingerprint": "abc123",
    }


async def test_concurrent_registers_get_distinct_versions(
    conn: psycopg.AsyncConnection, schema_url: str
) -> None:
    """Four registrations racing on four connections get versions 1-4, each exactly once.

    A fifth connection holds the model's advisory lock while they start, so all four are
    queued on it at once; without the lock, they would all read max(version) = 0.
    """
    store = ModelRegistryStore(conn)
    async with (
        open_postgres(schema_url) as holder,
        open_postgres(schema_url) as c1,
        open_postgres(schema_url) as c2,
        open_postgres(schema_url) as c3,
        open_postgres(schema_url) as c4,
    ):
        async with holder.transaction():
            await holder.execute(
                "SELECT pg_advisory_xact_lock(%s::int4, hashtext(%s))", (LOCK_CLASS, "anomaly")
            )
            tasks = [
                asyncio.create_task(
                    ModelRegistryStore(c).register("anomaly", {}, {}, "fp", f"p{i}", f"w{i}")
                )
                for i, c in enumerate((c1, c2, c3, c4))
            ]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in tasks)  # all wait on the held lock
        results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=10)
    assert sorted(v.version for v in results) == [1, 2, 3, 4]
    assert [v.version for v in await store.versions("anomaly")] == [1, 2, 3, 4]


async def test_promote_and_rollback_walk_the_production_history(
    conn: psycopg.AsyncConnection,
) -> None:
    """promote 1, 2, 3 then roll back twice lands on v1; a third rollback has no target.

    Each promotion archives the version it replaces, and the audit trail records every step
    in order with its actor.
    """
    store = ModelRegistryStore(conn)
    await register_n(store, "priority_rf", 3)
    first = await store.promote("priority_rf", 1, "alice")
    assert (first.production_version, first.candidate_version, first.updated_by) == (
        1,
        None,
        "alice",
    )
    await store.promote("priority_rf", 2, "alice")
    await store.promote("priority_rf", 3, "bob")
    stages = {v.version: v.stage for v in await store.versions("priority_rf")}
    assert stages == {1: ModelStage.ARCHIVED, 2: ModelStage.ARCHIVED, 3: ModelStage.PRODUCTION}

    back = await store.rollback("priority_rf", "carol")
    assert back.production_version == 2 and back.updated_by == "carol"
    assert (await store.get("priority_rf", 3)).stage is ModelStage.ARCHIVED
    assert (await store.get("priority_rf", 2)).stage is ModelStage.PRODUCTION
    assert (await store.rollback("priority_rf", "carol")).production_version == 1
    with pytest.raises(NoRollbackTarget, match="production v1 has no earlier"):
        await store.rollback("priority_rf", "carol")

    events = await store.events("priority_rf")
    assert [(e.action.value, e.version) for e in events[3:]] == [
        ("promoted", 1),
        ("archived", 1),
        ("promoted", 2),
        ("archived", 2),
        ("promoted", 3),
        ("archived", 3),
        ("rolled_back", 2),
        ("archived", 2),
        ("rolled_back", 1),
    ]
    assert [e.actor for e in events[-3:]] == ["carol"] * 3
    assert events[-1].detail == {"previous_production": 2}
    assert [e.id for e in events] == sorted(e.id for e in events)
    assert [e.at_s for e in events] == sorted(e.at_s for e in events)


async def test_promote_after_rollback_then_rollback_returns_to_the_rolled_back_to_version(
    conn: psycopg.AsyncConnection,
) -> None:
    """promote 1, 2; rollback (-> 1); promote 3; rollback returns to 1, not to 2."""
    store = ModelRegistryStore(conn)
    await register_n(store, "degradation_lstm", 3)
    await store.promote("degradation_lstm", 1, "ops")
    await store.promote("degradation_lstm", 2, "ops")
    await store.rollback("degradation_lstm", "ops")
    await store.promote("degradation_lstm", 3, "ops")
    assert (await store.rollback("degradation_lstm", "ops")).production_version == 1


async def test_ab_split_start_ramp_and_stop(conn: psycopg.AsyncConnection) -> None:
    """A split needs a production version; it starts, ramps, stops, and is recorded each time."""
    store = ModelRegistryStore(conn)
    await register_n(store, "health_xgb", 3)
    with pytest.raises(InvalidServingChange, match="no version is in production"):
        await store.start_ab("health_xgb", 2, 0.1, "ops")
    await store.promote("health_xgb", 1, "ops")

    started = await store.start_ab("health_xgb", 2, 0.1, "ops")
    assert (started.candidate_version, started.candidate_fraction) == (2, 0.1)
    assert started.ab_active and started.ab_salt == "health_xgb/v2"
    ramped = await store.start_ab("health_xgb", 2, 0.3, "ops")
    assert ramped.candidate_fraction == 0.3
    assert await store.serving("health_xgb") == ramped

    stopped = await store.stop_ab("health_xgb", "ops")
    assert (stopped.production_version, stopped.candidate_version) == (1, None)
    assert stopped.candidate_fraction == 0.0 and not stopped.ab_active
    with pytest.raises(InvalidServingChange, match="none is running"):
        await store.stop_ab("health_xgb", "ops")

    await store.start_ab("health_xgb", 2, 0.2, "ops")
    replaced = await store.start_ab("health_xgb", 3, 0.05, "ops")
    assert replaced.candidate_version == 3

    trail = await store.events("health_xgb")
    assert [(e.action.value, e.version) for e in trail[4:]] == [
        ("ab_started", 2),
        ("ab_started", 2),
        ("ab_stopped", 2),
        ("ab_started", 2),
        ("ab_stopped", 2),
        ("ab_started", 3),
    ]
    assert trail[5].detail == {
        "fraction": 0.3,
        "production_version": 1,
        "previous_candidate": 2,
        "previous_fraction": 0.1,
    }
    assert trail[-2].detail == {"fraction": 0.2, "reason": "replaced by v3"}


async def test_ab_split_rejects_production_archived_and_out_of_range(
    conn: psycopg.AsyncConnection,
) -> None:
    """The production version, an archived version and fractions outside (0, 1] are refused,
    and nothing is written."""
    store = ModelRegistryStore(conn)
    await register_n(store, "anomaly", 3)
    await store.promote("anomaly", 1, "ops")
    await store.archive("anomaly", 3, "ops")
    before = await store.events("anomaly")
    with pytest.raises(InvalidServingChange, match="production stage"):
        await store.start_ab("anomaly", 1, 0.5, "ops")
    with pytest.raises(InvalidServingChange, match="archived stage"):
        await store.start_ab("anomaly", 3, 0.5, "ops")
    for fraction in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
            await store.start_ab("anomaly", 2, fraction, "ops")
    assert await store.events("anomaly") == before
    serving = await store.serving("anomaly")
    assert serving is not None and serving.candidate_version is None


async def test_promoting_the_candidate_ends_the_split(conn: psycopg.AsyncConnection) -> None:
    """Promoting the A/B candidate clears the split (ab_stopped, then promoted); promoting
    another version keeps the split running against the new production."""
    store = ModelRegistryStore(conn)
    await register_n(store, "demand_lstm", 3)
    await store.promote("demand_lstm", 1, "ops")
    await store.start_ab("demand_lstm", 2, 0.25, "ops")

    kept = await store.promote("demand_lstm", 3, "ops")
    assert (kept.production_version, kept.candidate_version, kept.candidate_fraction) == (
        3,
        2,
        0.25,
    )
    cleared = await store.promote("demand_lstm", 2, "ops")
    assert (cleared.production_version, cleared.candidate_version) == (2, None)
    assert cleared.candidate_fraction == 0.0
    trail = await actions(store, "demand_lstm")
    assert trail[-3:] == [("archived", 3), ("ab_stopped", 2), ("promoted", 2)]
    with pytest.raises(InvalidServingChange, match="already in production"):
        await store.promote("demand_lstm", 2, "ops")


async def test_unknown_models_and_versions_raise_and_write_nothing(
    conn: psycopg.AsyncConnection,
) -> None:
    """Unknown names and versions raise lookup errors naming them; a model never promoted has
    nothing to roll back to; a failed change leaves the trail unchanged."""
    store = ModelRegistryStore(conn)
    await register_n(store, "health_xgb", 1)
    with pytest.raises(UnknownModelVersion, match="'health_xgb' has no version 7"):
        await store.get("health_xgb", 7)
    with pytest.raises(UnknownModelVersion, match="no version 7"):
        await store.promote("health_xgb", 7, "ops")
    with pytest.raises(UnknownModelVersion):
        await store.start_ab("health_xgb", 7, 0.5, "ops")
    with pytest.raises(NoRollbackTarget, match="no version of it has been promoted"):
        await store.rollback("health_xgb", "ops")
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: store.versions("nope"),
        lambda: store.events("nope"),
        lambda: store.serving("nope"),
        lambda: store.rollback("nope", "ops"),
        lambda: store.stop_ab("nope", "ops"),
    ]
    for call in calls:
        with pytest.raises(UnknownModel, match="'nope'"):
            await call()
    assert isinstance(UnknownModel("x"), LookupError)
    assert await actions(store, "health_xgb") == [("registered", 1)]
    assert not conn.info.transaction_status  # IDLE: failed transactions were rolled back


async def test_bad_arguments_are_refused_before_writing(conn: psycopg.AsyncConnection) -> None:
    """Malformed names, empty actors and non-finite metrics raise ValueError; nothing lands."""
    store = ModelRegistryStore(conn)
    with pytest.raises(ValueError, match="model name"):
        await store.register("../etc", {}, {}, "fp", "p", "ci")
    with pytest.raises(ValueError, match="non-empty actor"):
        await store.register("m", {}, {}, "fp", "p", " ")
    with pytest.raises(ValueError, match="metric 'mae'"):
        await store.register("m", {"mae": float("nan")}, {}, "fp", "p", "ci")
    with pytest.raises(ValueError, match="JSON object"):
        await store.register("m", {}, {"lr": float("inf")}, "fp", "p", "ci")
    assert await store.names() == []


async def test_audit_trail_is_append_only(conn: psycopg.AsyncConnection) -> None:
    """The database itself refuses UPDATE, DELETE and TRUNCATE of model_events."""
    store = ModelRegistryStore(conn)
    await register_n(store, "anomaly", 1)
    for statement in (
        "UPDATE model_events SET actor = 'mallory'",
        "DELETE FROM model_events",
        "TRUNCATE model_events",
    ):
        with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
            await conn.execute(statement)
    assert [e.actor for e in await store.events("anomaly")] == ["ci"]


async def test_store_refuses_a_non_autocommit_connection(schema_url: str) -> None:
    """A connection that would leave transactions open is rejected with a clear error."""
    async with await psycopg.AsyncConnection.connect(schema_url) as raw:
        with pytest.raises(StoreUsageError, match="ModelRegistryStore"):
            ModelRegistryStore(raw)


def make_artifact(folder: Path, payload: bytes) -> Path:
    """A small artifact directory: a model file and a nested config."""
    folder.mkdir(parents=True)
    (folder / "model.json").write_bytes(payload)
    (folder / "conf").mkdir()
    (folder / "conf" / "features.txt").write_text("soc\ntemp\n")
    return folder


async def test_registry_copies_artifacts_into_versioned_directories(
    conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    """Each registration copies the whole directory to <root>/<name>/v<n>/, records the path
    relative to the root, and leaves no staging directory behind."""
    root = tmp_path / "artifacts"
    registry = ModelRegistry(ModelRegistryStore(conn), root)
    fp = data_fingerprint(np.arange(6.0).reshape(3, 2))
    v1 = await registry.register(
        "health_xgb", make_artifact(tmp_path / "run1", b"one"), {"mae": 0.2}, {}, fp, "trainer"
    )
    v2 = await registry.register(
        "health_xgb", make_artifact(tmp_path / "run2", b"two"), {"mae": 0.1}, {}, fp, "trainer"
    )
    assert (v1.version, v2.version) == (1, 2)
    assert v2.artifact_path == "health_xgb/v2" and v2.data_fingerprint == fp
    dir1 = await registry.artifact_dir("health_xgb", 1)
    dir2 = await registry.artifact_dir("health_xgb", 2)
    assert dir1 == root / "health_xgb" / "v1"
    assert (dir1 / "model.json").read_bytes() == b"one"
    assert (dir2 / "model.json").read_bytes() == b"two"
    assert (dir2 / "conf" / "features.txt").read_text() == "soc\ntemp\n"
    assert sorted(p.name for p in (root / "health_xgb").iterdir()) == ["v1", "v2"]
    with pytest.raises(UnknownModelVersion):
        await registry.artifact_dir("health_xgb", 3)


async def test_registry_failures_leave_neither_record_nor_files(
    conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    """A missing or empty source, or a refused record, leaves no version directory, no
    staging directory and no row; an orphan v1 left by a crash is replaced."""
    root = tmp_path / "artifacts"
    store = ModelRegistryStore(conn)
    registry = ModelRegistry(store, root)
    with pytest.raises(ArtifactError, match="not a directory"):
        await registry.register("anomaly", tmp_path / "missing", {}, {}, "fp", "ci")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="empty"):
        await registry.register("anomaly", tmp_path / "empty", {}, {}, "fp", "ci")
    source = make_artifact(tmp_path / "run", b"good")
    with pytest.raises(ValueError, match="metric"):
        await registry.register("anomaly", source, {"auc": float("nan")}, {}, "fp", "ci")
    assert not (root / "anomaly").exists() or list((root / "anomaly").iterdir()) == []
    assert await store.names() == []

    # A registration that crashed between its rename and its commit left v1 behind.
    make_artifact(root / "anomaly" / "v1", b"orphan")
    registered = await registry.register("anomaly", source, {}, {}, "fp", "ci")
    assert registered.version == 1
    dir1 = await registry.artifact_dir("anomaly", 1)
    assert (dir1 / "model.json").read_bytes() == b"good"


def test_data_fingerprint_is_stable_and_sensitive() -> None:
    """Same arrays give the same digest; a changed value, dtype, shape or order changes it."""
    x = np.arange(12, dtype=np.float64).reshape(4, 3)
    y = np.array([0, 1, 0, 1], dtype=np.int64)
    fp = data_fingerprint(x, y)
    assert fp == data_fingerprint(x.copy(), y.copy())
    assert fp == data_fingerprint(np.asfortranarray(x), y)  # memory layout does not matter
    assert len(fp) == 64
    changed = x.copy()
    changed[0, 0] = 0.5
    assert data_fingerprint(changed, y) != fp
    assert data_fingerprint(x.astype(np.float32), y) != fp
    assert data_fingerprint(x.reshape(3, 4), y) != fp
    assert data_fingerprint(y, x) != fp
    with pytest.raises(ValueError, match="dtype object"):
        data_fingerprint(np.array(["a", 1], dtype=object))


async def test_start_retrains_a_production_model_this_code_cannot_load(
    conn: psycopg.AsyncConnection, tmp_path: Path
) -> None:
    """An upgrade: the production degradation model was written in an older format the
    replicas cannot load, so the start-up check trains and promotes a new version; a
    loadable production model is left alone on the next start."""
    import json

    from models.predictors import PREDICTORS
    from models.training import TrainingPlan, ensure_served

    registry = ModelRegistry(ModelRegistryStore(conn), tmp_path / "artifacts")
    old = tmp_path / "old"
    old.mkdir()
    (old / "degradation_lstm.json").write_text(json.dumps({"format_version": 1, "params": {}}))
    (old / "degradation_lstm.pt").write_bytes(b"weights of the absolute-time model")
    v1 = await registry.register("degradation", old, {}, {}, "fp-old", "ci")
    await registry.store.promote("degradation", v1.version, "ci")

    plan = TrainingPlan.quick()
    trained = await ensure_served(registry, plan, tmp_path / "work", names=["degradation"])
    assert trained == ["degradation"]
    serving = await registry.store.serving_or_none("degradation")
    assert serving is not None and serving.production_version == v1.version + 1
    PREDICTORS["degradation"].load(await registry.artifact_dir("degradation", serving.production_version))
    assert await ensure_served(registry, plan, tmp_path / "work2", names=["degradation"]) == []
