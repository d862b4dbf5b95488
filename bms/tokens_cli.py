"""``bms tokens ...``: issue, list and revoke API tokens, straight on PostgreSQL.

This is how the first ``ops`` token is made (the HTTP routes for tokens need one). The
secret is printed once and stored only as its SHA-256.
"""

from __future__ import annotations

import getpass
import json
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer

from bms.cli_support import ConfigOpt, load_settings, on_postgres
from bms.settings import Settings
from contracts.access import Role, TokenInfo

tokens_app = typer.Typer(help="Issue, list and revoke API tokens.", no_args_is_help=True)

T = TypeVar("T")

_DAY_S = 24 * 3600.0


def _with_tokens(settings: Settings, fn: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``fn(token_store)`` on BMS_POSTGRES_URL, or on the embedded server."""
    from store.token_store import TokenStore

    return on_postgres(settings, "bms-tokens-cli", lambda conn: fn(TokenStore(conn)))


def _row(info: TokenInfo, now_s: float) -> dict[str, Any]:
    return {
        "id": info.id, "role": info.role.value, "subject": info.subject, "label": info.label,
        "state": info.state_at(now_s), "created_by": info.created_by,
        "created_at": _iso(info.created_at_s), "expires_at": _iso(info.expires_at_s),
        "revoked_at": _iso(info.revoked_at_s),
    }  # fmt: skip


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@tokens_app.command("create")
def create(
    role: Annotated[Role, typer.Option(help="What the token may do")],
    subject: Annotated[str, typer.Option(help="Who holds it; a technician token: the technician id")],
    ttl_days: Annotated[float, typer.Option(help="Lifetime in days (at most 366)")] = 30.0,
    never_expires: Annotated[bool, typer.Option("--never-expires", help="No expiry (service accounts)")] = False,
    label: Annotated[str, typer.Option(help="What it is for")] = "",
    config: ConfigOpt = None,
) -> None:
    """Issue a token and print it once (it is stored only as a hash)."""
    ttl_s = None if never_expires else ttl_days * _DAY_S
    by = f"cli:{getpass.getuser()}"
    token, info = _with_tokens(
        load_settings(config), lambda s: s.create(role, subject, created_by=by, ttl_s=ttl_s, label=label)
    )
    typer.echo(json.dumps({**_row(info, time.time()), "token": token}))
    typer.echo("Keep the token now: it is not stored and cannot be shown again.", err=True)


@tokens_app.command("list")
def list_(config: ConfigOpt = None) -> None:
    """Every token issued (no secrets), one JSON object per line."""
    infos = _with_tokens(load_settings(config), lambda s: s.list())
    now = time.time()
    for info in infos:
        typer.echo(json.dumps(_row(info, now)))


@tokens_app.command("revoke")
def revoke(
    token_id: Annotated[int, typer.Argument(help="The token's id (bms tokens list)")],
    config: ConfigOpt = None,
) -> None:
    """Revoke a token; it is refused from the next request on."""
    info = _with_tokens(load_settings(config), lambda s: s.revoke(token_id))
    typer.echo(json.dumps(_row(info, time.time())))


#: Label of the tokens ``bms run`` prints; each run revokes the previous run's.
DEMO_LABEL = "bms run demo"
_DEMO_TTL_S = 12 * 3600.0


async def issue_demo_tokens(postgres_url: str, technician_id: str) -> dict[Role, str]:
    """One fresh 12-hour token per role for trying the system, the last run's revoked.

    The technician token speaks for ``technician_id`` (a technician of the roster), so its
    route and orders are there to look at.
    """
    from store import open_postgres
    from store.token_store import TokenStore

    subjects = {
        Role.FLEET_MANAGER: "demo-fleet-manager",
        Role.TECHNICIAN: technician_id,
        Role.CUSTOMER: "demo-customer",
        Role.OPS: "demo-ops",
    }
    async with open_postgres(postgres_url, application_name="bms-demo-tokens") as conn:
        store = TokenStore(conn)
        now = time.time()
        for info in await store.list():
            if info.label == DEMO_LABEL and info.state_at(now) == "active":
                await store.revoke(info.id)
        out: dict[Role, str] = {}
        for role, subject in subjects.items():
            token, _ = await store.create(
                role, subject, created_by="bms run", ttl_s=_DEMO_TTL_S, label=DEMO_LABEL
            )
            out[role] = token
    return out
