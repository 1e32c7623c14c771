"""Scrubbing of secrets (S3 keys, DSN passwords) from text bound for reprs, errors and logs."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable

__all__ = ["MASK", "RedactingFilter", "get_logger", "redact", "register_secret"]

MASK = "***"

# Values shorter than this are not registered: masking "a" or "12" would mangle every message.
_MIN_SECRET_LENGTH = 4

_registered: set[str] = set()
_lock = threading.Lock()

# password=... in libpq key/value DSNs, and user:password@ in URLs (postgresql://, s3://, http://).
_KEY_VALUE_PASSWORD = re.compile(
    r"(?i)\b(password|passwd|pwd|secret|secret_key|key_id|session_token)"
    # key=value and key: value (libpq DSNs, configs), or key 'value' (DuckDB's CREATE SECRET)
    r"(\s*[=:]\s*|\s+(?=['\"]))"
    r"('[^']*'|\"[^\"]*\"|[^\s'\",;)]+)"
)
_URL_PASSWORD = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^/\s:@'\"]+):([^@\s/'\"]+)@")


def register_secret(value: str | None) -> None:
    """Remember ``value`` so that every later :func:`redact` masks it."""
    if value and len(value) >= _MIN_SECRET_LENGTH:
        with _lock:
            _registered.add(value)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return ``text`` with registered secrets, ``secrets`` and password-shaped fields masked."""
    with _lock:
        known = set(_registered)
    known.update(s for s in secrets if s and len(s) >= _MIN_SECRET_LENGTH)
    # Longest first, so a secret that contains another is masked whole.
    for secret in sorted(known, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _KEY_VALUE_PASSWORD.sub(lambda m: f"{m.group(1)}{m.group(2)}{MASK}", text)
    return _URL_PASSWORD.sub(lambda m: f"{m.group(1)}:{MASK}@", text)


class RedactingFilter(logging.Filter):
    """Logging filter that redacts every record of the ``duckstream`` loggers before output."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


_FILTER = RedactingFilter()


def get_logger(name: str) -> logging.Logger:
    """A logger of the ``duckstream`` tree whose records are redacted.

    Logger filters do not apply to records propagated from child loggers, so each module's
    logger carries the filter itself.
    """
    log = logging.getLogger(name)
    if _FILTER not in log.filters:
        log.addFilter(_FILTER)
    return log
