"""The table of docs/reliability.md from the fault tests' JSON lines.

``python -m tests.faults.report FILE`` prints one Markdown row per fault recorded in FILE
(``BMS_FAULT_REPORT``, which ``make faults`` sets), in the order the tests ran.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["table"]

_HEADER = (
    "| fault | published samples | accepted (in history) | lost | applied twice | recovery (s) | notes |\n"
    "| --- | ---: | ---: | ---: | ---: | ---: | --- |"
)
#: Extra figures worth a note, with how to say them.
_NOTES = {
    "replayed_samples": "{} samples replayed after the restart",
    "api_reads_during_outage": "{} API reads served during the outage, all 200",
    "open_orders": "{} open work orders, none duplicated",
    "capacity_sps": "ingested {} samples/s under the overload (its capacity)",
    "offered_over_capacity": "offered {}x capacity",
    "backlog_samples_max": "backlog up to {} samples (held by the broker)",
    "ingest_private_mb_mid": "bridge + shards private memory {} MB half-way",
    "ingest_private_mb_end": "{} MB at the end",
    "bridge_inflight_max": "at most {} batches in flight",
    "start_s": "start took {} s",
    "stop_s": "clean stop took {} s",
    "processes_killed": "{} processes killed at once",
    "publisher_reconnects": "publishers reconnected {} times",
    "shards_moved": "{} shards moved to the surviving node, restored from checkpoint + replay",
}


def _cell(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        return "n/a"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(rows: list[dict[str, Any]]) -> str:
    lines = [_HEADER]
    for r in rows:
        notes = "; ".join(text.format(r[k]) for k, text in _NOTES.items() if r.get(k) is not None)
        lines.append(
            f"| {r['fault']} | {_cell(r, 'published_samples')} | {_cell(r, 'in_history_samples')} | "
            f"{_cell(r, 'lost_samples')} | {_cell(r, 'applied_twice')} | {_cell(r, 'recovery_s')} | {notes} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m tests.faults.report FILE.jsonl", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[0]).read_text().splitlines() if line.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
