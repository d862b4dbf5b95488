"""Who may call the API: roles, the principal a token stands for, and token secrets.

A token is ``bms_`` followed by 43 URL-safe base64 characters (256 random bits). Only its
SHA-256 is stored: a 256-bit secret cannot be guessed, so a slow password hash (argon2)
would buy nothing and cost every request a few milliseconds. The hash is also the lookup
key, so checking a token never compares secrets byte by byte in Python.

Roles (see ``docs/security.md`` for the route table):

``fleet_manager``  all fleet data, planning, work orders
``technician``     their own route and their own work orders (subject = technician id)
``customer``       vehicle availability only, no battery internals
``ops``            models and A/B, system stats, dead letters, tokens
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
import secrets
from dataclasses import dataclass

__all__ = [
    "TOKEN_PREFIX",
    "Principal",
    "Role",
    "TokenInfo",
    "TokenRejected",
    "hash_token",
    "looks_like_token",
    "new_token",
]

TOKEN_PREFIX = "bms_"
_SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"bms_[A-Za-z0-9_-]{43}")


class Role(enum.StrEnum):
    FLEET_MANAGER = "fleet_manager"
    TECHNICIAN = "technician"
    CUSTOMER = "customer"
    OPS = "ops"


@dataclass(frozen=True)
class Principal:
    """Who a request speaks for: the token's role and subject.

    ``subject`` names the person or system (a technician's id for ``technician`` tokens);
    every change the request makes is attributed to it.
    """

    token_id: int
    role: Role
    subject: str

    def __post_init__(self) -> None:
        if not self.subject:
            raise ValueError("Expected a non-empty subject, got ''.")


@dataclass(frozen=True)
class TokenInfo:
    """A token's record, without its secret (which is never stored)."""

    id: int
    role: Role
    subject: str
    label: str
    created_at_s: float
    expires_at_s: float | None
    revoked_at_s: float | None
    created_by: str

    def state_at(self, now_s: float) -> str:
        """``active``, ``expired`` or ``revoked``."""
        if self.revoked_at_s is not None:
            return "revoked"
        if self.expires_at_s is not None and self.expires_at_s <= now_s:
            return "expired"
        return "active"


class TokenRejected(LookupError):
    """The token is unknown, expired or revoked; the message says which, never the secret."""


def new_token() -> str:
    """A fresh token: ``bms_`` and 256 random bits, URL-safe base64 without padding."""
    raw = secrets.token_bytes(_SECRET_BYTES)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def looks_like_token(value: str) -> bool:
    """True when ``value`` has a token's shape (cheap check before any lookup)."""
    return _TOKEN_RE.fullmatch(value) is not None


def hash_token(token: str) -> bytes:
    """The stored form of ``token``: its SHA-256 digest."""
    return hashlib.sha256(token.encode("ascii")).digest()
