"""Webhook signing (Standard Webhooks), the URL policy that keeps them off internal
networks, and the retry schedule. Pure, except for the DNS look-up of :func:`check_url`.

**Signing** follows https://www.standardwebhooks.com: every request carries

``webhook-id``         the message id (``msg_...``), the same across retries and replays;
``webhook-timestamp``  integer Unix seconds of this attempt;
``webhook-signature``  ``v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}.{body}")>``, one or
                       more such entries separated by spaces;

where the secret is ``whsec_`` and the base64 of 24-64 random bytes, and the HMAC key is
those bytes. Receivers verify with :func:`verify` (or any Standard Webhooks library).

**SSRF.** A subscription's URL is chosen by a token holder, and the dispatcher sends from
inside the operator's network, so a URL must not reach it: :func:`check_url` resolves the
host and refuses loopback, private, link-local, CGNAT, multicast, reserved and unspecified
addresses (also inside IPv4-mapped, 6to4 and NAT64 IPv6 addresses) unless an allowed CIDR
holds them. It runs when a subscription is made and again before every attempt, and the
attempt connects to the address it checked (DNS rebinding cannot swap it in between).

Errors (under :class:`contracts.webhooks.WebhookError`)::

    WebhookError
    ├── UnsafeWebhookUrl (also ValueError)   the URL is refused by the policy
    ├── InvalidSecret (also ValueError)      not a whsec_ secret of 24-64 bytes
    └── SignatureError                       a request whose signature does not verify
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import math
import random
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from contracts.webhooks import WebhookError

__all__ = [
    "SECRET_PREFIX",
    "SVIX_DELAYS_S",
    "InvalidSecret",
    "Resolver",
    "RetrySchedule",
    "SignatureError",
    "UnsafeWebhookUrl",
    "UrlPolicy",
    "check_url",
    "new_secret",
    "sign",
    "signature",
    "system_resolver",
    "verify",
]

SECRET_PREFIX = "whsec_"
_MIN_KEY_BYTES, _MAX_KEY_BYTES = 24, 64


class UnsafeWebhookUrl(WebhookError, ValueError):
    """A webhook URL the policy refuses: the message names the URL, the address and why."""


class InvalidSecret(WebhookError, ValueError):
    """A signing secret that is not ``whsec_`` and the base64 of 24-64 bytes."""


class SignatureError(WebhookError):
    """A webhook request whose headers, timestamp or signature do not verify."""


# ---------------------------------------------------------------------- signing
def new_secret(n_bytes: int = 32) -> str:
    """A fresh signing secret: ``whsec_`` and the base64 of ``n_bytes`` (24-64) random bytes."""
    if not _MIN_KEY_BYTES <= n_bytes <= _MAX_KEY_BYTES:
        raise ValueError(
            f"Expected n_bytes in [{_MIN_KEY_BYTES}, {_MAX_KEY_BYTES}], got {n_bytes}."
        )
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(n_bytes)).decode("ascii")


def _key(secret: str) -> bytes:
    # The reference libraries accept the bare base64 too; so do we, for receivers' sake.
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidSecret(
            f"Expected a secret 'whsec_<base64>', got one whose part after the prefix is not "
            f"base64 ({len(encoded)} characters)."
        ) from None
    if not _MIN_KEY_BYTES <= len(key) <= _MAX_KEY_BYTES:
        raise InvalidSecret(
            f"Expected a secret of {_MIN_KEY_BYTES}-{_MAX_KEY_BYTES} bytes, got {len(key)}."
        )
    return key


def signature(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` of ``f"{msg_id}.{timestamp_s}.{body}"`` under ``secret``."""
    signed = b"%s.%d.%s" % (msg_id.encode("utf-8"), timestamp_s, body)
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign(secret: str, msg_id: str, timestamp_s: int, body: bytes) -> dict[str, str]:
    """The three Standard Webhooks headers of one request.

    Parameters
    ----------
    secret
        The subscription's ``whsec_`` secret.
    msg_id
        The delivery's message id (``webhook-id``).
    timestamp_s
        This attempt's time, integer Unix seconds.
    body
        The exact bytes sent.
    """
    if isinstance(timestamp_s, bool) or not isinstance(timestamp_s, int):
        raise TypeError(f"Expected integer Unix seconds for timestamp_s, got {timestamp_s!r}.")
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp_s),
        "webhook-signature": signature(secret, msg_id, timestamp_s, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now_s: float,
    tolerance_s: float = 300.0,
) -> None:
    """Return if ``body`` and ``headers`` carry a valid signature under ``secret``; raise
    :class:`SignatureError` saying what is wrong otherwise.

    Parameters
    ----------
    headers
        The request's headers (names in any case).
    body
        The raw body, before any JSON parsing.
    now_s
        The receiver's clock (Unix s).
    tolerance_s
        How far the timestamp may be from ``now_s`` either way (replay protection).
    """
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if h not in lower
    ]
    if missing:
        raise SignatureError(
            f"Expected the headers webhook-id, webhook-timestamp and webhook-signature, missing {missing}."
        )
    msg_id, stamp = lower["webhook-id"], lower["webhook-timestamp"]
    if not stamp.isascii() or not stamp.isdigit():
        raise SignatureError(
            f"Expected webhook-timestamp in integer Unix seconds, got {stamp[:40]!r}."
        )
    timestamp_s = int(stamp)
    if abs(now_s - timestamp_s) > tolerance_s:
        raise SignatureError(
            f"Expected webhook-timestamp within {tolerance_s:g} s of now ({now_s:.0f}), got "
            f"{timestamp_s} ({now_s - timestamp_s:+.0f} s off)."
        )
    expected = signature(secret, msg_id, timestamp_s, body).encode("ascii")
    offered = lower["webhook-signature"].split()
    # Compare every entry in constant time; an unknown version simply does not match.
    if not any(hmac.compare_digest(expected, entry.encode("utf-8")) for entry in offered):
        raise SignatureError(
            f"Expected a v1 signature matching the body under this secret, got {len(offered)} "
            "signature(s), none matching."
        )


