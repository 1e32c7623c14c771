"""Peak resident memory of a whole process tree (a command and all its descendants), sampled from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SampledRun", "process_tree", "rss_bytes", "run_sampled", "tree_rss_bytes"]

_PROC = Path("/proc")


@dataclass(frozen=True, kw_only=True)
class SampledRun:
    """How a command ended, what it printed, and the peak of its process tree's summed RSS."""

    returncode: int
    stdout: str
    stderr: str
    peak_rss_bytes: int
    samples: int
    timed_out: bool


def rss_bytes(pid: int) -> int:
    """Memory of one process: its proportional share (``Pss``), else ``VmRSS``; 0 once gone.

    Pss splits each shared page among the processes that map it, so a tree's sum counts the
    copy-on-write memory of forked DataLoader workers and shared libraries once, not per worker.
    """
    try:
        rollup = (_PROC / str(pid) / "smaps_rollup").read_text()
        for line in rollup.splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError:
        pass
    try:
        status = (_PROC / str(pid) / "status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants, parents before children."""
    tree = [pid]
    children_of = _children_reader()
    index = 0
    while index < len(tree):
        tree.extend(children_of(tree[index]))
        index += 1
    return tree


def tree_rss_bytes(pid: int) -> int:
    """Summed memory (:func:`rss_bytes`) of ``pid`` and all its descendants at this instant."""
    return sum(rss_bytes(member) for member in process_tree(pid))


def run_sampled(
    command: Sequence[str],
    *,
    interval: float = 0.05,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
    sample: bool = True,
) -> SampledRun:
    """Run ``command`` to its end, sampling its process tree's RSS every ``interval`` seconds.

    The command runs in a session of its own; on timeout (or if this process is interrupted)
    that whole session is killed, DataLoader workers included. ``sample=False`` only waits
    (``peak_rss_bytes`` is then 0): reading ``smaps_rollup`` walks every mapping of every
    process, which on few cores slows a tree of large processes measurably.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(
            list(command),
            stdout=out,
            stderr=err,
            env=dict(env) if env is not None else None,
            start_new_session=True,
        )
        peak = samples = 0
        timed_out = False
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while process.poll() is None:
                if sample:
                    peak = max(peak, tree_rss_bytes(process.pid))
                    samples += 1
                if deadline is not None and time.monotonic() > deadline:
                    timed_out = True
                    break
                time.sleep(interval)
        finally:
            if process.poll() is None:
                _kill_session(process)
        out.seek(0)
        err.seek(0)
        return SampledRun(
            returncode=process.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
            peak_rss_bytes=peak,
            samples=samples,
            timed_out=timed_out,
        )


def _kill_session(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def _children_reader() -> Callable[[int], list[int]]:
    # /proc/<pid>/task/<tid>/children needs CONFIG_PROC_CHILDREN; some kernels (microVMs among
    # them) lack it, and then one scan of the parent ids in /proc/<pid>/stat stands in for it.
    if (_PROC / "self" / "task" / str(os.getpid()) / "children").exists():
        return _children_from_task_files
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if entry.name.isdigit():
            parent = _parent_of(entry)
            if parent is not None:
                children.setdefault(parent, []).append(int(entry.name))
    return lambda pid: children.get(pid, [])


def _children_from_task_files(pid: int) -> list[int]:
    children: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:
            continue
    return children


def _parent_of(process_dir: Path) -> int | None:
    try:
        stat = (process_dir / "stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ')'.
    fields = stat.rpartition(")")[2].split()
    return int(fields[1]) if len(fields) > 1 else None
