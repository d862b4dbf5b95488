"""cluster.yaml keeps Ray's token on, its dashboard on 127.0.0.1 and no secret in it."""

from __future__ import annotations

import re
from pathlib import Path

from contracts.redaction import redact_text

ROOT = Path(__file__).resolve().parents[2]


def test_ray_starts_with_token_auth_and_a_local_dashboard() -> None:
    # Read as lines: the file's ${...} placeholders are filled in by the deployer (issue 16
    # makes it a valid, rendered config).
    ray_starts = [ln for ln in (ROOT / "cluster.yaml").read_text().splitlines() if "ray start" in ln and not ln.lstrip().startswith("#")]
    assert ray_starts and all("RAY_AUTH_MODE=token" in c and "RAY_AUTH_TOKEN_PATH=" in c for c in ray_starts)
    head = next(c for c in ray_starts if "--head" in c)
    assert "--dashboard-host=127.0.0.1" in head


def test_no_secret_in_the_cluster_file() -> None:
    text = (ROOT / "cluster.yaml").read_text()
    assert redact_text(text) == text, "a URL with a password or a password= is in cluster.yaml"
    assert not re.search(r"(?i)(token|password|secret)\s*[:=]\s*['\"]?[A-Za-z0-9+/_-]{16,}", text)
