"""The table of docs/reliability.md, rendered from the fault tests' JSON lines."""

from __future__ import annotations

from tests.faults.report import table


def test_one_row_per_fault_with_its_figures_and_notes() -> None:
    rows = [
        {"fault": "bridge worker killed (SIGKILL)", "published_samples": 5540, "in_history_samples": 5540,
         "lost_samples": 0, "applied_twice": 0, "recovery_s": 3.28},
        {"fault": "whole system stopped with SIGTERM and started again", "recovery_s": 111.7, "start_s": 60.2},
    ]  # fmt: skip
    lines = table(rows).splitlines()
    assert lines[0].startswith("| fault | published samples")
    assert lines[2] == "| bridge worker killed (SIGKILL) | 5,540 | 5,540 | 0 | 0 | 3.28 |  |"
    assert lines[3].endswith("| n/a | n/a | n/a | n/a | 111.7 | start took 60.2 s |")
