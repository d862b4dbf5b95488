"""Standard Webhooks signing, the SSRF URL policy and the retry schedule (alerts.webhooks)."""

from __future__ import annotations

import base64
import ipaddress
import random
from collections.abc import Sequence

import pytest

from alerts.webhooks import (
    SVIX_DELAYS_S,
    InvalidSecret,
    RetrySchedule,
    SignatureError,
    UnsafeWebhookUrl,
    UrlPolicy,
    check_url,
    new_secret,
    sign,
    signature,
    verify,
)

# The spec's published test vector (standard-webhooks, libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TS = 1614265330
SPEC_BODY = b'{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


# ---------------------------------------------------------------------- signing
def test_signature_matches_the_specs_test_vector() -> None:
    """The signature of the spec's vector is the spec's, with and without the prefix."""
    assert signature(SPEC_SECRET, SPEC_MSG_ID, SPEC_TS, SPEC_BODY) == SPEC_SIGNATURE
    assert (
        signature(SPEC_SECRET.removeprefix("whsec_"), SPEC_MSG_ID, SPEC_TS, SPEC_BODY)
        == SPEC_SIGNATURE
    )


def test_sign_makes_the_three_headers() -> None:
    """sign() answers webhook-id, an integer webhook-timestamp and the v1 signature."""
    headers = sign(SPEC_SECRET, SPEC_MSG_ID, SPEC_TS, SPEC_BODY)
    assert headers == {
        "webhook-id": SPEC_MSG_ID,
        "webhook-timestamp": "1614265330",
        "webhook-signature": SPEC_SIGNATURE,
    }
    with pytest.raises(TypeError, match="integer Unix seconds"):
        sign(SPEC_SECRET, SPEC_MSG_ID, 1614265330.5, SPEC_BODY)  # type: ignore[arg-type]


def test_verify_accepts_the_spec_vector_and_one_of_several_signatures() -> None:
    """A valid signature verifies, also among others (key rotation), with any header case."""
    headers = sign(SPEC_SECRET, SPEC_MSG_ID, SPEC_TS, SPEC_BODY)
    verify(SPEC_SECRET, headers, SPEC_BODY, now_s=SPEC_TS + 10)
    several = {k.upper(): v for k, v in headers.items()}
    several["WEBHOOK-SIGNATURE"] = f"v1,bm90IGl0 v2,whatever {SPEC_SIGNATURE}"
    verify(SPEC_SECRET, several, SPEC_BODY, now_s=SPEC_TS)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"body": b'{"test": 2432232315}'}, "none matching"),
        ({"secret": new_secret()}, "none matching"),
        ({"now_s": SPEC_TS + 301}, "within 300 s"),
        ({"now_s": SPEC_TS - 301}, "within 300 s"),
        ({"drop": "webhook-signature"}, "missing \\['webhook-signature'\\]"),
        ({"drop": "webhook-id"}, "missing \\['webhook-id'\\]"),
        ({"timestamp": "1614265330.0"}, "integer Unix seconds"),
        ({"signature": "v1," + base64.b64encode(b"x" * 32).decode()}, "none matching"),
    ],
)
def test_verify_refuses_what_does_not_match(change: dict[str, object], message: str) -> None:
    """A changed body, another secret, a stale or future timestamp, a missing header, a
    non-integer timestamp or a wrong signature raise SignatureError saying which."""
    headers = sign(SPEC_SECRET, SPEC_MSG_ID, SPEC_TS, SPEC_BODY)
    if "drop" in change:
        del headers[str(change["drop"])]
    if "timestamp" in change:
        headers["webhook-timestamp"] = str(change["timestamp"])
    if "signature" in change:
        headers["webhook-signature"] = str(change["signature"])
    body = change.get("body", SPEC_BODY)
    secret = change.get("secret", SPEC_SECRET)
    now_s = change.get("now_s", SPEC_TS)
    with pytest.raises(SignatureError, match=message):
        verify(str(secret), headers, body, now_s=float(now_s))  # type: ignore[arg-type]


