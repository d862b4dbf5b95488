"""The saved form of a simulated fleet: a numpy ``.npz`` of its arrays and one JSON record.

:meth:`FleetSimulator.snapshot <sim.fleet.FleetSimulator.snapshot>` gathers the state and
:meth:`~sim.fleet.FleetSimulator.restore` puts it back; this module owns the format:

- every state array is one ``.npz`` member, stored uncompressed (:func:`numpy.savez`) and
  read back with ``allow_pickle=False``: the file sits in a data directory that others may
  write to, so it carries numbers only, never objects to unpickle (that is, code to run);
- the member ``meta.json`` (UTF-8 JSON as a ``uint8`` array) holds the format tag and
  version, the :class:`~sim.fleet_params.FleetParams` the fleet was made with (as plain
  JSON), the random generator's state and the scalars (the clock, the swap count).

A snapshot loads only into a fleet with equal params (:func:`params_differences` names what
changed; the fault settings may differ), with exactly the expected members (some optional:
state added since version 1, which older snapshots lack), shapes and dtypes, and no member larger than
its expected size (checked before anything is read, so a doctored file cannot make the
reader inflate gigabytes). :func:`write_snapshot_file` replaces a file atomically, so a crash
while saving leaves the previous snapshot or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from sim.fleet_params import FAULT_FIELDS, FleetParams

__all__ = [
    "FORMAT",
    "VERSION",
    "FleetSnapshotError",
    "decode_snapshot",
    "encode_snapshot",
    "params_differences",
    "params_record",
    "write_snapshot_file",
]

#: The format tag in ``meta.json``; anything else is not a fleet snapshot.
FORMAT = "bms-fleet-snapshot"
#: Bumped when the members or their meaning change; older snapshots are refused. (New state
#: that older snapshots can do without is an optional member instead: see
#: :func:`decode_snapshot`.)
VERSION = 1

_META = "meta.json"
# Room for the .npy header of a member beyond its data, and for meta.json's JSON (the
# params, the generator state and two scalars: well under 8 KiB).
_HEADER_SLACK_BYTES = 4096
_MAX_META_BYTES = 64 * 1024

Array = npt.NDArray[Any]
#: The expected shape and dtype of each state array, by member name.
Layout = Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]]


class FleetSnapshotError(ValueError):
    """A fleet snapshot that cannot be restored: not a snapshot, damaged, of another format
    version, or made with other :class:`~sim.fleet_params.FleetParams`."""


def params_record(params: FleetParams) -> dict[str, Any]:
    """``params`` as plain JSON data (nested dicts; tuples become lists)."""
    record: dict[str, Any] = json.loads(json.dumps(dataclasses.asdict(params)))
    return record


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> dict[str, Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value
    return out


def params_differences(saved: Any, params: FleetParams) -> list[str]:
    """What differs between a saved params record and ``params``, one ``name: saved -> now``
    per field (dotted names for the nested models: ``pack.rated_capacity_ah``); empty when
    they are equal.

    The fault settings (:data:`~sim.fleet_params.FAULT_FIELDS`) are left out: they shape
    what goes wrong from now on, not the state saved, so a fleet resumes under new ones
    (and a record from before they existed, without them, still matches)."""
    old = _flatten(saved, "", {}) if isinstance(saved, dict) else {"params": saved}
    new = _flatten(params_record(params), "", {})
    missing = object()
    return [
        f"{name}: {old.get(name, '<absent>')!r} -> {new.get(name, '<absent>')!r}"
        for name in sorted((old.keys() | new.keys()) - FAULT_FIELDS)
        if old.get(name, missing) != new.get(name, missing)
    ]


def encode_snapshot(meta: Mapping[str, Any], arrays: Mapping[str, Array]) -> bytes:
    """The ``.npz`` bytes of ``arrays`` plus ``meta`` (JSON; the format tag and version are
    added here)."""
    if _META in arrays:
        raise ValueError(f"Expected no state array named {_META!r}, the name of the JSON record.")
    record = {"format": FORMAT, "version": VERSION, **meta}
    blob = json.dumps(record, allow_nan=False, separators=(",", ":")).encode()
    buf = io.BytesIO()
    members: dict[str, Any] = {_META: np.frombuffer(blob, dtype=np.uint8), **arrays}
    np.savez(buf, **members)
    return buf.getvalue()


def _member(name: str) -> str:
    return f"{name}.npy"


def decode_snapshot(
    data: bytes, params: FleetParams, layout: Layout, *, optional: Collection[str] = ()
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Check and read snapshot bytes made by :func:`encode_snapshot`.

    Parameters
    ----------
    data
        The snapshot.
    params
        The params of the fleet to restore into: the snapshot must have been made with
        equal ones.
    layout
        Every state array the snapshot must hold, with its shape and dtype (those of a
        fleet made with ``params``).
    optional
        Names in ``layout`` a snapshot may lack (state added after older snapshots were
        written); when present they are checked like the rest.

    Returns
    -------
    (dict, dict)
        The JSON record and the arrays by name (without the optional ones it lacks).

    Raises
    ------
    FleetSnapshotError
        Not a snapshot, a damaged or doctored one, another format version, other params
        (the message lists the differences), or arrays of another shape or dtype.
    """
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            sizes = {info.filename: info.file_size for info in zf.infolist()}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise FleetSnapshotError(
            f"Expected a fleet snapshot (a numpy .npz archive), got {len(data)} bytes that are "
            f"not one: {err}"
        ) from None
    expected = {_member(_META), *(_member(n) for n in layout if n not in optional)}
    allowed = {_member(_META), *(_member(n) for n in layout)}
    if not expected <= set(sizes) <= allowed:
        missing, extra = sorted(expected - set(sizes)), sorted(set(sizes) - allowed)
        raise FleetSnapshotError(
            f"Expected a fleet snapshot with the members of format {FORMAT} v{VERSION}, got "
            f"one missing {missing or 'none'} and with unexpected {extra or 'none'}."
        )
    limits = {_member(_META): _MAX_META_BYTES}
    for name, (shape, dtype) in layout.items():
        limits[_member(name)] = (
            int(np.prod(shape, dtype=np.int64)) * dtype.itemsize + _HEADER_SLACK_BYTES
        )
    too_big = sorted(m for m, size in sizes.items() if size > limits[m])
    if too_big:
        raise FleetSnapshotError(
            f"Expected each snapshot member within its size for {params.vehicles} vehicles, got "
            f"oversized {too_big}."
        )
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            blob = npz[_META]
            arrays = {name: npz[name] for name in layout if _member(name) in sizes}
        meta = json.loads(blob.astype(np.uint8).tobytes().decode())
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, UnicodeDecodeError) as err:
        raise FleetSnapshotError(
            f"Expected a readable fleet snapshot, got a damaged one: {err}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise FleetSnapshotError(
            f"Expected a record with format {FORMAT!r}, got "
            f"{meta.get('format') if isinstance(meta, dict) else type(meta).__name__!r}."
        )
    if meta.get("version") != VERSION:
        raise FleetSnapshotError(
            f"Expected a fleet snapshot of format version {VERSION}, got version "
            f"{meta.get('version')!r}."
        )
    differences = params_differences(meta.get("params"), params)
    if differences:
        raise FleetSnapshotError(
            f"Expected a fleet snapshot made with the same fleet params, got one whose params "
            f"differ (saved -> now): {'; '.join(differences)}."
        )
    for name, arr in arrays.items():
        shape, dtype = layout[name]
        if arr.shape != shape or arr.dtype != dtype:
            raise FleetSnapshotError(
                f"Expected state array {name!r} of shape {shape} and dtype {dtype}, got "
                f"{arr.shape} and {arr.dtype}."
            )
    return meta, arrays


def write_snapshot_file(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: a temporary file in the same directory,
    flushed to disk, then renamed over it (the directory is created if missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
