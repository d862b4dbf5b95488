"""Fleet zones: the square grid of :mod:`contracts.zones`, re-exported where twins code looks.

The grid lives in ``contracts`` because the simulator's demand zones (``sim``) and the
twins' zones must be the same cells: a what-if run feeds the twins zone forecasts by name.
"""

from __future__ import annotations

from contracts.zones import ZoneGrid

__all__ = ["ZoneGrid"]
