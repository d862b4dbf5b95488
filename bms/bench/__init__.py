"""Benchmarks: `bms bench ...` (each prints one JSON object as its last line)."""
