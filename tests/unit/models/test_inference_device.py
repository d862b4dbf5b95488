"""Tests for :mod:`models.inference_device`: where an LSTM family runs, chosen without a GPU."""

from __future__ import annotations

import logging

import pytest
import torch

from models.inference_device import LSTM_DTYPES, InferenceDevice, resolve


def test_default_is_cpu_float32() -> None:
    """Nothing asked for: the CPU in float32, the path every model ran on before."""
    device = InferenceDevice()
    assert (device.kind, device.dtype, device.is_default) == ("cpu", "float32", True)
    assert device.torch_device == torch.device("cpu") and device.torch_dtype == torch.float32
    assert device.describe() == "cpu float32"
    assert resolve(gpu=False) == device


def test_gpu_asked_for_without_cuda_falls_back_to_the_cpu(caplog: pytest.LogCaptureFixture) -> None:
    """A replica given a GPU that torch cannot see serves on the CPU, in the dtype asked for,
    and says so in a warning instead of failing to start."""
    with caplog.at_level(logging.WARNING, logger="models.inference_device"):
        device = resolve(gpu=True, dtype="bfloat16", cuda_available=lambda: False)
    assert device == InferenceDevice("cpu", "bfloat16")
    assert device.torch_dtype == torch.bfloat16 and not device.is_default
    assert "torch sees no CUDA device" in caplog.text


def test_this_cpu_build_of_torch_falls_back_too() -> None:
    """With the project's pinned CPU build of torch (no CUDA), the real check falls back."""
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    assert resolve(gpu=True).kind == "cpu"


def test_gpu_asked_for_and_present_gives_cuda() -> None:
    """A GPU asked for and seen: CUDA, in either dtype; none asked for: the CPU even with one."""
    for dtype in LSTM_DTYPES:
        assert resolve(gpu=True, dtype=dtype, cuda_available=lambda: True) == InferenceDevice(
            "cuda", dtype
        )
    assert resolve(gpu=False, cuda_available=lambda: True).kind == "cpu"


def test_bad_dtype_or_kind_is_rejected() -> None:
    """Only float32 and bfloat16, only cpu and cuda; the error names what arrived."""
    with pytest.raises(
        ValueError, match=r"Expected dtype in \['float32', 'bfloat16'\], got 'float16'"
    ):
        resolve(gpu=False, dtype="float16")
    with pytest.raises(ValueError, match="Expected kind 'cpu' or 'cuda', got 'mps'"):
        InferenceDevice("mps")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="got 'half'"):
        InferenceDevice("cpu", "half")  # type: ignore[arg-type]
