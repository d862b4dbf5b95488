"""The bottom floor: plain data records that cross a process, a store or a package boundary.

Every other package may import these; they import nothing of the project's (numpy and
pydantic only). One module per record family: ``telemetry`` (the MQTT contract) and
``samples`` (``TelemetryBatch``), ``anomaly_kinds``, ``candidates``, ``work_orders``,
``model_registry``, ``health``, ``weather``, ``ride_history``, ``scoring`` and ``errors``.
Import from the modules themselves.
"""
