"""Secrets stay out of logs and reprs: :mod:`contracts.redaction`."""

from __future__ import annotations

import logging

import pytest

from contracts.redaction import RedactingFilter, redact_text, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://bms:s3cr%40t@db:5432/bms", "postgresql://bms:***@db:5432/bms"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("postgresql://u:pw@[::1]:5432/x?sslmode=require", "postgresql://u:***@[::1]:5432/x?sslmode=require"),
        ("mqtt://127.0.0.1:1883", "mqtt://127.0.0.1:1883"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("host=db password=abc user=x", "host=db password=*** user=x"),
    ],
)
def test_only_the_password_is_replaced(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert redact_text(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


def test_log_records_are_redacted_messages_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.redaction")
    caplog.handler.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="test.redaction"):
        log.info("connecting to %s", "postgresql://bms:hunter2@db/bms")
        try:
            raise ConnectionError("redis://:hunter2@cache:6379 refused")
        except ConnectionError:
            log.exception("store down")
    assert "hunter2" not in caplog.text
    assert "postgresql://bms:***@db/bms" in caplog.text and "redis://:***@cache:6379" in caplog.text
