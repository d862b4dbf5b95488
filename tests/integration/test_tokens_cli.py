"""``bms tokens create|list|revoke`` against the machine's real PostgreSQL."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from bms.cli import app
from contracts.access import Role, TokenRejected
from store import open_postgres
from store.token_store import TokenStore

from .conftest import ServiceHandles

pytestmark = pytest.mark.integration


def _env(schema_url: str, services: ServiceHandles) -> dict[str, str]:
    return {
        "BMS_POSTGRES_URL": schema_url, "BMS_REDIS_URL": services.urls.redis_url,
        "BMS_MQTT_URL": services.urls.mqtt_url,
    }  # fmt: skip


def _authenticate(schema_url: str, token: str) -> object:
    async def go() -> object:
        async with open_postgres(schema_url) as conn:
            return await TokenStore(conn).authenticate(token)

    return asyncio.run(go())


def test_create_list_revoke(schema_url: str, services: ServiceHandles) -> None:
    """The secret is printed once and works; the list never shows it; a revoked token is refused."""
    runner, env = CliRunner(), _env(schema_url, services)
    r = runner.invoke(app, ["tokens", "create", "--role", "technician", "--subject", "tech-03", "--label", "van 3"], env=env)
    assert r.exit_code == 0, r.output
    issued = json.loads(r.stdout.strip().splitlines()[-1])
    assert issued["role"] == "technician" and issued["state"] == "active" and issued["expires_at"]
    who = _authenticate(schema_url, issued["token"])
    assert getattr(who, "role") is Role.TECHNICIAN and getattr(who, "subject") == "tech-03"  # noqa: B009

    listed = runner.invoke(app, ["tokens", "list"], env=env)
    assert listed.exit_code == 0 and issued["token"] not in listed.output
    assert [json.loads(line)["id"] for line in listed.stdout.strip().splitlines()] == [issued["id"]]

    revoked = runner.invoke(app, ["tokens", "revoke", str(issued["id"])], env=env)
    assert revoked.exit_code == 0 and json.loads(revoked.stdout)["state"] == "revoked"
    with pytest.raises(TokenRejected, match="revoked"):
        _authenticate(schema_url, issued["token"])


def test_mistakes_exit_1_with_the_reason(schema_url: str, services: ServiceHandles) -> None:
    runner, env = CliRunner(), _env(schema_url, services)
    r = runner.invoke(app, ["tokens", "revoke", "424242"], env=env)
    assert r.exit_code == 1 and "No token with id 424242" in r.output
    r = runner.invoke(app, ["tokens", "create", "--role", "ops", "--subject", "x", "--ttl-days", "400"], env=env)
    assert r.exit_code == 1 and "Expected ttl_s" in r.output
    r = runner.invoke(app, ["tokens", "create", "--role", "janitor", "--subject", "x"], env=env)
    assert r.exit_code == 2  # typer: not one of the roles
