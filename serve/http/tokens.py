"""API tokens: issue, list and revoke (``ops`` only).

::

    GET    /api/v1/me              who the calling token speaks for (any role)
    POST   /api/v1/tokens          {"role", "subject", "ttl_s"?, "label"?}  -> the secret, once
    GET    /api/v1/tokens          every token's record (never a secret)
    DELETE /api/v1/tokens/{id}     revoke

``bms tokens create|list|revoke`` does the same from the command line, straight on
PostgreSQL (that is how the first ``ops`` token is made).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, ConfigDict, Field

from contracts.access import Principal, Role, TokenInfo
from serve.http.auth import AUTH_RESPONSES, RATE_LIMITED_RESPONSE, Allow, Ops, RateLimit
from serve.http.deps import Deps
from serve.http.errors import BAD_BODY_RESPONSE, ERROR_RESPONSES, invalid_parameter
from serve.http.response_model import ApiModel

__all__ = ["CreateTokenBody", "IssuedToken", "Me", "TokenOut", "TokensResponse", "router"]

router = APIRouter(tags=["tokens"], responses=AUTH_RESPONSES)

# Issuing tokens is rare; a stolen ops token minting thousands should be slowed down.
TokenIssuer = Annotated[
    Principal, Depends(Allow(Role.OPS, limit=RateLimit("token issue", per_minute=10, burst=5)))
]
Anyone = Annotated[Principal, Depends(Allow(*Role))]
TokenId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Token id")]

_DEFAULT_TTL_S = 30 * 24 * 3600.0


class CreateTokenBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Role
    subject: str = Field(
        min_length=1, max_length=200, pattern=r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
        description="Who holds it; for a technician token, the technician id",
    )
    ttl_s: float = Field(_DEFAULT_TTL_S, gt=0, le=366 * 24 * 3600, description="Lifetime, seconds")
    label: str = Field("", max_length=200, pattern=r"^[\x20-\x7e]*$")


class TokenOut(ApiModel):
    """A token's record (:class:`contracts.access.TokenInfo`); never its secret."""

    id: int
    role: Role
    subject: str
    label: str
    created_by: str
    created_at_s: float
    expires_at_s: float | None
    revoked_at_s: float | None
    state: str = Field(description="active, expired or revoked")

    @classmethod
    def of(cls, info: TokenInfo) -> TokenOut:
        return cls(
            **{k: getattr(info, k) for k in cls.model_fields if k != "state"},
            state=info.state_at(time.time()),
        )


class IssuedToken(TokenOut):
    token: str = Field(description="The secret: shown this once, stored only as a hash")


class TokensResponse(ApiModel):
    tokens: list[TokenOut]


class Me(ApiModel):
    """What the calling token stands for (the dashboard shows the views of its role)."""

    token_id: int
    role: Role
    subject: str


@router.get("/api/v1/me", response_model=Me)
async def me(who: Anyone) -> Me:
    """Who the calling token speaks for."""
    return Me(token_id=who.token_id, role=who.role, subject=who.subject)


@router.post(
    "/api/v1/tokens",
    response_model=IssuedToken,
    status_code=201,
    responses={**RATE_LIMITED_RESPONSE, **BAD_BODY_RESPONSE},
)
async def create_token(deps: Deps, who: TokenIssuer, body: CreateTokenBody) -> IssuedToken:
    """Issue a token; its secret is in this answer and nowhere else."""
    try:
        async with deps.stores.tokens() as tokens:
            secret, info = await tokens.create(
                body.role, body.subject, created_by=who.subject, ttl_s=body.ttl_s, label=body.label
            )
    except ValueError as err:
        raise invalid_parameter(("body",), str(err)) from None
    return IssuedToken(**TokenOut.of(info).model_dump(), token=secret)


@router.get("/api/v1/tokens", response_model=TokensResponse)
async def list_tokens(deps: Deps, who: Ops) -> TokensResponse:
    """Every token issued, active or not, oldest first."""
    async with deps.stores.tokens() as tokens:
        infos = await tokens.list()
    return TokensResponse(tokens=[TokenOut.of(i) for i in infos])


@router.delete(
    "/api/v1/tokens/{token_id}", response_model=TokenOut, responses={404: ERROR_RESPONSES[404]}
)
async def revoke_token(deps: Deps, who: Ops, token_id: TokenId) -> TokenOut:
    """Revoke a token at once (idempotent)."""
    try:
        async with deps.stores.tokens() as tokens:
            info = await tokens.revoke(token_id)
    except KeyError:
        raise HTTPException(404, f"No token with id {token_id}.") from None
    return TokenOut.of(info)
