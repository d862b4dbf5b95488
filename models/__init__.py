"""Models of the fleet: health, priority, anomaly, degradation and demand.

Each module holds one model family or concept as plain numpy/torch/xgboost code with a
batched ``predict`` over arrays, testable without Ray; :mod:`runtime.model_deployments` wraps
them as Ray Serve deployments and :mod:`models.registry` keeps their versions.

Nothing is re-exported here on purpose: :mod:`store` imports :mod:`contracts.model_registry`,
and re-exporting the torch / xgboost modules from this package would load them into every
process that only stores rows. Import from the modules themselves.
"""
