"""The architecture holds: layers run one way, domain code runs without Ray, shards stay lean.

The import contracts in ``pyproject.toml`` ([tool.importlinter]) are the architecture's
documentation; these tests run them and check, in fresh interpreters, what importing a
package actually loads (a lazy import inside a function would pass the static check).
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOMAIN = ("contracts", "twins", "models", "planners", "alerts", "sim", "store", "serve")
MODEL_FRAMEWORKS = ("torch", "xgboost", "sklearn", "matplotlib")


def _loaded_after(code: str) -> set[str]:
    """Top-level module names in ``sys.modules`` after running ``code`` in a new interpreter."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _modules(package: str) -> list[str]:
    path = ROOT / package
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules([str(path)])]


def test_import_contracts_are_kept() -> None:
    """Every import-linter contract of pyproject.toml holds (what ``make lint`` runs)."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"], cwd=ROOT, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]


@pytest.mark.parametrize("package", DOMAIN)
def test_domain_store_and_edges_import_without_ray(package: str) -> None:
    """Importing every module of a package below runtime/ loads no Ray at all."""
    loaded = _loaded_after("\n".join(f"import {m}" for m in _modules(package)))
    assert "ray" not in loaded, f"{package} pulls in ray"


def test_shard_process_imports_no_model_framework() -> None:
    """What a twin shard process imports (its actor module) loads no torch, xgboost,
    scikit-learn or matplotlib, and, with the models off, not Serve either."""
    loaded = _loaded_after("import runtime.twins, twins.shard, twins.scoring, twins.features")
    assert not loaded & set(MODEL_FRAMEWORKS), sorted(loaded & set(MODEL_FRAMEWORKS))
    assert "fastapi" not in loaded and "pandas" not in loaded


def test_scoring_shard_imports_no_model_framework() -> None:
    """A shard that scores (models on) adds the Serve client, still without model code."""
    loaded = _loaded_after("import runtime.twins, runtime.model_client")
    assert not loaded & set(MODEL_FRAMEWORKS), sorted(loaded & set(MODEL_FRAMEWORKS))
