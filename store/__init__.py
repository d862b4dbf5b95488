"""Persistence: Postgres for telemetry, dead letters, checkpoints, the shard directory,
technician work orders and the planner's plans; Redis for the latest twin states and the
live dead-letter stream.

The stores depend on :mod:`contracts` only, never on the domain packages (an import-linter
contract). Stores that share a connection take turns on it (:func:`connection_turn`), so
one store's statement never lands inside another's transaction. The model registry, health
history, demand cache, work-order and plan stores are imported from their modules.
"""

from store.checkpoints import CheckpointStore
from store.dead_letters import DeadLetter, DeadLetterStore
from store.directory_store import DirectoryStore
from store.errors import MigrationError, StoreError, StoreUsageError
from store.migrate import apply_migrations, migration_versions
from store.postgres import connection_lock, connection_turn, open_postgres
from store.telemetry_store import HISTORY_COLUMNS, TelemetryStore
from store.twin_state import TwinStateCache

__all__ = [
    "HISTORY_COLUMNS",
    "CheckpointStore",
    "DeadLetter",
    "DeadLetterStore",
    "DirectoryStore",
    "MigrationError",
    "StoreError",
    "StoreUsageError",
    "TelemetryStore",
    "TwinStateCache",
    "apply_migrations",
    "connection_lock",
    "connection_turn",
    "migration_versions",
    "open_postgres",
]
