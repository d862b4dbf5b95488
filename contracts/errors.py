"""Exceptions of the :mod:`contracts` package: a record or a change that its contract refuses.

::

    ContractError                               a record or change the contracts do not allow
    ├── RegistryError                           the model registry refused or failed a request
    │   ├── UnknownModel (also LookupError)     no version of that model name is registered
    │   ├── UnknownModelVersion (LookupError)   that (name, version) pair is not registered
    │   ├── NoRollbackTarget                    no earlier production version to return to
    │   ├── InvalidServingChange                a promotion, A/B split or archive that the
    │   │                                       model's current serving state does not allow
    │   └── ArtifactError                       an artifact directory that cannot be registered
    └── WorkOrderError (also ValueError)        a change to a work order that is not allowed
        ├── InvalidTransition                   the state machine has no such edge
        └── SwapRecordError                     a swap record missing, forbidden, or not
                                                matching the order

    Unavailable                                 a backend or peer out of reach for now (not
                                                a ContractError: nothing was refused)

They live at the bottom because the store enforces them inside its transactions and the
edges map them to HTTP statuses, while the domain packages raise them.

Bad arguments (an empty actor, a fraction outside its range, a malformed model name,
non-finite metrics or features) raise plain ``ValueError`` before anything is written. Driver
errors (``psycopg.Error``) for a lost connection pass through unchanged, as in :mod:`store`.
"""

from __future__ import annotations

__all__ = [
    "ArtifactError",
    "ContractError",
    "InvalidServingChange",
    "InvalidTransition",
    "NoRollbackTarget",
    "RegistryError",
    "SwapRecordError",
    "Unavailable",
    "UnknownModel",
    "UnknownModelVersion",
    "WorkOrderError",
]


class ContractError(Exception):
    """Base class of every error raised by :mod:`contracts`."""


class RegistryError(ContractError):
    """Base class of the errors of the model registry (:mod:`models.registry` and its store)."""


class UnknownModel(RegistryError, LookupError):
    """No version of the named model has been registered."""


class UnknownModelVersion(RegistryError, LookupError):
    """The model has no version with that number."""


class NoRollbackTarget(RegistryError):
    """A rollback was asked for, but no earlier production version is left to return to."""


class InvalidServingChange(RegistryError):
    """A change to what Serve loads that the model's current serving state does not allow.

    For example: promoting the version that is already in production, starting an A/B split
    before any version is in production, or stopping a split that is not running.
    """


class ArtifactError(RegistryError):
    """An artifact directory that is missing, not a directory, or empty."""


class WorkOrderError(ContractError, ValueError):
    """A change to a work order that is not allowed."""


class InvalidTransition(WorkOrderError):
    """The state machine does not allow moving a work order between these two states."""


class SwapRecordError(WorkOrderError):
    """A swap record is missing, not allowed, or does not match its work order."""


class Unavailable(Exception):
    """A backend or a peer could not be reached now: the same request may succeed later.

    Raised where the difference matters to the caller: the bridge retries a batch that met
    an unavailable database or a restarting shard for as long as it takes (holding the
    messages unacknowledged, which is backpressure), while a batch that fails for any other
    reason counts towards its attempts and is dead-lettered as poison after the last one.
    """
