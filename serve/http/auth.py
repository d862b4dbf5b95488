"""Who is calling: bearer tokens, roles per route, per-token rate limits, body size limits.

Every route but ``/healthz`` and the dashboard's static page takes a ``Principal`` from
:class:`Allow`, which reads ``Authorization: Bearer <token>``, looks the token up
(:class:`serve.http.deps.TokenAdmin`) and checks its role:

* 401 (with ``WWW-Authenticate: Bearer``) when the header is missing or malformed, or the
  token is unknown, expired or revoked;
* 403 when the token's role may not use the route. Checks on the object (a technician
  reading another technician's order) are made by the route itself with :func:`forbid`.

The roles a route allows are declared once, on the route, and :func:`route_roles` reads
them back from the app, so ``docs/security.md`` and the tests list exactly what the code
enforces.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.access import Principal, Role, TokenRejected, hash_token, looks_like_token
from serve.http.deps import Deps
from serve.http.errors import ErrorBody

__all__ = [
    "AUTH_RESPONSES",
    "RATE_LIMITED_RESPONSE",
    "Allow",
    "BodySizeLimit",
    "FieldStaff",
    "FleetManager",
    "Operators",
    "Ops",
    "RateLimit",
    "RateLimiter",
    "Riders",
    "TokenCache",
    "forbid",
    "route_roles",
]

# auto_error=False: a missing header is our 401 with our body, not FastAPI's 403.
_bearer = HTTPBearer(auto_error=False, description="An API token: `bms tokens create`")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bms"'}


def _unauthorized(why: str) -> HTTPException:
    return HTTPException(401, why, headers=_CHALLENGE)


def forbid(principal: Principal, what: str) -> HTTPException:
    """A 403 saying what ``principal`` may not do (raise it)."""
    return HTTPException(
        403, f"Forbidden: a {principal.role.value} token for {principal.subject!r} may not {what}."
    )


class Allow:
    """Route dependency: the caller's :class:`Principal`, if its role is one of ``roles``.

    Parameters
    ----------
    roles
        The roles that may use the route.
    limit
        A per-token rate limit for the route (expensive routes), checked after the token.

    >>> # async def route(who: Annotated[Principal, Depends(Allow(Role.OPS))]) -> ...
    """

    def __init__(self, *roles: Role, limit: RateLimit | None = None) -> None:
        if not roles:
            raise ValueError("Expected at least one role, got none.")
        self.roles: tuple[Role, ...] = tuple(dict.fromkeys(roles))
        self.limit = limit

    def __repr__(self) -> str:
        return f"Allow({', '.join(r.value for r in self.roles)})"

    async def __call__(
        self,
        request: Request,
        deps: Deps,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        if credentials is None:
            raise _unauthorized(
                "Expected an 'Authorization: Bearer <token>' header, got none (or another scheme)."
            )
        token = credentials.credentials.strip()
        if not looks_like_token(token):
            raise _unauthorized("Expected a bms_ token of 47 characters, got a malformed one.")
        try:
            async with deps.stores.tokens() as tokens:
                principal = await tokens.authenticate(token)
        except TokenRejected as err:
            raise _unauthorized(f"Token refused: {err}.") from None
        if principal.role not in self.roles:
            allowed = ", ".join(r.value for r in self.roles)
            raise HTTPException(
                403,
                f"Forbidden: this route is for {allowed}; the token's role is "
                f"{principal.role.value}.",
            )
        if self.limit is not None:
            self.limit.check(request.app.state.rate_limiter, principal)
        return principal


#: ``responses=`` entries every authenticated route can answer with.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing, malformed, unknown, expired or revoked token"},
    403: {"model": ErrorBody, "description": "The token's role or subject may not do this"},
}


def route_roles(app: FastAPI) -> dict[tuple[str, str], tuple[str, ...]]:
    """``(method, path) -> roles`` for every route of ``app``; ``("public",)`` when open."""
    table: dict[tuple[str, str], tuple[str, ...]] = {}
    _walk(app.routes, (), table)
    return table


def _walk(routes: Iterable[Any], inherited: tuple[Role, ...], table: dict[tuple[str, str], tuple[str, ...]]) -> None:
    for route in routes:
        # FastAPI >= 0.160 keeps an included router whole (its dependencies apply at
        # request time); older versions copy its routes into the app.
        router = getattr(route, "original_router", None)
        if router is not None:
            _walk(router.routes, _declared(router.dependencies) or inherited, table)
            continue
        if not isinstance(route, APIRoute):
            continue
        roles = _roles_of(route.dependant.dependencies) or _declared(route.dependencies) or inherited
        for method in sorted(route.methods or ()):
            if method != "HEAD":
                table[(method, route.path)] = tuple(r.value for r in roles) if roles else ("public",)


def _declared(params: Iterable[Any]) -> tuple[Role, ...]:
    for param in params:
        if isinstance(param.dependency, Allow):
            return param.dependency.roles
    return ()


def _roles_of(dependants: Iterable[Any]) -> tuple[Role, ...]:
    for dep in dependants:
        if isinstance(dep.call, Allow):
            return dep.call.roles
        found = _roles_of(dep.dependencies)
        if found:
            return found
    return ()


# ---------------------------------------------------------------------- rate limits
@dataclass
class _Bucket:
    tokens: float
    at_s: float


@dataclass
class RateLimiter:
    """Token buckets per (token, route class), in this process.

    Each HTTP replica keeps its own buckets, so with ``R`` replicas a caller gets up to
    ``R`` times the limit; the point is to stop one token from flooding an expensive
    route, not to meter it exactly.

    Parameters
    ----------
    clock
        Seconds, monotonic (tests pass a fake).
    """

    clock: Callable[[], float] = time.monotonic
    _buckets: dict[tuple[int, str], _Bucket] = field(default_factory=dict)

    def take(self, key: tuple[int, str], per_minute: int, burst: int) -> float:
        """Take one request from the bucket; 0.0 if allowed, else seconds until allowed."""
        now = self.clock()
        rate = per_minute / 60.0
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(burst), now)
        bucket.tokens = min(float(burst), bucket.tokens + (now - bucket.at_s) * rate)
        bucket.at_s = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


class RateLimit:
    """A per-token limit on a route class (given to :class:`Allow`): 429 with ``Retry-After`` when the caller's token is over its limit.

    Parameters
    ----------
    name
        The route class (routes that share a name share a bucket).
    per_minute, burst
        Sustained rate and how many may come at once.
    """

    def __init__(self, name: str, per_minute: int, burst: int) -> None:
        if per_minute < 1 or burst < 1:
            raise ValueError(f"Expected per_minute >= 1 and burst >= 1, got {per_minute} and {burst}.")
        self.name, self.per_minute, self.burst = name, per_minute, burst

    def check(self, limiter: RateLimiter, principal: Principal) -> None:
        """Raise a 429 when ``principal``'s token is over the limit."""
        wait_s = limiter.take((principal.token_id, self.name), self.per_minute, self.burst)
        if wait_s > 0:
            retry_after = max(1, math.ceil(wait_s))
            raise HTTPException(
                429,
                f"Too many {self.name} requests for this token: at most {self.per_minute} a "
                f"minute ({self.burst} at once); retry in {retry_after} s.",
                headers={"Retry-After": str(retry_after)},
            )


