"""Models of the fleet: health, priority, anomaly, degradation and demand.

Each module holds one model family as plain numpy/torch/xgboost code with a batched
``predict`` over arrays, testable without Ray; :mod:`serve.model_deployments` wraps them as
Ray Serve deployments and :mod:`models.registry` keeps their versions.
"""
