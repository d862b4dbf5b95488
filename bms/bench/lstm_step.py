"""``bms bench lstm-step``: one batched LSTM step over N twin states, per device and float type.

What a scoring tick asks of the degradation replica is one LSTM step per twin whose step is
due (the twin keeps ``h`` and ``c``), then the remaining-life bands read off the new state.
For each twin count, each device (the CPU, and CUDA when torch sees one) and each float type
(``float32``, ``bfloat16``), after ``warmup`` untimed runs, ``repeats`` timed runs of:

* **cell**: an ``nn.LSTMCell`` of the degradation LSTM's shape (inputs x hidden) on inputs
  and state already on the device, in that float type: the kernel alone, what the issue's
  GPU probe timed;
* **step**: :meth:`DegradationLSTM.step <models.degradation_lstm.DegradationLSTM.step>` as
  a replica runs it (numpy float32 in, to the device once, the LSTM, the float32 head,
  numpy out), the model placed with ``on_device``.

Each is reported as median, min and max milliseconds, with twin states per second at the
median. Accuracy of ``bfloat16`` against ``float32`` on the same device and the same seeded
inputs: the max and mean absolute error of the new ``h`` and ``c`` over all N twins; of the
drop quantiles (SOH) and of the remaining life to 80 % and 70 % SOH (p10/p50/p90, cycles,
through the served predictor) on the first ``accuracy_twins`` twins; and the same after
``chain_steps`` steps chained on those twins, each float type carrying its own state, as a
twin does over its life (rounding compounds there, if anywhere).

The model is trained from scratch on the quick training plan (seeded: 100 optimiser steps,
about 5 s) unless ``model_dir`` names a saved one. Inputs are :func:`cycle_inputs` of seeded
fleet-like measurements; the state is what three float32 steps from zero leave. CPU runs use
one torch thread, as a replica does. The last line printed is one JSON object.
"""

from __future__ import annotations

import functools
import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import numpy.typing as npt

from models.degradation_lstm import DegradationLSTM, DegradationParams
from models.inference_device import LSTM_DTYPES, InferenceDevice, LstmDtype
from models.predictors import PREDICTORS
from twins.cycle_inputs import cycle_inputs

__all__ = ["LstmStepBenchParams", "fleet_step_inputs", "run_lstm_step_bench"]

Arrays = dict[str, npt.NDArray[Any]]
T = TypeVar("T")


@dataclass(frozen=True)
class LstmStepBenchParams:
    """What ``bms bench lstm-step`` measures.

    Parameters
    ----------
    twins
        Twin counts, each one batched step.
    devices
        ``"cpu"`` and/or ``"cuda"``; empty: the CPU, plus CUDA when torch sees it.
    dtypes
        Float types, among :data:`models.inference_device.LSTM_DTYPES`; ``float32`` is the
        reference of the accuracy figures, so it is always run first.
    repeats, warmup
        Timed and untimed runs of each measurement.
    accuracy_twins
        Twins (the first ones) whose remaining life is compared, and which are chained.
    chain_steps
        Steps chained for the compounded error (0: none).
    seed
        Seeds the inputs, the cell's weights and the training.
    train_steps
        Optimiser steps of the model trained from scratch (ignored with ``model_dir``).
    model_dir
        A saved degradation model to use instead.
    """

    twins: tuple[int, ...] = (1_000_000,)
    devices: tuple[str, ...] = ()
    dtypes: tuple[str, ...] = LSTM_DTYPES
    repeats: int = 5
    warmup: int = 1
    accuracy_twins: int = 100_000
    chain_steps: int = 30
    seed: int = 0
    train_steps: int = 100
    model_dir: Path | None = field(default=None)

    def __post_init__(self) -> None:
        if not self.twins or any(n < 1 for n in self.twins):
            raise ValueError(f"Expected one or more twin counts >= 1, got {list(self.twins)}.")
        bad = [d for d in self.devices if d not in ("cpu", "cuda")]
        if bad:
            raise ValueError(f"Expected devices among ['cpu', 'cuda'], got {bad}.")
        bad = [d for d in self.dtypes if d not in LSTM_DTYPES]
        if bad or not self.dtypes:
            raise ValueError(
                f"Expected one or more dtypes among {list(LSTM_DTYPES)}, got {list(self.dtypes)}."
            )
        for name, low in (
            ("repeats", 1),
            ("warmup", 0),
            ("accuracy_twins", 1),
            ("chain_steps", 0),
            ("train_steps", 1),
        ):
            if getattr(self, name) < low:
                raise ValueError(f"Expected {name} >= {low}, got {getattr(self, name)}.")


