"""Bytes a process tree has read, from ``rchar`` in ``/proc/<pid>/io``.

``rchar`` counts every byte a process received from ``read``-family system calls (``read``,
``pread``, ``readv``), served from the page cache or not, which is how Parquet readers get
local files: it shows whether a filter let the reader skip row groups, where wall time on a
small, cached dataset cannot. It also counts reads of pipes (DataLoader workers talk to the
loop through some), and not ``recv`` on sockets, so it says nothing about S3 reads; compare
figures of the same worker count and only for local files. Exited children that were waited
for are folded into their parent's figure by the kernel, so a sum over the live tree misses
nothing that ended.
"""

from __future__ import annotations

from pathlib import Path

from .memory import process_tree

__all__ = ["read_chars", "tree_read_chars"]


def read_chars(pid: int) -> int:
    """``rchar`` of process ``pid`` (all its threads); 0 once it is gone or unreadable."""
    try:
        text = Path(f"/proc/{pid}/io").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    return 0


def tree_read_chars(pid: int) -> int:
    """Summed :func:`read_chars` of ``pid`` and all its live descendants at this instant."""
    return sum(read_chars(member) for member in process_tree(pid))
