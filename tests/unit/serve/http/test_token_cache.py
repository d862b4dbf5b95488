"""Tests for :class:`serve.http.auth.TokenCache`: who a token stood for, for a few seconds."""

from __future__ import annotations

import pytest

from contracts.access import Principal, Role, new_token
from serve.http.auth import TokenCache
from twins.clock import ManualClock


def _principal(token_id: int) -> Principal:
    return Principal(token_id=token_id, role=Role.FLEET_MANAGER, subject=f"manager-{token_id}")


def test_a_principal_is_remembered_for_the_ttl_only() -> None:
    """put then get answers the principal until ttl_s has passed, then nothing."""
    clock = ManualClock(0.0)
    cache = TokenCache(ttl_s=5.0, clock=clock.now_s)
    token = new_token()
    assert cache.get(token) is None
    cache.put(token, _principal(1))
    clock.advance(4.9)
    assert cache.get(token) == _principal(1)
    clock.advance(0.1)
    assert cache.get(token) is None


def test_forget_drops_a_revoked_token_and_no_secret_is_kept() -> None:
    """forget(token_id) drops that token's entry only; entries are keyed by hash, not by
    the secret."""
    cache = TokenCache()
    a, b = new_token(), new_token()
    cache.put(a, _principal(1))
    cache.put(b, _principal(2))
    cache.forget(1)
    assert cache.get(a) is None and cache.get(b) == _principal(2)
    assert all(isinstance(k, bytes) and a.encode() != k for k in cache._entries)


def test_the_cache_is_bounded_oldest_first() -> None:
    cache = TokenCache(max_entries=2)
    tokens = [new_token() for _ in range(3)]
    for i, t in enumerate(tokens):
        cache.put(t, _principal(i))
    assert cache.get(tokens[0]) is None and cache.get(tokens[2]) == _principal(2)


@pytest.mark.parametrize(("ttl_s", "max_entries"), [(0.0, 10), (5.0, 0)])
def test_bad_settings_are_refused(ttl_s: float, max_entries: int) -> None:
    with pytest.raises(ValueError, match="Expected ttl_s > 0"):
        TokenCache(ttl_s=ttl_s, max_entries=max_entries)