def fleet_step_inputs(n: int, rng: np.random.Generator) -> tuple[npt.NDArray[np.float32], Arrays]:
    """Seeded, fleet-like inputs of one step of n twins: ``x`` and the SOH and cycle stepped on.

    Cycles lived from 30 to 2,500 (log-uniform), each step 3 to 15 % of them after the last
    one, SOH fading with age in a random shape, and a smoothed slope anywhere between flat
    and fast fade.
    """
    cycle = np.exp(rng.uniform(np.log(30.0), np.log(2500.0), n))
    advance = rng.uniform(0.03, 0.15, n)
    soh = 1.02 - 0.3 * (cycle / 2500.0) ** rng.uniform(0.5, 2.0, n) + rng.normal(0.0, 0.003, n)
    prev_soh = soh + rng.uniform(-0.003, 0.01, n)
    first_soh = rng.uniform(0.98, 1.05, n)
    prev_slope = rng.uniform(-3.0, 0.2, n)
    x = cycle_inputs(soh, cycle, prev_soh, cycle * (1.0 - advance), first_soh, prev_slope)
    return x, {"soh": soh, "cycle": cycle}


def _stats_ms(times_s: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(times_s) * 1e3, 3),
        "min": round(min(times_s) * 1e3, 3),
        "max": round(max(times_s) * 1e3, 3),
    }


def _timed(
    fn: Callable[[], T], device: InferenceDevice, repeats: int, warmup: int
) -> tuple[list[float], T]:
    for _ in range(warmup):
        fn()
        device.synchronize()
    times: list[float] = []
    out: T | None = None
    for _ in range(repeats):
        out = None  # the previous result's memory is free for this run
        gc.collect()
        device.synchronize()
        t0 = time.perf_counter()
        out = fn()
        device.synchronize()
        times.append(time.perf_counter() - t0)
    assert out is not None  # repeats >= 1
    return times, out


def _errors(ref: npt.NDArray[Any], got: npt.NDArray[Any]) -> dict[str, float]:
    diff = np.abs(np.asarray(got, dtype=np.float64) - np.asarray(ref, dtype=np.float64))
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean())}


def _rul_errors(ref: Arrays, got: Arrays) -> dict[str, Any]:
    """Error of each remaining-life column (cycles), over the rows finite in both."""
    out: dict[str, Any] = {}
    for key in sorted(ref):
        if not key.startswith("rul"):
            continue
        a, b = np.asarray(ref[key], dtype=np.float64), np.asarray(got[key], dtype=np.float64)
        both = np.isfinite(a) & np.isfinite(b)
        diff = np.abs(a[both] - b[both])
        rel = diff / np.maximum(np.abs(a[both]), 1.0)
        out[key.removesuffix("_cycles")] = {
            "mean_abs_cycles": round(float(diff.mean()), 4) if diff.size else None,
            "p99_abs_cycles": round(float(np.quantile(diff, 0.99)), 3) if diff.size else None,
            "max_abs_cycles": round(float(diff.max()), 3) if diff.size else None,
            "median_rel": float(np.median(rel)) if rel.size else None,
            "p99_rel": float(np.quantile(rel, 0.99)) if rel.size else None,
            "finite_mismatch": int(np.sum(np.isfinite(a) != np.isfinite(b))),
        }
    return out


def _model(params: LstmStepBenchParams) -> tuple[DegradationLSTM, str]:
    if params.model_dir is not None:
        return DegradationLSTM.load(params.model_dir), str(params.model_dir)
    from models.degradation_lstm import train
    from models.training import TrainingPlan, degradation_training_cells

    plan = TrainingPlan.quick(seed=params.seed)
    model = train(
        degradation_training_cells(plan),
        DegradationParams(train_steps=params.train_steps),
        seed=params.seed,
    )
    return (
        model,
        f"trained from scratch: quick plan, {params.train_steps} steps, seed {params.seed}",
    )


def _start_state(
    model: DegradationLSTM, n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], ...]:
    # What three float32 steps from zero leave: a state in the range a live twin holds.
    h, c = model.initial_state(n)
    for _ in range(3):
        x, _ = fleet_step_inputs(n, rng)
        _, h, c = model.step(x, h, c)
    return h, c


def _cell_ms(
    model: DegradationLSTM, x: npt.NDArray[np.float32], h: npt.NDArray[np.float32], c: npt.NDArray[np.float32],
    device: InferenceDevice, params: LstmStepBenchParams,
) -> list[float]:  # fmt: skip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        cell = torch.nn.LSTMCell(model.n_inputs, model.hidden_size).to(
            device.torch_device, device.torch_dtype
        )
    xs, hs, cs = (
        torch.from_numpy(a).to(device.torch_device).to(device.torch_dtype) for a in (x, h, c)
    )
    with torch.inference_mode():
        times, _ = _timed(lambda: cell(xs, (hs, cs)), device, params.repeats, params.warmup)
    return times


def _predict(model: DegradationLSTM, x: npt.NDArray[np.float32], h: npt.NDArray[np.float32],
             c: npt.NDArray[np.float32], at: Arrays) -> Arrays:  # fmt: skip
    return PREDICTORS["degradation"].predict(model, {"x": x, "h": h, "c": c, **at})


def _chained(
    models: dict[str, DegradationLSTM], h: npt.NDArray[np.float32], c: npt.NDArray[np.float32],
    steps: int, seed: int,
) -> dict[str, Arrays]:  # fmt: skip
    """Each float type's served outputs after ``steps`` steps (the last one served) on the same inputs."""
    rng = np.random.default_rng(seed + 2)
    inputs = [fleet_step_inputs(h.shape[0], rng) for _ in range(steps)]
    out: dict[str, Arrays] = {}
    for dtype, model in models.items():
        hs, cs = h, c
        for x, _ in inputs[:-1]:
            _, hs, cs = model.step(x, hs, cs)
        x, at = inputs[-1]
        out[dtype] = _predict(model, x, hs, cs, at)
    return out