def test_new_secret_is_whsec_and_32_random_bytes() -> None:
    """Fresh secrets carry the prefix, decode to the asked length and differ."""
    a, b = new_secret(), new_secret()
    assert a.startswith("whsec_") and a != b
    assert len(base64.b64decode(a.removeprefix("whsec_"))) == 32
    assert len(base64.b64decode(new_secret(64).removeprefix("whsec_"))) == 64
    with pytest.raises(ValueError, match=r"n_bytes in \[24, 64\], got 16"):
        new_secret(16)


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_not base64!", "not base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "got 5"),
    ],
)
def test_a_bad_secret_is_refused(secret: str, message: str) -> None:
    """A secret that is not base64, or a key outside 24-64 bytes, raises InvalidSecret."""
    with pytest.raises(InvalidSecret, match=message):
        signature(secret, SPEC_MSG_ID, SPEC_TS, SPEC_BODY)


# ---------------------------------------------------------------------- URL policy
def resolver(*addresses: str):  # type: ignore[no-untyped-def]
    """A resolver answering ``addresses`` for any host, recording what it was asked."""
    asked: list[tuple[str, int]] = []

    async def resolve(host: str, port: int) -> Sequence[str]:
        asked.append((host, port))
        return list(addresses)

    resolve.asked = asked  # type: ignore[attr-defined]
    return resolve


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "carrier-grade NAT"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("192.0.2.10", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::5", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "embeds the IPv4 address 127.0.0.1, which is loopback"),
        ("::ffff:169.254.169.254", "embeds the IPv4 address 169.254.169.254, which is link-local"),
        ("2002:a00:1::1", "embeds the IPv4 address 10.0.0.1, which is private"),
        ("64:ff9b::a9fe:a9fe", "embeds the IPv4 address 169.254.169.254, which is link-local"),
    ],
)
async def test_internal_addresses_are_refused(address: str, why: str) -> None:
    """A host resolving to an internal address is refused; the message names the URL, the
    address and why."""
    url = "https://hooks.example.com/in"
    with pytest.raises(UnsafeWebhookUrl) as err:
        await check_url(url, UrlPolicy(), resolver(address))
    text = str(err.value)
    assert url in text and why in text and f"resolves to {ipaddress.ip_address(address)}" in text


async def test_a_public_host_passes_and_names_its_addresses() -> None:
    """Public IPv4 and IPv6 addresses pass; the checked addresses come back in order, and
    the resolver is asked for the URL's host and port."""
    resolve = resolver("93.184.216.34", "2606:2800:220:1::1")
    got = await check_url("https://hooks.example.com:8443/x", UrlPolicy(), resolve)
    assert got == ["93.184.216.34", "2606:2800:220:1::1"]
    assert resolve.asked == [("hooks.example.com", 8443)]  # type: ignore[attr-defined]
    assert await check_url("https://[2606:4700::1111]/x", UrlPolicy()) == ["2606:4700::1111"]
    assert await check_url("https://8.8.8.8/hook", UrlPolicy()) == ["8.8.8.8"]


async def test_every_resolved_address_must_pass() -> None:
    """One internal address among public ones refuses the URL (a client may pick any)."""
    with pytest.raises(UnsafeWebhookUrl, match=r"resolves to 10\.0\.0\.7"):
        await check_url(
            "https://mixed.example.com/", UrlPolicy(), resolver("93.184.216.34", "10.0.0.7")
        )


async def test_allowed_cidrs_let_internal_receivers_through() -> None:
    """An address inside an allowed CIDR passes (also behind an IPv4-mapped address)."""
    policy = UrlPolicy(allow_cidrs=("127.0.0.0/8", "10.20.0.0/16"), allow_http=True)
    assert await check_url("http://127.0.0.1:9000/hook", policy) == ["127.0.0.1"]
    assert await check_url("https://in.corp/", policy, resolver("10.20.3.4")) == ["10.20.3.4"]
    assert await check_url("https://in.corp/", policy, resolver("::ffff:10.20.3.4")) == [
        "::ffff:a14:304"
    ]
    with pytest.raises(UnsafeWebhookUrl, match="private"):
        await check_url("https://in.corp/", policy, resolver("10.21.0.1"))