#: ``responses=`` entry of a rate-limited route.
RATE_LIMITED_RESPONSE: dict[int | str, dict[str, Any]] = {
    429: {"model": ErrorBody, "description": "Over this token's rate limit; see Retry-After"},
}


# ---------------------------------------------------------------------- token cache
class TokenCache:
    """Who recently authenticated tokens stand for, remembered for ``ttl_s`` seconds.

    Looking a token up costs a PostgreSQL round trip, more than a read from the snapshot
    itself; the runtime's token store (:class:`runtime.api_deps.PostgresStores`) asks this
    cache first. Entries are keyed by the token's SHA-256 (no secret is kept) and never
    outlive ``ttl_s``, so a token revoked or expired elsewhere (``bms tokens revoke``,
    another replica) is refused within ``ttl_s``; one revoked through this replica is
    forgotten at once (:meth:`forget`). Refusals are not cached: a bad token costs a lookup
    every time, as before.

    Parameters
    ----------
    ttl_s
        How long a principal is trusted without asking the store again.
    max_entries
        Bound on remembered tokens (the oldest go first).
    clock
        Seconds, monotonic (tests pass a fake).
    """

    def __init__(
        self, ttl_s: float = 5.0, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if not ttl_s > 0 or max_entries < 1:
            raise ValueError(f"Expected ttl_s > 0 and max_entries >= 1, got {ttl_s} and {max_entries}.")
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: dict[bytes, tuple[Principal, float]] = {}

    def get(self, token: str) -> Principal | None:
        """The principal ``token`` stood for less than ``ttl_s`` ago, else ``None``."""
        key = hash_token(token)
        hit = self._entries.get(key)
        if hit is None:
            return None
        principal, until = hit
        if self.clock() >= until:
            del self._entries[key]
            return None
        return principal

    def put(self, token: str, principal: Principal) -> None:
        """Remember what the store answered for ``token``."""
        if len(self._entries) >= self.max_entries:
            self._entries.pop(next(iter(self._entries)))
        self._entries[hash_token(token)] = (principal, self.clock() + self.ttl_s)

    def forget(self, token_id: int) -> None:
        """Drop the token with id ``token_id`` (it was just revoked)."""
        for key in [k for k, (p, _) in self._entries.items() if p.token_id == token_id]:
            del self._entries[key]


# ---------------------------------------------------------------------- body size
class BodySizeLimit:
    """ASGI middleware: 413 for a request body larger than ``max_bytes``.

    Checks ``Content-Length`` up front and counts the bytes of a chunked body as they
    arrive, so a client that lies about (or leaves out) the length is stopped too.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError(f"Expected max_bytes >= 1, got {max_bytes}.")
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await self._reject(send, "Expected a numeric Content-Length header.", 400)
                    return
                if declared > self.max_bytes:
                    await self._reject(send, self._too_large(declared))
                    return
        seen = 0

        async def counted_receive() -> Message:
            # Raised inside the app, the HTTPException is answered by its exception
            # middleware (413 JSON), before any route runs on a truncated body.
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise StarletteHTTPException(413, self._too_large(seen, at_least=True))
            return message

        await self.app(scope, counted_receive, send)

    def _too_large(self, n: int, *, at_least: bool = False) -> str:
        got = f"at least {n}" if at_least else str(n)
        return f"Expected a request body of at most {self.max_bytes} bytes, got {got}."

    @staticmethod
    async def _reject(send: Send, detail: str, status: int = 413) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        })
        await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------- route classes
#: The route classes of docs/security.md, as parameter types: ``who: FleetManager``.
FleetManager = Annotated[Principal, Depends(Allow(Role.FLEET_MANAGER))]
FieldStaff = Annotated[Principal, Depends(Allow(Role.FLEET_MANAGER, Role.TECHNICIAN))]
Riders = Annotated[Principal, Depends(Allow(Role.CUSTOMER, Role.FLEET_MANAGER))]
Ops = Annotated[Principal, Depends(Allow(Role.OPS))]
#: Alerts and notifications: the fleet manager (batteries) and ops (the system) both act on them.
Operators = Annotated[Principal, Depends(Allow(Role.FLEET_MANAGER, Role.OPS))]
