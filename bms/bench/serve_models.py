"""``bms bench serve``: model throughput through Ray Serve next to the bare model, same run.

For each model family the benchmark trains a small version (quick plan), registers and
promotes it in a fresh registry schema, deploys its :class:`~runtime.model_deployments.ModelServer`
and then measures, one after the other on the same machine:

* **bare**: :meth:`ServedModel.run <models.served_model.ServedModel.run>` in this process
  on ``rows``-row arrays (the same code a replica runs, without Ray);
* **serve**: ``callers`` concurrent callers sending ``rows``-row requests through a
  deployment handle (what the shards do, one call per shard per tick);
* **per item**: 1-row requests through the handle, 32 in flight (what a per-battery call
  loop would get).

The driver runs at the workers' niceness (15) so neither side is favoured. The last line
printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bms.services import EmbeddedServices, ServiceUrls
from bms.settings import Settings

__all__ = ["bench_inputs", "run_serve_bench"]

Inputs = tuple[list[str], dict[str, npt.NDArray[Any]]]


def bench_inputs(name: str, rows: int, seed: int = 0) -> Inputs:
    """Realistic request arrays of ``rows`` rows for model ``name``."""
    rng = np.random.default_rng(seed)
    ids = [f"B{k:06d}" for k in range(rows)]
    if name == "health":
        from sim.ageing import LifetimeSimulator
        from twins.features import TwinCounters, health_features

        sample = LifetimeSimulator(seed=seed).run(max(1, rows // 4 + 1), 600, 4)
        x = health_features(TwinCounters.from_lifetime(sample))[:rows]
        return ids, {"features": x}
    if name == "priority":
        from models.priority_rf import _scenarios
        from sim.demand import DemandProfile
        from twins.features import priority_features

        inputs, _ = _scenarios(rows, rng, DemandProfile())
        return ids, {"features": priority_features(inputs)}
    if name == "degradation":
        from twins.cycle_inputs import cycle_inputs

        soh = rng.uniform(0.75, 1.0, rows)
        cycle = rng.uniform(30, 1500, rows)
        x = cycle_inputs(soh, cycle, soh + 0.002, 0.96 * cycle, soh + 0.05, -0.5)
        h = rng.normal(0, 0.1, (rows, 32)).astype(np.float32)
        return ids, {"x": x, "h": h, "c": h.copy(), "soh": soh, "cycle": cycle}
    return _extra_inputs(name, rows, rng, ids)


def _extra_inputs(name: str, rows: int, rng: np.random.Generator, ids: list[str]) -> Inputs:
    if name == "anomaly":
        from models.training import normal_windows

        w = normal_windows(40, 4.0, seed=3)
        take = np.arange(rows) % w.n  # tile the recorded windows up to ``rows``
        return ids, {"values": w.values[take], "ts_s": w.ts_s[take], "lengths": w.lengths[take]}
    if name == "demand":
        from models.demand_lstm import DemandInputs
        from models.predictors import demand_request
        from sim.weather import SimWeather

        hours = 168
        end = 1_764_172_800.0
        weather = SimWeather(seed=1)
        inputs = DemandInputs(
            history_rides=rng.poisson(3.0, (rows, hours)).astype(np.float64),
            weather_past=weather.hourly(end - hours * 3600.0, hours),
            weather_next=weather.hourly(end, 24),
        )
        return [f"z{k}" for k in range(rows)], demand_request(inputs)
    raise ValueError(f"Expected a model with benchmark inputs, got {name!r}.")


def _rate(fn: Callable[[], int], seconds: float) -> tuple[float, int]:
    """Rows per second of repeated ``fn`` calls for ``seconds``; (median rate, calls)."""
    rates: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or not rates:
        t0 = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - t0))
    return statistics.median(rates), len(rates)


async def _serve_rate(handle: Any, request: Any, rows: int, callers: int, seconds: float) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def caller() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await handle.remote(request)
            done += rows

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return done / (time.perf_counter() - t0)


def run_serve_bench(
    models: list[str], rows: int, seconds: float, callers: int, base: Settings | None = None
) -> dict[str, Any]:
    """Run the benchmark; returns the result object (also printed by the CLI)."""
    import os

    import psycopg
    import ray
    from psycopg import sql
    from psycopg.conninfo import make_conninfo
    from ray import serve

    from bms.system import init_ray, ray_options, run_migrations
    from models.predictors import predictor
    from models.registry import ModelRegistry
    from models.served_model import ServedModel
    from models.training import TrainingPlan, register_all, train_all
    from runtime.model_deployments import (
        ModelServer,
        ModelServerArgs,
        ScoreRequest,
        model_deployment_name,
    )
    from store import open_postgres
    from store.model_registry_store import ModelRegistryStore

    run = uuid.uuid4().hex[:6]
    base = base or Settings.load()
    tmp = tempfile.TemporaryDirectory(prefix="bms-bench-serve-")
    root = Path(tmp.name) / "artifacts"
    settings = base.model_copy(update={
        "data_dir": Path(tmp.name), "ray": base.ray.model_copy(update={"namespace": f"bench{run}"}),
    })  # fmt: skip
    services = EmbeddedServices(settings)
    urls = services.start()
    schema = f"bench_{run}"
    with psycopg.connect(urls.postgres_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    pg_url = make_conninfo(urls.postgres_url, options=f"-c search_path={schema}")
    urls = ServiceUrls(pg_url, urls.redis_url, urls.mqtt_url)
    result: dict[str, Any] = {"rows_per_request": rows, "callers": callers, "seconds": seconds, "models": {}}
    try:
        trained = train_all(TrainingPlan.quick(), Path(tmp.name) / "train", models)

        async def setup() -> dict[str, Path]:
            await run_migrations(pg_url)
            async with open_postgres(pg_url) as conn:
                reg = ModelRegistry(ModelRegistryStore(conn), root)
                done = await register_all(reg, trained, "bench", promote=True)
                return {v.name: root / v.artifact_path for v, _ in done}

        dirs = asyncio.run(setup())
        init_ray(ray_options(settings, include_dashboard=False))
        os.nice(15 - os.nice(0))
        for name in models:
            result["models"][name] = _bench_one(
                name, rows, seconds, callers, pg_url, root, dirs[name],
                serve, ModelServer, ModelServerArgs, ScoreRequest, model_deployment_name,
                ServedModel, predictor,
            )  # fmt: skip
        ratios = [m["serve_over_bare"] for m in result["models"].values()]
        result["median_serve_over_bare"] = round(statistics.median(ratios), 3)
        return result
    finally:
        with contextlib.suppress(Exception):
            serve.shutdown()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            ray.shutdown()
        with contextlib.suppress(Exception), psycopg.connect(services.urls.postgres_url, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
        services.stop()
        tmp.cleanup()


def _bench_one(
    name: str, rows: int, seconds: float, callers: int, pg_url: str, root: Path, artifact: Path,
    serve: Any, server_cls: Any, args_cls: Any, request_cls: Any, deployment_name: Any,
    served_cls: Any, predictor: Any,
) -> dict[str, Any]:
    from contracts.model_registry import ServingConfig

    ids, arrays = bench_inputs(name, rows)
    bare = served_cls(name, predictor(name))
    bare.apply(ServingConfig(name, 1, None, 0.0, time.time(), "bench"), {1: artifact})
    bare_rate, bare_calls = _rate(lambda: len(bare.run(ids, arrays)["model_version"]), seconds)

    app = server_cls.options(name=deployment_name(name)).bind(
        args_cls(name=name, postgres_url=pg_url, artifacts_root=str(root), poll_interval_s=1.0)
    )
    handle = serve.run(app, name=f"bench-{name}", route_prefix=None)
    request = request_cls(ids, arrays)
    one = request_cls(ids[:1], {k: v[:1] for k, v in arrays.items()})

    async def measure() -> tuple[float, float]:
        deadline = time.time() + 60
        while True:  # the replica loads the model on its first registry poll
            try:
                await handle.remote(one)
                break
            except Exception:
                if time.time() > deadline:
                    raise
                await asyncio.sleep(0.5)
        for _ in range(3):
            await handle.remote(request)  # warm-up
        serve_rate = await _serve_rate(handle, request, rows, callers, seconds)
        per_item = await _serve_rate(handle, one, 1, 32, min(seconds, 5.0))
        return serve_rate, per_item

    serve_rate, per_item = asyncio.run(measure())
    serve.delete(f"bench-{name}")
    return cast(dict[str, Any], {
        "bare_rows_per_s": round(bare_rate),
        "bare_calls": bare_calls,
        "serve_rows_per_s": round(serve_rate),
        "serve_over_bare": round(serve_rate / bare_rate, 3),
        "per_item_calls_per_s": round(per_item, 1),
    })
