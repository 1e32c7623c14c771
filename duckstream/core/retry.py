"""Waiting out an object store that does not answer: which failures pass, backoff, deadline.

Object stores blink (a restarted server, reset connections, 503 Slow Down); a training run of
days must not die of it. A read that fails so is retried from the first row it has not yet
handed on, never repeating or losing one, with backoff up to the settings' deadline; past it
one :class:`~duckstream.errors.StoreUnavailableError` names the object and the wait.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb
from pyarrow import ArrowException

from duckstream.errors import QueryError, StoreUnavailableError
from duckstream.redact import redact
from duckstream.storage import ENV_RETRY_SECONDS

T = TypeVar("T")

__all__ = ["Backoff", "patiently", "read_whole", "transient"]

# What AWS's SDK (behind pyarrow's S3 filesystem) and HTTP say when the store, not the request,
# is at fault.
_TRANSIENT = (
    "network_connection",
    "couldn't connect",
    "could not connect",
    "connection refused",
    "connection reset",
    "connection was reset",
    "broken pipe",
    "timed out",
    "timeout",
    "curlcode: 7",
    "curlcode: 28",
    "curlcode: 52",
    "curlcode: 56",
    "slow down",
    "slowdown",
    "serviceunavailable",
    "service unavailable",
    "internalerror",
    "internal_failure",
    "please try again",
    "service_unavailable",
    "throttling",
    "unable to connect",
    "empty reply",
)
_FIRST_DELAY = 0.1
_MAX_DELAY = 5.0


# A 5xx answer: the store's fault, not the request's ("HTTP status 503", "HTTP 503").
_SERVER_STATUS = re.compile(r"(http status|response code|http)\s*[:=]?\s*5\d\d\b")


def transient(error: BaseException) -> bool:
    """Whether ``error`` says the store did not answer (worth waiting out), not that the
    request is wrong (a missing object, no permission, a damaged file).

    DuckDB's errors count only when they come from its HTTP client: a catalog server that
    refuses connections (a wrong port in a DSN, say) is not an object store blinking.
    """
    # A QueryError's own text quotes the user's statement: judge DuckDB's words alone.
    said = error.engine_message if isinstance(error, QueryError) and error.engine_message else str(error)
    text = said.lower()
    if isinstance(error, (duckdb.Error, QueryError)) and "http" not in text:
        return False
    return any(marker in text for marker in _TRANSIENT) or bool(_SERVER_STATUS.search(text))


class Backoff:
    """Delays between retries of one read, doubling up to 5 s, within ``deadline`` seconds of
    the first failure since the read last made progress."""

    def __init__(self, deadline: float, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self._deadline = deadline
        self._sleep = sleep
        self._since: float | None = None
        self._delay = _FIRST_DELAY

    def progressed(self) -> None:
        """The read moved on: a later failure gets the whole deadline again."""
        self._since = None
        self._delay = _FIRST_DELAY

    def wait(self, error: BaseException, what: str) -> None:
        """Sleep before the next try, or raise once the deadline has passed."""
        now = time.monotonic()
        if self._since is None:
            self._since = now
        waited = now - self._since
        if waited + self._delay > self._deadline:
            raise StoreUnavailableError(
                f"the object store did not answer for {what} for {waited:.0f} s, past the retry "
                f"deadline of {self._deadline:g} s (s3_retry_seconds or {ENV_RETRY_SECONDS}): "
                f"{redact(str(error)).splitlines()[0] if str(error) else type(error).__name__}"
            ) from None
        self._sleep(self._delay)
        self._delay = min(_MAX_DELAY, self._delay * 2)


def patiently(
    call: Callable[[], T],
    *,
    what: Callable[[BaseException], str],
    deadline: float,
    remote: bool = True,
) -> T:
    """``call()`` (a whole request, or a whole step that only reads), tried again while the
    store does not answer; any other failure passes unchanged. ``what(error)`` names the
    object for the error raised past the deadline."""
    backoff = Backoff(deadline)
    while True:
        try:
            return call()
        except (OSError, ArrowException, duckdb.Error, QueryError) as exc:
            if not (remote and transient(exc)):
                raise
            backoff.wait(exc, what(exc))


def read_whole(
    read: Callable[[], T],
    *,
    what: str,
    remote: bool,
    deadline: float,
    failed: Callable[[Exception], Exception],
) -> T:
    """``read()`` (one request's worth: a footer, a delete file), tried again while the store
    does not answer; any other failure becomes ``failed(error)``."""
    try:
        return patiently(read, what=lambda _: what, deadline=deadline, remote=remote)
    except (OSError, ArrowException) as exc:
        raise failed(exc) from None
