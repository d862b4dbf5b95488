"""``serve deploy deploy/serve-config.yaml``: the system brought up by Serve's own tooling.

On a cluster run with ``serve deploy`` or KubeRay no ``bms run`` process stays: Serve calls
``bms.serve_app:build`` in a task, and that must start every actor that is not a Serve
deployment and return the app. This test deploys the shipped config file through Ray's
dashboard (the REST API KubeRay uses too) with the ``serve`` CLI, onto a local Ray with the
servers' URLs in every node's environment, as a Secret gives them on Kubernetes. The file is
changed only where a 2-core machine differs from a cluster (no CPUs or memory reserved per
replica, one replica minimum, a free port, the proxy on the head) and where the config lives.

Then: the app runs, telemetry published to the broker reaches the twins, every actor the
builder owns runs and answers, and a second deploy (a changed autoscaling bound) leaves the
twin shards running in the same processes: a redeploy does not restart the fleet.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import ray
import yaml
from psycopg import sql
from psycopg.conninfo import make_conninfo
from ray import serve

from bms.services import free_http_port, free_port
from runtime.names import (
    ALERTS_NAME,
    DIRECTORY_NAME,
    MODEL_JOB_NAME,
    PLANNER_NAME,
    SERVE_APP_NAME,
    SIMULATIONS_NAME,
    SUPERVISOR_NAME,
    bridge_actor_name,
    shard_actor_name,
)

from .conftest import FaultServers
from .kit import SeqPublisher, pid_of, wait_fresh

pytestmark = [pytest.mark.faults, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SERVE_CONFIG = ROOT / "deploy" / "serve-config.yaml"
SERVE_CLI = str(Path(sys.executable).with_name("serve"))


@dataclass
class Deployed:
    namespace: str
    http_port: int
    dashboard_port: int
    config_path: Path
    config: dict[str, Any]
    broker_port: int


def _local_config(toml: Path, http_port: int, max_ingress: int) -> dict[str, Any]:
    """deploy/serve-config.yaml as this machine can run it."""
    config = yaml.safe_load(SERVE_CONFIG.read_text())
    config["proxy_location"] = "HeadOnly"
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = config["applications"]
    app["args"]["config"] = str(toml)
    for d in app["deployments"]:
        # Two cores cannot reserve a CPU per replica; the bounds stay, scaled down.
        d["ray_actor_options"] = {"num_cpus": 0}
        d["autoscaling_config"]["min_replicas"] = 1
        d["autoscaling_config"]["max_replicas"] = min(d["autoscaling_config"]["max_replicas"], 2)
        if d["name"] == "ApiIngress":
            d["autoscaling_config"]["max_replicas"] = max_ingress
    return config


def _deploy(dep: Deployed, max_ingress: int) -> None:
    dep.config = _local_config(dep.config_path.with_suffix(".toml"), dep.http_port, max_ingress)
    dep.config_path.write_text(yaml.safe_dump(dep.config))
    out = subprocess.run(
        [SERVE_CLI, "deploy", str(dep.config_path), "-a", f"http://127.0.0.1:{dep.dashboard_port}"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"Expected `serve deploy` to succeed, got {out.returncode}: {out.stderr[-2000:]}"


def _wait_running(timeout_s: float = 300.0) -> None:
    deadline = time.monotonic() + timeout_s
    status: Any = None
    while time.monotonic() < deadline:
        apps = serve.status().applications
        status = apps.get(SERVE_APP_NAME)
        if status is not None and str(status.status) in ("RUNNING", "ApplicationStatus.RUNNING"):
            return
        if status is not None and "DEPLOY_FAILED" in str(status.status):
            raise AssertionError(f"Expected the app to deploy, it failed: {status.message}")
        time.sleep(1.0)
    raise AssertionError(f"Expected the app RUNNING within {timeout_s} s, got {status}")


@pytest.fixture(scope="module")
def deployed(servers: FaultServers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    work = tmp_path_factory.mktemp("serve-deploy")
    schema = f"deploy_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(servers.postgres_admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    namespace = f"deploy{uuid.uuid4().hex[:6]}"
    (work / "serve.toml").write_text(
        "\n".join([
            f'data_dir = "{work / "data"}"',
            "[ray]", f'namespace = "{namespace}"',
            "[twins]", "shard_size = 100", "checkpoint_interval_s = 5.0",
            "[bridge]", "workers = 1",
            "[models]", "score_interval_s = 5.0", "poll_interval_s = 2.0",
            "[planner]", "plan_interval_s = 3600", "solve_time_limit_s = 5",
        ]) + "\n"
    )  # fmt: skip
    # The servers in every node's environment (a Secret's job on Kubernetes); put back after.
    env = {
        "BMS_POSTGRES_URL": make_conninfo(servers.postgres_admin_url, options=f"-c search_path={schema}"),
        "BMS_REDIS_URL": servers.urls.redis_url,
        "BMS_MQTT_URL": servers.urls.mqtt_url,
        "OMP_NUM_THREADS": "1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    dashboard_port = free_port()
    try:
        ray.init(
            num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=True,
            dashboard_host="127.0.0.1", dashboard_port=dashboard_port, namespace=namespace,
            logging_level=logging.WARNING, log_to_driver=False,
        )  # fmt: skip
        dep = Deployed(namespace, free_http_port(), dashboard_port, work / "serve.yaml", {}, servers.broker.port)
        yield dep
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            if ray.is_initialized():
                serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()  # the local cluster and every actor on it
            with psycopg.connect(servers.postgres_admin_url, autocommit=True) as admin:
                admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def _pid(name: str, namespace: str) -> int:
    return pid_of(ray.get_actor(name, namespace=namespace))


async def test_serve_deploy_brings_the_system_up_and_a_redeploy_keeps_the_twins(deployed: Deployed) -> None:
    dep = deployed
    _deploy(dep, max_ingress=2)
    await asyncio.to_thread(_wait_running)

    # Every actor the builder owns runs (Serve does not know them).
    owned = [DIRECTORY_NAME, shard_actor_name(0), bridge_actor_name(0), MODEL_JOB_NAME, PLANNER_NAME,
             ALERTS_NAME, SIMULATIONS_NAME, SUPERVISOR_NAME]  # fmt: skip
    pids = {name: _pid(name, dep.namespace) for name in owned}

    # The app answers, and telemetry reaches the twins through the broker and the bridge.
    r = httpx.get(f"http://127.0.0.1:{dep.http_port}/healthz", timeout=30)
    assert r.status_code == 200, r.text
    pub = SeqPublisher(dep.broker_port, "sd", 20, period_s=1.0, samples_per_message=5).start()
    try:
        await wait_fresh(pub, dep.namespace, time.time(), timeout_s=120)
    finally:
        await asyncio.to_thread(pub.stop)

    # A redeploy with a changed bound: the app is rebuilt, the twins and services are not.
    _deploy(dep, max_ingress=3)
    await asyncio.sleep(2.0)
    await asyncio.to_thread(_wait_running)
    ingress = serve.status().applications[SERVE_APP_NAME].deployments["ApiIngress"]
    assert str(ingress.status).endswith("HEALTHY"), ingress
    assert {name: _pid(name, dep.namespace) for name in owned} == pids, "Expected a redeploy to keep every actor"
    r = httpx.get(f"http://127.0.0.1:{dep.http_port}/healthz", timeout=30)
    assert r.status_code == 200, r.text
