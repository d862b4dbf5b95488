"""Ray's cluster ports refuse a caller without the cluster's token.

Ray's gRPC servers listen on every interface, whatever address the node has; the cluster
token (``RAY_AUTH_MODE=token``, on by default and kept on by :func:`runtime.system.init_ray`)
is what stops a stranger on the network from running code on it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
from ray._raylet import AuthenticationMode, get_authentication_mode

pytestmark = pytest.mark.integration

_CONNECT = "import ray; ray.init(address={addr!r}, logging_level='ERROR'); print('CONNECTED'); ray.shutdown()"


def _try_connect(addr: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CONNECT.format(addr=addr)], env=env, capture_output=True, text=True, timeout=120
    )


def test_the_session_cluster_requires_its_token(ray_session: None, tmp_path: Path) -> None:
    assert get_authentication_mode() == AuthenticationMode.TOKEN
    addr = ray.get_runtime_context().gcs_address
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # With the token (this user's ~/.ray/auth_token): the control, so the refusal below is
    # about the token and not about reaching the port.
    ok = _try_connect(addr, {**base, "RAY_AUTH_MODE": "token"})
    assert "CONNECTED" in ok.stdout, ok.stderr[-2000:]
    # A wrong token, and no token file (another user's home): refused.
    stranger = {**base, "HOME": str(tmp_path), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}
    refused = _try_connect(addr, stranger)
    assert refused.returncode != 0 and "CONNECTED" not in refused.stdout
    assert "token-auth" in refused.stderr or "uthentication" in refused.stderr, refused.stderr[-2000:]


_START = """
from runtime.system import RayOptions, init_ray, shutdown_ray
from ray._raylet import AuthenticationMode, get_authentication_mode
init_ray(RayOptions(address=None, num_cpus=1, object_store_memory_mb=80, dashboard_port=8265,
                    namespace="auth-check", include_dashboard=False))
print("MODE", get_authentication_mode() == AuthenticationMode.TOKEN)
shutdown_ray()
"""


def test_a_cluster_started_by_init_ray_uses_tokens(tmp_path: Path) -> None:
    """What `bms run` does: a local cluster started through init_ray, with RAY_AUTH_MODE
    unset, runs in token mode (and starts at all)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    out = subprocess.run([sys.executable, "-c", _START], env=env, capture_output=True, text=True, timeout=180)
    assert "MODE True" in out.stdout, (out.stdout + out.stderr)[-3000:]
