"""Running a command with stderr on a terminal or a pipe: progress bars show on the one only."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios


def stderr_of(argv: list[str], *, terminal: bool, timeout: float = 300) -> str:
    """What ``argv`` writes to stderr, a pseudo-terminal's or a pipe's; it must succeed."""
    if not terminal:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr
        return done.stderr
    leader, follower = pty.openpty()
    # A terminal 120 columns wide (a new pseudo-terminal has none, and the bar would be empty).
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
    try:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=follower)
        os.close(follower)
        chunks: list[bytes] = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=timeout) == 0
    finally:
        os.close(leader)
    return b"".join(chunks).decode(errors="replace")
