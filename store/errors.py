"""Exceptions raised by the persistence layer.

::

    StoreError                  anything the store could not do
    ├── MigrationError          a migration file failed to apply (names the file)
    └── StoreUsageError         a connection or client in a state the store cannot use

Driver errors (``psycopg.Error``, ``redis.RedisError``) for a lost connection or a failed
statement pass through unchanged: callers already handle them by reconnecting.
"""

from __future__ import annotations

__all__ = ["MigrationError", "StoreError", "StoreUsageError"]


class StoreError(Exception):
    """Base class of every error raised by :mod:`store`."""


class MigrationError(StoreError):
    """A versioned SQL migration that did not apply; nothing of it was committed."""


class StoreUsageError(StoreError):
    """A connection or client handed to the store in a state it cannot work with."""