def _accuracy(
    ref: tuple[Any, ...], got: tuple[Any, ...], models: dict[str, DegradationLSTM],
    inputs: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.float32], Arrays],
    params: LstmStepBenchParams, dtype: str,
) -> dict[str, Any]:  # fmt: skip
    (drops_ref, h_ref, c_ref), (drops_got, h_got, c_got) = ref, got
    x, h, c, at = inputs
    k = min(params.accuracy_twins, x.shape[0])
    sub = {key: v[:k] for key, v in at.items()}
    served = {d: _predict(models[d], x[:k], h[:k], c[:k], sub) for d in ("float32", dtype)}
    result: dict[str, Any] = {
        "h": _errors(h_ref, h_got), "c": _errors(c_ref, c_got),
        "drop_quantiles": _errors(drops_ref, drops_got),
        "rul_twins": k, "rul": _rul_errors(served["float32"], served[dtype]),
    }  # fmt: skip
    if params.chain_steps > 0:
        chained = _chained(
            {d: models[d] for d in ("float32", dtype)},
            h[:k],
            c[:k],
            params.chain_steps,
            params.seed,
        )
        a, b = chained["float32"], chained[dtype]
        result["chained"] = {
            "steps": params.chain_steps, "twins": k, "h": _errors(a["h"], b["h"]), "c": _errors(a["c"], b["c"]),
            "rul": _rul_errors(a, b),
        }  # fmt: skip
    return result


def _devices(params: LstmStepBenchParams) -> list[str]:
    import torch

    if params.devices:
        if "cuda" in params.devices and not torch.cuda.is_available():
            raise ValueError(
                "Expected a CUDA device for --devices cuda, but torch sees none (the CPU build of torch?)."
            )
        return list(params.devices)
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def run_lstm_step_bench(params: LstmStepBenchParams) -> dict[str, Any]:
    """Run the benchmark; see the module docstring. Returns the JSON-ready result."""
    import torch

    devices = _devices(params)
    # Checked by the params; float32 first, the reference of the accuracy figures.
    dtypes = [
        cast(LstmDtype, d) for d in ("float32", *(d for d in params.dtypes if d != "float32"))
    ]
    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # a replica's setting (runtime.model_deployments)
    try:
        started = time.perf_counter()
        model, source = _model(params)
        train_s = time.perf_counter() - started
        result: dict[str, Any] = {
            "benchmark": "lstm_step",
            "model": {"hidden_size": model.hidden_size, "n_inputs": model.n_inputs, "source": source,
                      "train_s": round(train_s, 1)},
            "torch": torch.__version__,
            "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "cpu_threads": 1, "repeats": params.repeats, "warmup": params.warmup, "seed": params.seed,
            "runs": [], "accuracy": [],
        }  # fmt: skip
        for n in params.twins:
            rng = np.random.default_rng(params.seed)
            h, c = _start_state(model, n, rng)
            x, at = fleet_step_inputs(n, rng)
            for kind in devices:
                placed: dict[str, DegradationLSTM] = {
                    d: model.on_device(InferenceDevice("cuda" if kind == "cuda" else "cpu", d))
                    for d in dtypes
                }
                outputs: dict[str, tuple[Any, ...]] = {}
                for dtype in dtypes:
                    device = placed[dtype].device
                    cell = _cell_ms(model, x, h, c, device, params)
                    step, last = _timed(
                        functools.partial(placed[dtype].step, x, h, c),
                        device,
                        params.repeats,
                        params.warmup,
                    )
                    # Keep the new state of every twin, and the (large, float64) drop
                    # quantiles of the twins whose remaining life is compared.
                    out, h_new, c_new = last
                    outputs[dtype] = (
                        out.drop_quantiles[: params.accuracy_twins].copy(),
                        h_new,
                        c_new,
                    )
                    del last, out, h_new, c_new
                    result["runs"].append({
                        "twins": n, "device": device.describe(), "dtype": dtype,
                        "cell_ms": _stats_ms(cell), "step_ms": _stats_ms(step),
                        "cell_twins_per_s": round(n / statistics.median(cell)),
                        "step_twins_per_s": round(n / statistics.median(step)),
                    })  # fmt: skip
                for dtype in dtypes[1:]:
                    result["accuracy"].append({
                        "twins": n, "device": kind, "dtype": dtype, "against": "float32",
                        **_accuracy(outputs["float32"], outputs[dtype], placed, (x, h, c, at), params, dtype),
                    })  # fmt: skip
                del outputs, placed
                gc.collect()
                if kind == "cuda":
                    torch.cuda.empty_cache()
            del h, c, x, at
            gc.collect()
        result["seconds"] = round(time.perf_counter() - started, 1)
        return result
    finally:
        torch.set_num_threads(threads_before)
