"""Keeping secrets out of logs, reprs and error messages.

Connection URLs may carry a password (``postgresql://bms:secret@db/bms``); anything that
prints a URL prints :func:`redact_url` of it, and ``bms run`` installs
:class:`RedactingFilter` on its log handlers as the catch-all for a URL inside a message.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit, urlunsplit

__all__ = ["REDACTED", "RedactingFilter", "redact_text", "redact_url"]

REDACTED = "***"
# scheme://user:password@  (the user part may be empty: redis://:password@host)
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@")
# libpq keyword form: password=secret
_KEYWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``; everything else kept."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if parts.password is None:
        return redact_text(url)
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    netloc = f"{user}:{REDACTED}@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def redact_text(text: str) -> str:
    """``text`` with every ``scheme://user:password@`` and ``password=...`` redacted."""
    text = _CREDENTIALS.sub(lambda m: f"{m.group('head')}{REDACTED}@", text)
    return _KEYWORD.sub(lambda m: f"{m.group('head')}{REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Redacts credentials in every record's message (formatted once, here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatters reuse a cached traceback text: cache a redacted one (another
            # handler may have cached the plain one already).
            text = record.exc_text or logging.Formatter().formatException(record.exc_info)
            record.exc_text = redact_text(text)
        return True
