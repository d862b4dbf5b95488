"""``bms bench shard-memory``: what a twin shard process costs before it holds any twin.

Starts one idle Ray actor per variant, has it import what a shard process of that kind
imports, and reads its proportional set size (PSS). The variants, side by side in one run:

* ``ray_worker``: a Ray worker that imports nothing of ours (the floor);
* ``shard_models_off``: a shard's actor module (``runtime.twins``: twins, store, contracts);
* ``shard_models_on``: the same plus the Serve model client (a scoring shard);
* ``shard_with_model_code``: the same plus the model code a shard loaded before the layers
  were enforced (torch via the degradation and anomaly modules), for comparison.

The per-twin cost comes from ``bms bench ingest`` (``shard_mb_per_twin``): PSS of full
shards minus empty ones. The last line printed is one JSON object.
"""

from __future__ import annotations

import importlib
import logging
import os
import time
from typing import TYPE_CHECKING, Any, cast

import psutil

if TYPE_CHECKING:
    from ray.actor import ActorHandle

__all__ = ["VARIANTS", "run_shard_memory_bench"]

VARIANTS: dict[str, tuple[str, ...]] = {
    "ray_worker": (),
    "shard_models_off": ("runtime.twins",),
    "shard_models_on": ("runtime.twins", "runtime.model_client"),
    "shard_with_model_code": ("runtime.twins", "runtime.model_client", "models.degradation_lstm", "models.anomaly"),
}


class _Probe:
    def load(self, modules: tuple[str, ...]) -> int:
        for m in modules:
            importlib.import_module(m)
        return os.getpid()


def run_shard_memory_bench(repeats: int = 3) -> dict[str, Any]:
    """PSS (MB) of each variant, median of ``repeats`` fresh processes."""
    import ray

    ray.init(
        num_cpus=2, include_dashboard=False, logging_level=logging.ERROR,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )  # fmt: skip
    try:
        out: dict[str, Any] = {"benchmark": "shard_memory", "repeats": repeats}
        for name, modules in VARIANTS.items():
            values: list[float] = []
            for _ in range(repeats):
                # Ray types ``.remote()`` as ``ActorHandle[T] | type[T]``; it is a handle.
                actor = cast("ActorHandle[Any]", ray.remote(num_cpus=0)(_Probe).remote())
                pid = cast(int, ray.get(actor.load.remote(modules)))
                time.sleep(0.5)  # let the worker settle after the imports
                values.append(psutil.Process(pid).memory_full_info().pss / 2**20)
                ray.kill(actor)
            values.sort()
            out[f"{name}_pss_mb"] = round(values[len(values) // 2], 1)
        return out
    finally:
        ray.shutdown()
