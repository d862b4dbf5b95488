"""The what-if scenarios shipped with the package (``sim/scenarios/*.yaml``), by name.

They are package data (``[tool.setuptools.package-data]``), found beside this module: a
scenario may say ``base: baseline.yaml``, which :func:`sim.scenario.load_scenario` resolves
relative to the file, so the folder must be a real one on disk.
"""

from __future__ import annotations

import functools
from pathlib import Path

from sim.scenario import Scenario, ScenarioError, load_scenario

__all__ = ["BASELINE_PRESET", "PRESETS_DIR", "load_preset", "preset_names"]

#: Where the shipped scenarios are.
PRESETS_DIR = Path(__file__).resolve().parent / "scenarios"
#: The reference run every other preset is compared with.
BASELINE_PRESET = "baseline"


def preset_names() -> list[str]:
    """The shipped scenarios' names (file names without ``.yaml``), sorted."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(name: str) -> Scenario:
    """The shipped scenario ``name``, merged with its base and validated.

    Raises
    ------
    ScenarioError
        ``name`` is not a shipped scenario (the message lists them), or its file is invalid.
    """
    names = preset_names()
    if name not in names:
        raise ScenarioError(f"expected a preset among {names}, got {name!r}")
    return _load(name)


# Scenarios are frozen, and the shipped files do not change while the process runs.
@functools.cache
def _load(name: str) -> Scenario:
    return load_scenario(PRESETS_DIR / f"{name}.yaml")
