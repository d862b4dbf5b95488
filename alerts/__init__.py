"""Alerts and notifications: the alert book (lifecycle, hysteresis, dedup, silences,
inhibition), the rules that turn operations figures into signals, the plain-asyncio alert
manager, and outgoing notifications (signed webhooks, vendor tickets).

Sits beside ``models`` and ``planners``: it sees the contracts (signals, alert records,
work orders), never the twins, models, planner or simulator. Import from the modules.
"""
