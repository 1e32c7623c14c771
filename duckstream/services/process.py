"""What the local servers share: free ports on 127.0.0.1, how long a start may take, a log's end."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

__all__ = ["START_TIMEOUT_S", "ephemeral_ports", "free_port", "log_tail", "port_is_free"]

START_TIMEOUT_S = 90.0

# Below this lie the well-known services (PostgreSQL's 5432, MySQL's 3306, ...).
_LOWEST_PORT = 10000
_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_DEFAULT_EPHEMERAL = (32768, 60999)


def ephemeral_ports() -> tuple[int, int]:
    """The kernel's range of ports for outgoing connections (Linux's default elsewhere)."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return _DEFAULT_EPHEMERAL
    return low, high


def free_port(*, below: int = 65536, paired_offset: int = 0) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, drawn outside the ephemeral range.

    A port that ``bind(("", 0))`` hands out comes from the ephemeral range, where every outgoing
    connection of the machine also takes its source port: a server started on it a moment later
    can find it taken (SeaweedFS then exits with "listener ... error"). ``paired_offset`` asks for
    ``port + paired_offset`` to be free and below ``below`` as well (SeaweedFS's gRPC ports).
    """
    low, high = ephemeral_ports()
    # Ranges [start, stop) of ports whose pair (port + paired_offset) stays on the same side.
    ranges = [
        (start, stop)
        for start, stop in (
            (_LOWEST_PORT, min(low, below) - paired_offset),
            (high + 1, min(65536, below) - paired_offset),
        )
        if stop > start
    ]
    if ranges:
        for _ in range(100):
            # Not `random`: processes that seed it alike would draw the same ports.
            port = _nth_port(ranges, secrets.randbelow(sum(stop - start for start, stop in ranges)))
            if port_is_free(port) and (not paired_offset or port_is_free(port + paired_offset)):
                return port
    return _any_free_port(below=below, paired_offset=paired_offset)


def _nth_port(ranges: list[tuple[int, int]], index: int) -> int:
    """The ``index``-th port of ``ranges`` taken one after another."""
    for start, stop in ranges:
        if index < stop - start:
            return start + index
        index -= stop - start
    raise IndexError(index)


def _any_free_port(*, below: int, paired_offset: int) -> int:
    """A port the kernel hands out, for machines whose ephemeral range leaves no room outside."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + paired_offset < below and (not paired_offset or port_is_free(port + paired_offset)):
            return port


def port_is_free(port: int) -> bool:
    """Whether nothing listens on TCP port ``port`` of 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def log_tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of the log at ``path``, to quote in an error."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
