"""Where and in which float type an LSTM model runs its batched inference: one small choice.

A Serve replica of an LSTM family (``degradation``, ``demand``) may be given a GPU
(``[models] num_gpus``) and a dtype (``[models] lstm_dtype``). :func:`resolve` turns that into
an :class:`InferenceDevice`: CUDA when the replica asked for a GPU *and* torch sees one, else
the CPU, so a replica never fails to start because a GPU is missing (it logs a warning and
serves on the CPU). The models take the result in ``on_device`` and move their weights once;
every batch moves its inputs to the device once and returns float32/float64 numpy.

``bfloat16`` casts the LSTM weights (not autocast: the cast happens once, and the kernels
are the same on CPU and GPU); the small output heads stay float32, so what leaves the model
differs from float32 only by the rounding inside the LSTM (``bms bench lstm-step`` measures it).

This module imports torch only inside the functions that need it, so the settings can name
the dtypes without loading torch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, get_args

if TYPE_CHECKING:
    import torch

__all__ = ["LSTM_DTYPES", "InferenceDevice", "LstmDtype", "resolve"]

log = logging.getLogger(__name__)

#: Float types an LSTM family may run in.
LstmDtype = Literal["float32", "bfloat16"]
LSTM_DTYPES: tuple[str, ...] = get_args(LstmDtype)


@dataclass(frozen=True)
class InferenceDevice:
    """A device and a float type for a model's inference.

    Parameters
    ----------
    kind
        ``"cpu"`` or ``"cuda"`` (the replica's one visible GPU).
    dtype
        Float type of the LSTM weights and of its inputs and state on the device.
    """

    kind: Literal["cpu", "cuda"] = "cpu"
    dtype: LstmDtype = "float32"

    def __post_init__(self) -> None:
        if self.kind not in ("cpu", "cuda"):
            raise ValueError(f"Expected kind 'cpu' or 'cuda', got {self.kind!r}.")
        if self.dtype not in LSTM_DTYPES:
            raise ValueError(f"Expected dtype in {list(LSTM_DTYPES)}, got {self.dtype!r}.")

    @property
    def is_default(self) -> bool:
        """CPU in float32: what a model runs on when nobody asked for more."""
        return self.kind == "cpu" and self.dtype == "float32"

    @property
    def torch_device(self) -> torch.device:
        """The :class:`torch.device`."""
        import torch

        return torch.device(self.kind)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The :class:`torch.dtype` of the LSTM weights, inputs and state."""
        import torch

        return torch.bfloat16 if self.dtype == "bfloat16" else torch.float32

    def synchronize(self) -> None:
        """Wait for the device's queued kernels (for timing; a no-op on the CPU)."""
        if self.kind == "cuda":
            import torch

            torch.cuda.synchronize()

    def describe(self) -> str:
        """``"cuda:0 bfloat16 (NVIDIA H100 ...)"`` or ``"cpu float32"``, for logs and benchmarks."""
        if self.kind == "cuda":
            import torch

            return (
                f"cuda:{torch.cuda.current_device()} {self.dtype} ({torch.cuda.get_device_name()})"
            )
        return f"cpu {self.dtype}"


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def resolve(
    gpu: bool, dtype: str = "float32", cuda_available: Callable[[], bool] = _cuda_available
) -> InferenceDevice:
    """The device a model runs on: CUDA when a GPU was asked for and is there, else the CPU.

    Parameters
    ----------
    gpu
        The replica was given a GPU (``num_gpus > 0``).
    dtype
        One of :data:`LSTM_DTYPES`; kept on the CPU fallback too.
    cuda_available
        Whether torch sees a CUDA device (a seam for tests).

    Raises
    ------
    ValueError
        For a dtype outside :data:`LSTM_DTYPES`.
    """
    if dtype not in LSTM_DTYPES:
        raise ValueError(f"Expected dtype in {list(LSTM_DTYPES)}, got {dtype!r}.")
    chosen: LstmDtype = "bfloat16" if dtype == "bfloat16" else "float32"
    if gpu and cuda_available():
        return InferenceDevice("cuda", chosen)
    if gpu:
        # Degraded but valid: the replica still serves, on the CPU (e.g. the CPU build of
        # torch on a GPU node; README, "GPU").
        log.warning(
            "A GPU was asked for, but torch sees no CUDA device: running on the CPU (%s).", chosen
        )
    return InferenceDevice("cpu", chosen)
