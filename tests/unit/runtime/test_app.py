"""Tests for :mod:`runtime.app`: what the typed builder gives each model deployment (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from models.predictors import GPU_FAMILIES, PREDICTORS
from runtime.app import AppArgs, build_app
from runtime.model_deployments import ModelServerArgs


def _model_deployments(args: AppArgs) -> dict[str, Any]:
    """The model deployments bound into the app, by family.

    Serve has no public reader of a bound application: the ingress's ``_bound_deployment``
    holds its init args, the second of which maps each family to its bound deployment.
    """
    ingress = build_app(args)._bound_deployment
    return {name: app._bound_deployment for name, app in ingress.init_args[1].items()}


def _args(**changes: Any) -> AppArgs:
    return AppArgs(
        postgres_url="postgresql://127.0.0.1/x", redis_url="redis://127.0.0.1:6379/0",
        models=list(PREDICTORS), artifacts_root="/tmp/artifacts", **changes,
    )  # fmt: skip


def test_lstm_families_are_the_degradation_and_demand_models() -> None:
    """Only the two LSTM forecasters can be given a GPU."""
    assert set(GPU_FAMILIES) == {"degradation", "demand"}


def test_by_default_no_deployment_asks_for_a_gpu() -> None:
    """Default args: every model replica takes no CPU and no GPU and runs in float32."""
    for name, d in _model_deployments(_args()).items():
        assert d.ray_actor_options == {"num_cpus": 0}, name
        server_args: ModelServerArgs = d.init_args[0]
        assert (server_args.name, server_args.gpu, server_args.dtype) == (name, False, "float32")


def test_lstm_deployments_get_the_gpus_and_dtype_the_others_do_not() -> None:
    """lstm_num_gpus and lstm_dtype reach the degradation and demand replicas only: their actor
    options ask Ray for the GPU share and their args say run on it, in bfloat16."""
    deployments = _model_deployments(_args(lstm_num_gpus=0.5, lstm_dtype="bfloat16"))
    assert set(deployments) == set(PREDICTORS)
    for name, d in deployments.items():
        server_args: ModelServerArgs = d.init_args[0]
        if name in GPU_FAMILIES:
            assert d.ray_actor_options == {"num_cpus": 0, "num_gpus": 0.5}, name
            assert (server_args.gpu, server_args.dtype) == (True, "bfloat16")
        else:
            assert d.ray_actor_options == {"num_cpus": 0}, name
            assert (server_args.gpu, server_args.dtype) == (False, "float32")
        assert d.name == f"model-{name}"


def test_dtype_without_gpus_stays_on_the_cpu() -> None:
    """bfloat16 without GPUs: the LSTM replicas run bfloat16 on the CPU and ask Ray for no GPU."""
    deployments = _model_deployments(_args(lstm_dtype="bfloat16"))
    d = deployments["degradation"]
    assert d.ray_actor_options == {"num_cpus": 0}
    assert (d.init_args[0].gpu, d.init_args[0].dtype) == (False, "bfloat16")


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"lstm_num_gpus": -1}, "greater than or equal to 0"),
        ({"lstm_num_gpus": 2}, "less than or equal to 1"),
        ({"lstm_dtype": "float16"}, "'float32' or 'bfloat16'"),
    ],
)
def test_bad_gpu_args_are_rejected(changes: dict[str, Any], fragment: str) -> None:
    """GPUs per replica in [0, 1] and a known dtype, or the builder's args do not validate."""
    with pytest.raises(ValidationError, match=fragment):
        _args(**changes)
