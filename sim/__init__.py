"""The fleet simulator: vehicles, packs, trips and swaps; pack ageing, weather and ride demand.

``sim.fleet.FleetSimulator`` advances a whole fleet with numpy and returns the MQTT messages
that are due; ``sim.publisher.run_fleet`` drives it in real time and publishes through
``FleetPublisher``. The model code trains on ``sim.ageing`` (pack ageing over years),
``sim.ride_demand`` (rides per zone and hour) and ``sim.weather``.

Nothing is re-exported here on purpose: a model module that needs one small part (the
demand profile, say) must not load the whole simulator and its MQTT publisher. Import from
the modules themselves.
"""
