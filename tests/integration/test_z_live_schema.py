"""schemathesis against the live OpenAPI schema of the running app, as each role.

Runs last in the session (the file name sorts last): the generated calls change state the
other modules rely on (they promote models, revoke tokens by id, re-plan).

For every role, schemathesis reads ``/openapi.json`` from the running Serve app, generates
requests for every operation (examples, boundary coverage, then random fuzzing; seeded)
and checks every response: no 5xx, the status code, content type, headers and body all as
the schema declares, and that the routes refuse calls without valid auth (``ignored_auth``).
The counts of each run go to ``docs/security.md``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bms.settings import Settings
from contracts.access import Role

from .conftest import ServiceHandles, issue_token
from .test_system import _wait

pytestmark = pytest.mark.integration

_CHECKS = ",".join([
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_headers_conformance", "response_schema_conformance", "ignored_auth",
])  # fmt: skip
_MAX_EXAMPLES = int(os.environ.get("BMS_SCHEMATHESIS_EXAMPLES", "15"))


@pytest.mark.parametrize("role", list(Role), ids=[r.value for r in Role])
def test_live_schema_holds_for_every_role(
    role: Role, fleet_system: Any, services: ServiceHandles, system_settings: Settings, tmp_path: Path
) -> None:
    import httpx

    base = f"http://127.0.0.1:{system_settings.serve.http_port}"
    _wait(lambda: httpx.get(f"{base}/healthz", timeout=10).status_code == 200, 120, "the HTTP app")
    token = issue_token(services, role, f"schemathesis-{role.value}" if role is not Role.TECHNICIAN else "it-tech-1")
    report = tmp_path / "junit.xml"
    cmd = [
        str(Path(sys.executable).parent / "st"), "run", f"{base}/openapi.json",
        "-H", f"Authorization: Bearer {token}",
        "--checks", _CHECKS,
        "--max-examples", str(_MAX_EXAMPLES),
        "--seed", "20261130",
        "--phases", "examples,coverage,fuzzing",
        "--request-timeout", "60",
        # The live alert stream never ends (server-sent events): a fuzzer waiting for its
        # body would time out; test_alerts.py and the unit tests cover it.
        "--exclude-path", "/api/v1/alerts/stream",
        "--report", "junit", "--report-junit-path", str(report),
        "--no-color",
    ]  # fmt: skip
    # In tmp_path: schemathesis keeps a cache folder in its working directory.
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    summary = out.stdout[-6000:]
    print(summary)
    assert out.returncode == 0, f"schemathesis as {role.value} failed:\n{summary}\n{out.stderr[-3000:]}"
    _record(role, summary)


def _record(role: Role, summary: str) -> None:
    """Keep the tail of each run's summary for docs/security.md (path from the env)."""
    path = os.environ.get("BMS_SCHEMATHESIS_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"role": role.value, "summary": summary[-2500:]}) + "\n")
