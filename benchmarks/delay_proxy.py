"""A loopback TCP proxy that holds each request back a few milliseconds: an object store's latency.

A local S3 server answers in well under a millisecond, so a loader that waits for one request
before sending the next looks as fast as one that keeps several in flight. A real object store
takes tens of milliseconds to answer each request; this proxy puts that back in front of the
local server, so the benchmark shows whether reads overlap.

What counts as a request: on each connection (HTTP/1.1 keep-alive, no pipelining, which is how
DuckDB's httpfs and pyarrow's S3 client talk), the first bytes the client sends after the
server last answered. Those are held ``delay`` seconds; the rest of the request (a body sent in
several chunks) and every byte of the answer pass straight through. A connection's requests
are thus delayed one after another, and requests on separate connections at the same time.

Run on its own: ``python -m duckstream.benchmarks.delay_proxy --upstream 127.0.0.1:8333``.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType

__all__ = ["DelayProxy", "main"]

_CHUNK = 256 * 1024


class DelayProxy:
    """Forwards connections on ``127.0.0.1:<port>`` to ``upstream``, each request ``delay`` s late.

    ``requests`` and ``bytes_down`` count what passed (for a sanity check of what a run sent).
    """

    def __init__(self, upstream: str, *, delay: float, port: int = 0) -> None:
        host, _, upstream_port = upstream.rpartition(":")
        if not host or not upstream_port.isdigit():
            raise ValueError(f"expected upstream as host:port, found {upstream!r}")
        if delay < 0:
            raise ValueError(f"delay must be 0 or more seconds, found {delay}")
        self.upstream = (host, int(upstream_port))
        self.delay = delay
        self.requests = 0
        self.bytes_down = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", port))
        self._closed = False
        self._thread = threading.Thread(target=self._accept, name="delay-proxy", daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<port>``: where clients connect instead of ``upstream``."""
        host, port = self._listener.getsockname()[:2]
        return f"{host}:{port}"

    def close(self) -> None:
        """Stop accepting connections; open ones end when either side closes."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._thread.join(timeout=5)

    def __enter__(self) -> DelayProxy:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            try:
                server = socket.create_connection(self.upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _Link(self, client, server).start()

    def _count(self, requests: int = 0, bytes_down: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.bytes_down += bytes_down


class _Link:
    """One client connection and its upstream connection: a pump thread each way."""

    def __init__(self, proxy: DelayProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        # True until the client starts a request, again once the server has answered it.
        self.awaiting_request = True
        self._done = 0
        self._lock = threading.Lock()

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.server, True), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.server, self.client, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = source.recv(_CHUNK)
                if not data:
                    break
                if upstream:
                    if self.awaiting_request:
                        self.awaiting_request = False
                        self.proxy._count(requests=1)
                        time.sleep(self.proxy.delay)
                else:
                    self.awaiting_request = True
                    self.proxy._count(bytes_down=len(data))
                sink.sendall(data)
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)  # pass the half-close on
        except OSError:
            # A reset on one side: drop both, as a direct connection would have been dropped.
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                self._done += 1
                last = self._done == 2
            if last:
                self.client.close()
                self.server.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run a proxy until interrupted, printing the endpoint to use."""
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.delay_proxy", description=__doc__)
    parser.add_argument("--upstream", required=True, help="host:port of the server, e.g. 127.0.0.1:8333")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="milliseconds added to each request")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: a free one)")
    args = parser.parse_args(argv)
    with DelayProxy(args.upstream, delay=args.delay_ms / 1000, port=args.port) as proxy:
        print(f"forwarding {proxy.endpoint} -> {args.upstream}, +{args.delay_ms:g} ms a request", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
