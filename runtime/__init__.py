"""All Ray wiring, in one place: actors, their names and options, handles, Serve deployments.

The domain packages (``twins``, ``models``, ``planners``, ``sim``), the stores and the edges
(``serve``) never import Ray; this package runs their plain classes as actors and Serve
deployments and injects what they call through their protocols (``runtime.twins.PlannerSink``
for ``twins.shard.UrgentSink``, ``runtime.model_client.ServeModelClient`` for
``twins.scoring.ModelClient``, ...). ``names`` and ``options`` hold every actor's name and
options; ``system`` starts and stops the whole system in order.

Nothing is re-exported here on purpose: a twin shard process imports ``runtime.twins`` and
must not load the model deployments (torch) or Serve with it. Import from the modules.
"""
