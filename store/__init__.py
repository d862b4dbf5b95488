"""Persistence: Postgres for telemetry, dead letters, checkpoints, the shard directory and
technician work orders; Redis for the latest twin states and the live dead-letter stream.

``store.work_order_store`` is not re-exported here: it needs the planner's work-order model
(and so OR-Tools), which the shards and the bridge should not load.
"""

from store.checkpoints import CheckpointStore
from store.dead_letters import DeadLetter, DeadLetterStore
from store.directory_store import DirectoryStore
from store.errors import MigrationError, StoreError, StoreUsageError
from store.migrate import apply_migrations, migration_versions
from store.postgres import open_postgres
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
    "migration_versions",
    "open_postgres",
]
