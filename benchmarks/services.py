"""The servers some read paths need (SeaweedFS for S3, PostgreSQL for a lake catalog, the delay proxy).

Each starts on first use, once per benchmark run, and all stop at the end, as the test
fixtures do. A server that cannot start (its binary missing, say) makes the paths that need
it *unavailable*: the table then says so on their lines instead of leaving them out.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TypeVar

from duckstream.errors import ServiceError
from duckstream.services import PostgresCluster, PostgresService, S3Service, SeaweedFS

from .delay_proxy import DelayProxy

__all__ = ["BenchServices", "Unavailable"]

T = TypeVar("T")


class Unavailable(Exception):
    """A path cannot run on this machine; the message says why (shown as ``skipped: <why>``)."""


class BenchServices:
    """Starts SeaweedFS, PostgreSQL and the delay proxy when first asked; stops them on close.

    A server that failed to start is not tried again: every later request raises the same
    :class:`Unavailable`.
    """

    def __init__(self, *, s3_delay: float, echo: Callable[[str], None] = print) -> None:
        self._s3_delay = s3_delay
        self._echo = echo
        self._seaweed: SeaweedFS | None = None
        self._cluster: PostgresCluster | None = None
        self._proxy: DelayProxy | None = None
        self._started: dict[str, object] = {}
        self._failed: dict[str, str] = {}

    def s3(self) -> S3Service:
        """A running SeaweedFS S3 server."""

        def start() -> S3Service:
            self._seaweed = SeaweedFS()
            return self._seaweed.start()

        return self._once("SeaweedFS", start, S3Service)

    def delayed_s3(self) -> str:
        """``host:port`` of the delay proxy in front of :meth:`s3`."""
        upstream = self.s3().endpoint

        def start() -> DelayProxy:
            self._proxy = DelayProxy(upstream, delay=self._s3_delay)
            return self._proxy

        return self._once("the delay proxy", start, DelayProxy).endpoint

    def postgres(self) -> PostgresService:
        """A running throwaway PostgreSQL cluster."""

        def start() -> PostgresService:
            self._cluster = PostgresCluster()
            return self._cluster.start()

        return self._once("PostgreSQL", start, PostgresService)

    def _once(self, name: str, start: Callable[[], object], kind: type[T]) -> T:
        if name in self._failed:
            raise Unavailable(self._failed[name])
        if name not in self._started:
            self._echo(f"starting {name}")
            try:
                self._started[name] = start()
            except (ServiceError, OSError) as exc:
                self._failed[name] = f"{name} did not start: {exc}".splitlines()[0]
                raise Unavailable(self._failed[name]) from None
        found = self._started[name]
        assert isinstance(found, kind)
        return found

    def close(self) -> None:
        """Stop whatever was started; closing twice is harmless."""
        if self._proxy is not None:
            self._proxy.close()
        if self._cluster is not None:
            self._cluster.stop()
        if self._seaweed is not None:
            self._seaweed.stop()
        self._proxy = self._cluster = self._seaweed = None
        self._started.clear()

    def __enter__(self) -> BenchServices:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
