from __future__ import annotations

import logging

import pytest

from duckstream.redact import MASK, get_logger, redact, register_secret


@pytest.mark.parametrize(
    ("text", "hidden"),
    [
        ("postgresql://ducklake:s3cr3t-pw@db:5432/lake", "s3cr3t-pw"),
        ("host=db port=5432 user=u password=s3cr3t-pw dbname=lake", "s3cr3t-pw"),
        ("ATTACH 'ducklake:postgres:password=\"s3cr3t-pw\" host=db'", "s3cr3t-pw"),
        ("CREATE SECRET (KEY_ID 'AKIAXYZ', SECRET 'wJalrXUtn')", "wJalrXUtn"),
        ("CREATE SECRET (KEY_ID 'AKIAXYZ', SECRET 'wJalrXUtn')", "AKIAXYZ"),
    ],
)
def test_password_shaped_fields_are_masked(text: str, hidden: str) -> None:
    cleaned = redact(text)
    assert hidden not in cleaned
    assert MASK in cleaned


def test_explicit_and_registered_secrets_are_masked_anywhere() -> None:
    register_secret("registered-value-123")
    text = "a registered-value-123 b explicit-value-456 c"
    assert redact(text, ["explicit-value-456"]) == f"a {MASK} b {MASK} c"


def test_short_values_are_not_registered() -> None:
    register_secret("ab")
    assert redact("about a tab") == "about a tab"


def test_log_records_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    register_secret("log-secret-789")
    log = get_logger("duckstream.test_redact")
    with caplog.at_level(logging.INFO, logger="duckstream.test_redact"):
        log.info("connecting with %s to %s", "log-secret-789", "postgresql://u:pw-in-url@h/db")
    assert "log-secret-789" not in caplog.text
    assert "pw-in-url" not in caplog.text
    assert MASK in caplog.text
