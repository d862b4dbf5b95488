"""The fleet simulator: scooters, their batteries and the telemetry they publish.

``FleetSimulator`` advances a whole fleet with numpy and returns the MQTT messages that
are due; ``run_fleet`` drives it in real time and publishes through ``FleetPublisher``.
"""

from sim.ambient import AmbientProfile
from sim.battery_model import PackArray, PackParams, ocv_cell_v
from sim.demand import DemandProfile
from sim.fleet import FleetSimulator, SwapEvent
from sim.fleet_params import FleetParams
from sim.publisher import (
    ClientFactory,
    FleetPublisher,
    FleetRunSummary,
    PublishClient,
    parse_mqtt_url,
    run_fleet,
)
from sim.telemetry_encoder import SAMPLE_COLUMNS, encode_messages
from sim.traction import TractionParams

__all__ = [
    "SAMPLE_COLUMNS",
    "AmbientProfile",
    "ClientFactory",
    "DemandProfile",
    "FleetParams",
    "FleetPublisher",
    "FleetRunSummary",
    "FleetSimulator",
    "PackArray",
    "PackParams",
    "PublishClient",
    "SwapEvent",
    "TractionParams",
    "encode_messages",
    "ocv_cell_v",
    "parse_mqtt_url",
    "run_fleet",
]
