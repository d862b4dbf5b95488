"""API tokens against the machine's real PostgreSQL: issue, authenticate, expire, revoke.

Every test gets its own schema with the migrations applied (the ``conn`` fixture).
"""

from __future__ import annotations

import time

import psycopg
import pytest

from contracts.access import Role, TokenRejected, hash_token, looks_like_token
from store.token_store import TokenStore

pytestmark = pytest.mark.integration


async def test_a_token_authenticates_as_its_role_and_subject(conn: psycopg.AsyncConnection) -> None:
    """The secret is returned once, has the documented shape, and maps to its principal."""
    store = TokenStore(conn)
    token, info = await store.create(Role.TECHNICIAN, "tech-07", created_by="cli:ops", ttl_s=60.0, label="van 7")
    assert looks_like_token(token) and info.role is Role.TECHNICIAN and info.label == "van 7"
    who = await store.authenticate(token)
    assert (who.token_id, who.role, who.subject) == (info.id, Role.TECHNICIAN, "tech-07")


async def test_only_the_hash_is_stored(conn: psycopg.AsyncConnection) -> None:
    """No column of the table holds the secret: a dump of it lets nobody in."""
    store = TokenStore(conn)
    token, _ = await store.create(Role.OPS, "ops-1", created_by="t", ttl_s=None)
    row = await (await conn.execute("SELECT * FROM api_tokens")).fetchone()
    assert row is not None
    text = " ".join(str(v) for v in row)
    assert token not in text and token[4:] not in text
    assert hash_token(token) in [bytes(v) for v in row if isinstance(v, bytes | memoryview)]


async def test_unknown_expired_and_revoked_tokens_are_refused(conn: psycopg.AsyncConnection) -> None:
    """Each refusal says which of the three it is, never the secret."""
    store = TokenStore(conn)
    with pytest.raises(TokenRejected, match="unknown token"):
        await store.authenticate("bms_" + "A" * 43)
    token, info = await store.create(Role.CUSTOMER, "c-1", created_by="t", ttl_s=60.0)
    with pytest.raises(TokenRejected, match=f"token {info.id} is expired") as err:
        await store.authenticate(token, now_s=time.time() + 61.0)
    assert token not in str(err.value)
    assert (await store.revoke(info.id)).revoked_at_s is not None
    with pytest.raises(TokenRejected, match=f"token {info.id} is revoked"):
        await store.authenticate(token)
    again = await store.revoke(info.id)  # idempotent: the first revocation time stays
    assert again.revoked_at_s == (await store.list())[0].revoked_at_s
    with pytest.raises(KeyError, match="No token with id 999"):
        await store.revoke(999)


async def test_list_shows_every_token_with_its_state(conn: psycopg.AsyncConnection) -> None:
    """Active, expired and revoked tokens all stay listed (the audit trail), oldest first."""
    store = TokenStore(conn)
    for role in Role:
        await store.create(role, f"{role.value}-x", created_by="t", ttl_s=3600.0)
    infos = await store.list()
    assert [i.role for i in infos] == list(Role)
    await store.revoke(infos[0].id)
    assert [i.state_at(time.time()) for i in await store.list()] == ["revoked", "active", "active", "active"]


@pytest.mark.parametrize(
    ("subject", "ttl_s", "message"),
    [("", 60.0, "subject"), ("x" * 201, 60.0, "subject"), ("a\nb", 60.0, "subject"),
     ("ok", 0.0, "ttl_s"), ("ok", 10 * 366 * 86400.0, "ttl_s")],
)  # fmt: skip
async def test_bad_token_requests_say_what_was_expected(
    conn: psycopg.AsyncConnection, subject: str, ttl_s: float, message: str
) -> None:
    with pytest.raises(ValueError, match=f"Expected {message}"):
        await TokenStore(conn).create(Role.OPS, subject, created_by="t", ttl_s=ttl_s)
    assert await TokenStore(conn).list() == []