# ---------------------------------------------------------------------- URL policy
#: ``resolve(host, port)``: the addresses a client connecting there could reach.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


async def system_resolver(host: str, port: int) -> list[str]:
    """The host's addresses by the system resolver, without blocking the event loop."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class UrlPolicy:
    """Which webhook URLs may be used.

    Parameters
    ----------
    allow_cidrs
        Networks that are allowed even though they are internal, e.g. ``("10.20.0.0/16",)``
        for a receiver on the operator's own network; tests allow ``127.0.0.0/8``.
    allow_http
        Allow ``http://`` (plain text: only for a receiver on a trusted network or in tests).
    """

    allow_cidrs: tuple[str, ...] = ()
    allow_http: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "allow_cidrs", tuple(self.allow_cidrs))
        for cidr in self.allow_cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ValueError(
                    f"Expected allow_cidrs of networks like '10.0.0.0/8' or 'fd00::/8', got {cidr!r}."
                ) from None

    def allows(self, address: _IP) -> bool:
        """Whether ``address`` lies in one of :attr:`allow_cidrs`."""
        for cidr in self.allow_cidrs:
            net = ipaddress.ip_network(cidr, strict=False)
            if address.version == net.version and address in net:
                return True
        return False


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one leads to (mapped, 6to4, NAT64), else None."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _why_internal(address: _IP) -> str | None:
    """Why an address must not be reached, or None for a public unicast address."""
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        (
            "carrier-grade NAT (100.64.0.0/10)",
            isinstance(address, ipaddress.IPv4Address) and address in _CGNAT,
        ),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((why for why, hit in checks if hit), None)


def _refusal(address: _IP, policy: UrlPolicy) -> str | None:
    if policy.allows(address):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_v4(address)
        if inner is not None:
            # The packet goes to the embedded address: judge that one alone (the IPv6
            # wrapper's own ranges are "reserved" or "private" whatever it carries).
            if policy.allows(inner):
                return None
            why = _why_internal(inner)
            return None if why is None else f"it embeds the IPv4 address {inner}, which is {why}"
    why = _why_internal(address)
    return None if why is None else f"it is {why}"


async def check_url(url: str, policy: UrlPolicy, resolve: Resolver | None = None) -> list[str]:
    """Check a webhook URL against ``policy``; the addresses it may be sent to.

    The scheme must be ``https`` (or ``http`` where the policy allows it), the URL must name
    a host and carry no credentials, and *every* address the host resolves to must be public
    or inside an allowed CIDR (a client may connect to any of them).

    Parameters
    ----------
    url
        The receiver's URL.
    policy
        What is allowed.
    resolve
        ``resolve(host, port) -> addresses``; the system resolver when ``None`` (tests pass
        their own). Not called for an IP literal.

    Returns
    -------
    list of str
        The checked addresses, in the resolver's order (connect to one of these).

    Raises
    ------
    UnsafeWebhookUrl
        Naming the URL, the address and why.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as err:
        raise UnsafeWebhookUrl(f"Expected a valid URL, got {url!r}: {err}.") from None
    schemes = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme not in schemes:
        raise UnsafeWebhookUrl(
            f"Expected a URL with scheme {' or '.join(schemes)}, got {url!r} "
            f"(scheme {parts.scheme!r})."
        )
    if parts.username is not None or parts.password is not None:
        # It would be stored and listed in the clear; receivers authenticate by signature.
        raise UnsafeWebhookUrl(
            f"Expected a URL without credentials (user:password@), got one for host {parts.hostname!r}."
        )
    host = parts.hostname
    if not host:
        raise UnsafeWebhookUrl(f"Expected a URL naming a host, got {url!r}.")
    port = port or (443 if parts.scheme == "https" else 80)
    try:
        addresses: Sequence[str] = [str(ipaddress.ip_address(host))]
    except ValueError:
        try:
            addresses = await (resolve or system_resolver)(host, port)
        except OSError as err:
            raise UnsafeWebhookUrl(
                f"Expected the host of {url!r} to resolve, got: {err}."
            ) from None
    if not addresses:
        raise UnsafeWebhookUrl(f"Expected the host of {url!r} to resolve, got no address.")
    checked: list[str] = []
    for raw in addresses:
        try:
            # A scope id (fe80::1%eth0) names an interface, not another address.
            address = ipaddress.ip_address(raw.split("%", 1)[0])
        except ValueError:
            raise UnsafeWebhookUrl(
                f"Expected IP addresses for {url!r}, the resolver gave {raw!r}."
            ) from None
        why = _refusal(address, policy)
        if why is not None:
            raise UnsafeWebhookUrl(
                f"Refusing webhook URL {url!r}: it resolves to {address}, and {why} "
                "(allow a network with webhook_allow_cidrs if this receiver is meant to be internal)."
            )
        checked.append(str(address))
    return checked