@pytest.mark.parametrize(
    ("url", "policy", "message"),
    [
        ("http://8.8.8.8/hook", UrlPolicy(), "scheme https, got 'http://8.8.8.8/hook'"),
        ("ftp://8.8.8.8/hook", UrlPolicy(allow_http=True), "scheme https or http"),
        ("https://user:pw@8.8.8.8/hook", UrlPolicy(), "without credentials"),
        ("https:///nohost", UrlPolicy(), "naming a host"),
        ("https://8.8.8.8:99999/", UrlPolicy(), "valid URL"),
        ("hooks.example.com/x", UrlPolicy(), "scheme https"),
    ],
)
async def test_bad_urls_are_refused(url: str, policy: UrlPolicy, message: str) -> None:
    """Plain http (unless allowed), other schemes, credentials, no host and bad ports are
    refused before any look-up."""
    resolve = resolver("8.8.8.8")
    with pytest.raises(UnsafeWebhookUrl, match=message):
        await check_url(url, policy, resolve)
    assert resolve.asked == []  # type: ignore[attr-defined]


async def test_a_host_that_does_not_resolve_is_refused() -> None:
    """A resolver error or an empty answer refuses the URL."""

    async def failing(host: str, port: int) -> Sequence[str]:
        raise OSError("Name or service not known")

    with pytest.raises(UnsafeWebhookUrl, match="to resolve, got: Name or service not known"):
        await check_url("https://nowhere.invalid/", UrlPolicy(), failing)
    with pytest.raises(UnsafeWebhookUrl, match="got no address"):
        await check_url("https://nowhere.invalid/", UrlPolicy(), resolver())


async def test_the_system_resolver_is_used_by_default() -> None:
    """Without a resolver, the system's is asked (localhost: loopback, refused)."""
    with pytest.raises(UnsafeWebhookUrl, match="loopback"):
        await check_url("https://localhost/hook", UrlPolicy())


def test_url_policy_checks_its_cidrs() -> None:
    """A CIDR that is not a network is refused when the policy is made."""
    with pytest.raises(ValueError, match=r"got '10\.0\.0\.0/33'"):
        UrlPolicy(allow_cidrs=("10.0.0.0/33",))


# ---------------------------------------------------------------------- retries
def test_retry_schedule_is_svix_s_and_spans_more_than_a_day() -> None:
    """Eight attempts, waits of 5 s .. 10 h, about 27.6 h in all; then give up."""
    schedule = RetrySchedule()
    assert schedule.delays_s == SVIX_DELAYS_S and schedule.max_attempts == 8
    assert schedule.total_s == pytest.approx(27.58 * 3600, rel=1e-3)
    assert schedule.total_s > 24 * 3600
    rng = random.Random(7)
    for attempts, nominal in enumerate(SVIX_DELAYS_S):
        delay = schedule.next_delay_s(attempts, rng)
        assert delay is not None
        assert nominal * 0.9 <= delay <= nominal * 1.1
    assert schedule.next_delay_s(8, rng) is None


def test_retry_jitter_is_seeded_and_spread() -> None:
    """The same seed gives the same waits; waits spread over +-10 %."""
    schedule = RetrySchedule()
    a = [schedule.next_delay_s(3, random.Random(1)) for _ in range(3)]
    b = [schedule.next_delay_s(3, random.Random(1)) for _ in range(3)]
    assert a == b
    rng = random.Random(2)
    waits = [schedule.next_delay_s(3, rng) for _ in range(200)]
    assert min(w for w in waits if w is not None) < 1800 * 0.95
    assert max(w for w in waits if w is not None) > 1800 * 1.05


def test_retry_schedule_checks_its_params() -> None:
    """Empty or negative delays and jitter outside [0, 1) are refused."""
    with pytest.raises(ValueError, match="delays"):
        RetrySchedule(delays_s=())
    with pytest.raises(ValueError, match="delays"):
        RetrySchedule(delays_s=(0.0, -1.0))
    with pytest.raises(ValueError, match="jitter in"):
        RetrySchedule(jitter=1.0)
