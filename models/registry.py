"""The model registry: versioned artifact directories on disk, their records in Postgres.

Layout under the artifacts root::

    <artifacts_root>/<name>/v<version>/...        one directory per registered version
    <artifacts_root>/<name>/.staging-<random>/    a copy in progress (removed on failure)

The record (:class:`store.model_registry_store.ModelRegistryStore`) keeps the path relative
to the root, so the same registry can be read where the root is mounted elsewhere.
Promotion, rollback and A/B splits do not touch files; use :attr:`ModelRegistry.store`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, SupportsFloat

import numpy as np

from contracts.errors import ArtifactError
from contracts.model_registry import ModelVersion, ServingConfig, check_actor, check_model_name

__all__ = ["POLL_INTERVAL_S", "ModelRegistry", "RegistryRecords", "data_fingerprint"]

#: How often a model server re-reads what the registry says to serve: promotions, rollbacks
#: and A/B changes reach every replica within this long, with no restart.
POLL_INTERVAL_S = 2.0


class RegistryRecords(Protocol):
    """The records side of the registry (:class:`store.model_registry_store.ModelRegistryStore`).

    A protocol, so the model code never imports the store: the composition root hands in the
    PostgreSQL store, tests may hand in anything with these methods.
    """

    async def register(
        self,
        name: str,
        metrics: Mapping[str, SupportsFloat],
        params: Mapping[str, Any],
        data_fingerprint: str,
        artifact_path: str | Callable[[int], str],
        actor: str,
        *,
        before_commit: Callable[[ModelVersion], Awaitable[None]] | None = None,
    ) -> ModelVersion: ...

    async def get(self, name: str, version: int) -> ModelVersion: ...

    async def serving_or_none(self, name: str) -> ServingConfig | None: ...

    async def promote(self, name: str, version: int, actor: str) -> ServingConfig: ...


def data_fingerprint(*arrays: np.ndarray) -> str:
    """A stable SHA-256 hex digest of the arrays a model was trained on.

    The hash covers, per array and in order, its dtype (with byte order, e.g. ``<f8``), its
    shape and its bytes in C order; the same data therefore gives the same fingerprint in
    every process and on every run, and a change of any value, the dtype, the shape or the
    order of the arrays gives another.

    Parameters
    ----------
    *arrays
        At least one numeric (or other fixed-size dtype) array.

    Raises
    ------
    ValueError
        No arrays, or an object-dtype array (its bytes are pointers, not data).
    """
    if not arrays:
        raise ValueError("Expected at least one array to fingerprint, got none.")
    digest = hashlib.sha256()
    digest.update(f"arrays={len(arrays)};".encode())
    for i, array in enumerate(arrays):
        array = np.asarray(array)
        if array.dtype.hasobject:
            raise ValueError(
                f"Expected arrays of a fixed-size dtype, got dtype object for array {i}; "
                "convert it (e.g. to str or float) first."
            )
        # The header makes (dtype, shape) part of the hash and separates arrays, so that
        # splitting the same bytes differently between arrays changes the fingerprint.
        digest.update(f"{array.dtype.str};{array.shape};{array.nbytes};".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _copy_tree(source: Path, staging: Path) -> None:
    # Blocking; runs in a worker thread. fsync every file so that, after the rename makes the
    # version visible, a power cut cannot leave it with truncated files.
    shutil.copytree(source, staging, symlinks=False)
    for path in staging.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ModelRegistry:
    """Registers a model's artifact directory as a new version, and finds it again.

    :meth:`register` copies the directory into a hidden staging directory, then, inside the
    store's transaction and under the model's lock, renames it to ``v<version>``. A crash
    during the copy leaves only a staging directory (no record, no version directory); a
    version is committed only once its directory is complete and in place.

    Parameters
    ----------
    store
        The Postgres side of the registry.
    artifacts_root
        Directory holding every model's versions; created when missing.
    """

    def __init__(self, store: RegistryRecords, artifacts_root: Path) -> None:
        self._store = store
        self._root = Path(artifacts_root)

    @property
    def store(self) -> RegistryRecords:
        """The store, for promotion, rollback, A/B splits and the audit trail."""
        return self._store

    @property
    def artifacts_root(self) -> Path:
        """Directory holding every model's versions."""
        return self._root

    async def register(
        self,
        name: str,
        source_dir: Path,
        metrics: Mapping[str, SupportsFloat],
        params: Mapping[str, Any],
        data_fingerprint: str,
        actor: str,
    ) -> ModelVersion:
        """Copy ``source_dir`` in as the next version of ``name`` and record it as a candidate.

        Parameters
        ----------
        name
            The model, e.g. ``"health_xgb"``.
        source_dir
            A non-empty directory with everything needed to load the model.
        metrics
            Offline evaluation metrics; finite real numbers (numpy scalars are converted).
        params
            Hyper-parameters, any JSON object.
        data_fingerprint
            :func:`data_fingerprint` of the training data.
        actor
            Who registers it.

        Returns
        -------
        ModelVersion
            The new version; its files lie in :meth:`artifact_dir`.

        Raises
        ------
        ArtifactError
            ``source_dir`` is missing, not a directory, or empty.
        """
        check_model_name(name)
        check_actor(actor)
        source = Path(source_dir)
        if not source.is_dir():
            raise ArtifactError(f"Expected an artifact directory, got {source} (not a directory).")
        if not any(source.iterdir()):
            raise ArtifactError(f"Expected an artifact directory with files, got empty {source}.")
        model_dir = self._root / name
        await asyncio.to_thread(model_dir.mkdir, parents=True, exist_ok=True)
        staging = model_dir / f".staging-{uuid.uuid4().hex}"
        try:
            await asyncio.to_thread(_copy_tree, source, staging)

            async def place(version: ModelVersion) -> None:
                final = self._root / version.artifact_path
                await asyncio.to_thread(self._move_into_place, staging, final)

            return await self._store.register(
                name,
                metrics,
                params,
                data_fingerprint,
                lambda version: f"{name}/v{version}",
                actor,
                before_commit=place,
            )
        finally:
            # Gone after a successful rename; otherwise the copy is abandoned.
            if staging.exists():
                await asyncio.to_thread(shutil.rmtree, staging, True)

    async def artifact_dir(self, name: str, version: int) -> Path:
        """The directory holding the files of ``version`` of ``name``.

        Raises
        ------
        UnknownModelVersion
            ``name`` has no version ``version``.
        ArtifactError
            The version is registered but its directory is gone from this root.
        """
        registered = await self._store.get(name, version)
        path = self._root / registered.artifact_path
        if not await asyncio.to_thread(path.is_dir):
            raise ArtifactError(
                f"Expected the files of {name} v{version} in {path}, but no such directory "
                f"exists under artifacts root {self._root}."
            )
        return path

    @staticmethod
    def _move_into_place(staging: Path, final: Path) -> None:
        # Runs under the model's lock with no record yet for this version, so a directory
        # already there is an orphan of a registration that crashed after its rename but
        # before its commit: nothing refers to it, and it is replaced.
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        _fsync_dir(final.parent)