# ---------------------------------------------------------------------- retries
#: Svix's schedule: the first attempt at once, then retries 5 s, 5 min, 30 min, 2 h, 5 h,
#: 10 h and 10 h after the previous one (8 attempts over about 27.6 hours).
SVIX_DELAYS_S: tuple[float, ...] = (0.0, 5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0)


@dataclass(frozen=True)
class RetrySchedule:
    """When to try a delivery again.

    Parameters
    ----------
    delays_s
        ``delays_s[n]`` is the wait before attempt ``n + 1`` (the first is the wait before
        the first attempt); after ``len(delays_s)`` attempts the dispatcher gives up.
    jitter
        Each wait is scaled by a uniform factor in ``[1 - jitter, 1 + jitter]``, so that
        deliveries that failed together (a receiver's outage) do not all come back at once.
    """

    delays_s: tuple[float, ...] = SVIX_DELAYS_S
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if not self.delays_s or any(not (math.isfinite(d) and d >= 0) for d in self.delays_s):
            raise ValueError(f"Expected one or more finite delays >= 0, got {self.delays_s}.")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"Expected jitter in [0, 1), got {self.jitter}.")

    @property
    def max_attempts(self) -> int:
        """Attempts made before giving up."""
        return len(self.delays_s)

    @property
    def total_s(self) -> float:
        """Time from the first attempt to the last, without jitter."""
        return float(sum(self.delays_s[1:]))

    def next_delay_s(self, attempts: int, rng: random.Random) -> float | None:
        """Seconds to wait after ``attempts`` failed attempts, or ``None`` to give up.

        Parameters
        ----------
        attempts
            Attempts made so far (since the last replay), 0 before the first.
        rng
            Draws the jitter (seeded in tests).
        """
        if attempts < 0:
            raise ValueError(f"Expected attempts >= 0, got {attempts}.")
        if attempts >= len(self.delays_s):
            return None
        return self.delays_s[attempts] * (1.0 + rng.uniform(-self.jitter, self.jitter))
