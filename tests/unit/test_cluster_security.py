"""The cluster configs keep Ray's token on, the dashboard on 127.0.0.1 and no secret in them."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from contracts.redaction import redact_text

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = [ROOT / "cluster.yaml", ROOT / "deploy" / "cluster-onprem.yaml"]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_ray_starts_with_token_auth_and_a_local_dashboard(path: Path) -> None:
    config = yaml.safe_load(path.read_text())
    starts = [
        c for key in ("head_start_ray_commands", "worker_start_ray_commands")
        for c in config[key] if "ray start" in c
    ]  # fmt: skip
    assert len(starts) == 2 and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in starts)
    head = next(c for c in config["head_start_ray_commands"] if "ray start" in c)
    assert "--dashboard-host=127.0.0.1" in head


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_no_secret_in_the_cluster_file(path: Path) -> None:
    text = path.read_text()
    assert redact_text(text) == text, f"a URL with a password or a password= is in {path.name}"
    assert not re.search(r"(?i)(token|password|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text)
