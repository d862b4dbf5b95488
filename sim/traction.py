"""Road load of a ridden e-scooter: the electrical power its pack must deliver."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["TractionParams"]

FloatArray = npt.NDArray[np.float64]
_G_M_S2 = 9.81


@dataclass(frozen=True)
class TractionParams:
    """Vehicle and rider constants for the road-load equation.

    Parameters
    ----------
    mass_kg
        Scooter plus rider.
    rolling_coeff
        Rolling-resistance coefficient of small solid or pneumatic tyres on asphalt.
    drag_area_m2
        Drag coefficient times frontal area of an upright rider.
    air_density_kg_m3
        Air density.
    drivetrain_efficiency
        Battery-to-wheel efficiency of controller and hub motor while driving.
    regen_efficiency
        Wheel-to-battery efficiency while braking; hub motors recover little.
    motor_max_w, regen_max_w
        Electrical power limits of the controller, driving and braking.
    auxiliary_w
        Controller, lights and the telematics unit while riding.
    """

    mass_kg: float = 100.0
    rolling_coeff: float = 0.012
    drag_area_m2: float = 0.55
    air_density_kg_m3: float = 1.2
    drivetrain_efficiency: float = 0.80
    regen_efficiency: float = 0.30
    motor_max_w: float = 700.0
    regen_max_w: float = 150.0
    auxiliary_w: float = 8.0

    def __post_init__(self) -> None:
        for name in ("mass_kg", "drag_area_m2", "air_density_kg_m3", "motor_max_w"):
            if not getattr(self, name) > 0.0:
                raise ValueError(f"Expected {name} > 0, got {getattr(self, name)}.")
        for name in ("rolling_coeff", "regen_max_w", "auxiliary_w"):
            if getattr(self, name) < 0.0:
                raise ValueError(f"Expected {name} >= 0, got {getattr(self, name)}.")
        if not 0.0 < self.drivetrain_efficiency <= 1.0:
            raise ValueError(
                f"Expected drivetrain_efficiency in (0, 1], got {self.drivetrain_efficiency}."
            )
        if not 0.0 <= self.regen_efficiency <= 1.0:
            raise ValueError(f"Expected regen_efficiency in [0, 1], got {self.regen_efficiency}.")

    def battery_power_w(self, speed_m_s: FloatArray, accel_m_s2: FloatArray) -> FloatArray:
        """Electrical power drawn from the pack (negative: regenerative braking).

        Parameters
        ----------
        speed_m_s
            Vehicle speed.
        accel_m_s2
            Longitudinal acceleration over the last interval (negative while braking).
        """
        wheel_w = speed_m_s * (
            self.mass_kg * (self.rolling_coeff * _G_M_S2 + accel_m_s2)
            + 0.5 * self.air_density_kg_m3 * self.drag_area_m2 * speed_m_s * speed_m_s
        )
        electric_w = np.where(
            wheel_w >= 0.0,
            wheel_w / self.drivetrain_efficiency,
            wheel_w * self.regen_efficiency,
        )
        return np.clip(electric_w, -self.regen_max_w, self.motor_max_w) + self.auxiliary_w
