"""What the local servers share: free ports on 127.0.0.1, how long a start may take, a log's end."""

from __future__ import annotations

import socket
from pathlib import Path

__all__ = ["START_TIMEOUT_S", "free_port", "log_tail", "port_is_free"]

START_TIMEOUT_S = 90.0


def free_port(*, below: int = 65536) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
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
