"""The base of every response model of the HTTP API."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["ApiModel"]


class ApiModel(BaseModel):
    """A response body: unknown fields are an error, and NaN or infinity is written as null.

    Twins hold NaN for "not known yet" (no capacity estimate, no model score), and JSON has
    no NaN: the dashboard and clients get ``null`` instead of an unparseable document.
    """

    model_config = ConfigDict(extra="forbid", ser_json_inf_nan="null")
