"""Tests for :mod:`contracts.samples`: the columnar batch that travels from bridge to shard."""

from __future__ import annotations

import numpy as np
import pytest

from contracts.samples import SAMPLE_FIELDS, WINDOW_FIELDS, TelemetryBatch

from ..twins.factories import T0_S, make_batch, message


@pytest.fixture
def batch() -> TelemetryBatch:
    """Three messages of 2, 1 and 3 samples (bat-a seq 0, bat-b seq 0, bat-a seq 1)."""
    return make_batch(
        message(
            "bat-a",
            0,
            T0_S + np.array([0.0, 1.0]),
            vehicle_id="veh-a",
            soc_pct=[80.0, 79.0],
            received_at_s=10.0,
        ),
        message("bat-b", 0, [T0_S + 5.0], vehicle_id="veh-b", soc_pct=50.0, received_at_s=11.0),
        message(
            "bat-a",
            1,
            T0_S + np.array([2.0, 3.0, 4.0]),
            vehicle_id="veh-a",
            soc_pct=[78.0, 77.0, 76.0],
            received_at_s=12.0,
        ),
    )


def _columns(n: int) -> dict[str, np.ndarray]:
    return {k: np.zeros(n) for k in SAMPLE_FIELDS}


def test_field_lists() -> None:
    """The window keeps every sample field but ts, in wire order."""
    assert SAMPLE_FIELDS[0] == "ts"
    assert WINDOW_FIELDS == SAMPLE_FIELDS[1:]
    assert len(set(SAMPLE_FIELDS)) == len(SAMPLE_FIELDS) == 11


def test_counts_and_message_index(batch: TelemetryBatch) -> None:
    """n_messages, n_samples and the message number of every sample follow msg_offsets."""
    assert batch.n_messages == 3
    assert batch.n_samples == 6
    np.testing.assert_array_equal(batch.message_index(), [0, 0, 1, 2, 2, 2])


def test_message_index_with_an_empty_message() -> None:
    """A message without samples owns no entry of message_index()."""
    b = TelemetryBatch(
        ["a", "b", "c"], ["v", "v", "v"], np.arange(3), np.array([0, 1, 1, 3]), _columns(3)
    )
    np.testing.assert_array_equal(b.message_index(), [0, 2, 2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"vehicle_ids": ["v"]},
            r"Expected one vehicle_id and seq per message \(2\), got 1 vehicle ids and 2 seqs",
        ),
        ({"seqs": np.arange(3)}, r"got 2 vehicle ids and 3 seqs"),
        ({"msg_offsets": np.array([0, 3])}, r"Expected 3 msg_offsets, got 2"),
        (
            {"columns": {k: np.zeros(3) for k in SAMPLE_FIELDS if k != "temp_c"}},
            r"missing \['temp_c'\]",
        ),
        (
            {"columns": {**_columns(3), "soc_pct": np.zeros(2)}},
            r"Expected 3 values in column 'soc_pct'.*got 2",
        ),
    ],
)
def test_batch_validates_its_shape(kwargs: dict[str, object], match: str) -> None:
    """A batch whose lists, offsets or columns disagree is refused, saying which and by how much."""
    args: dict[str, object] = {
        "battery_ids": ["a", "b"],
        "vehicle_ids": ["v", "w"],
        "seqs": np.arange(2),
        "msg_offsets": np.array([0, 1, 3]),
        "columns": _columns(3),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        TelemetryBatch(**args)  # type: ignore[arg-type]


def test_select_messages_keeps_their_samples(batch: TelemetryBatch) -> None:
    """Selecting messages 0 and 2 keeps their 5 samples, seqs, ids and receive times."""
    sel = batch.select_messages(np.array([True, False, True]))
    assert list(sel.battery_ids) == ["bat-a", "bat-a"]
    np.testing.assert_array_equal(sel.seqs, [0, 1])
    np.testing.assert_array_equal(sel.msg_offsets, [0, 2, 5])
    np.testing.assert_array_equal(sel.columns["soc_pct"], [80.0, 79.0, 78.0, 77.0, 76.0])
    np.testing.assert_array_equal(sel.received_at_s, [10.0, 12.0])


def test_select_messages_none_and_all(batch: TelemetryBatch) -> None:
    """Keeping every message returns the batch itself; keeping none gives an empty batch."""
    assert batch.select_messages(np.ones(3, dtype=bool)) is batch
    none = batch.select_messages(np.zeros(3, dtype=bool))
    assert (none.n_messages, none.n_samples) == (0, 0)


def test_concat_preserves_order(batch: TelemetryBatch) -> None:
    """Concatenating splits of a batch rebuilds it: same messages, offsets and columns."""
    first = batch.select_messages(np.array([True, False, False]))
    rest = batch.select_messages(np.array([False, True, True]))
    joined = TelemetryBatch.concat([first, rest])
    assert list(joined.battery_ids) == list(batch.battery_ids)
    assert list(joined.vehicle_ids) == list(batch.vehicle_ids)
    np.testing.assert_array_equal(joined.seqs, batch.seqs)
    np.testing.assert_array_equal(joined.msg_offsets, batch.msg_offsets)
    for k in SAMPLE_FIELDS:
        np.testing.assert_array_equal(joined.columns[k], batch.columns[k], err_msg=k)
    np.testing.assert_array_equal(joined.received_at_s, batch.received_at_s)


def test_concat_of_one_and_of_none(batch: TelemetryBatch) -> None:
    """concat of one batch is that batch; of none, an empty batch."""
    assert TelemetryBatch.concat([batch]) is batch
    empty = TelemetryBatch.concat([])
    assert (empty.n_messages, empty.n_samples) == (0, 0)
    np.testing.assert_array_equal(empty.msg_offsets, [0])


def test_concat_with_empty_batches(batch: TelemetryBatch) -> None:
    """Empty batches in a concat add nothing."""
    joined = TelemetryBatch.concat([TelemetryBatch.empty(), batch, TelemetryBatch.empty()])
    np.testing.assert_array_equal(joined.msg_offsets, batch.msg_offsets)
    assert joined.n_samples == 6


def test_empty_batch() -> None:
    """empty() has no messages, no samples, and every column."""
    e = TelemetryBatch.empty()
    assert (e.n_messages, e.n_samples) == (0, 0)
    assert set(e.columns) == set(SAMPLE_FIELDS)
    assert e.message_index().size == 0


def test_received_at_must_have_one_entry_per_message() -> None:
    """received_at_s holds one time per message (or none); any other length is refused."""
    with pytest.raises(ValueError, match="received_at_s"):
        TelemetryBatch(
            ["a"], ["v"], np.arange(1), np.array([0, 1]), _columns(1), received_at_s=np.zeros(5)
        )


def test_concat_of_batches_with_and_without_receive_times(batch: TelemetryBatch) -> None:
    """A batch without receive times joined to one with them still selects per message."""
    bare = TelemetryBatch(["bat-c"], ["veh-c"], np.arange(1), np.array([0, 1]), _columns(1))
    joined = TelemetryBatch.concat([bare, batch])
    last = joined.select_messages(np.array([False, False, False, True]))
    assert list(last.battery_ids) == ["bat-a"]
    np.testing.assert_array_equal(last.received_at_s, [12.0])
