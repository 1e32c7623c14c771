"""Copies a cache folder no longer needs: those of an earlier version of a file, once its new
copy is made; those of local files that are gone; and those no read has used for
:data:`UNUSED_COPY_SECONDS`.

A shuffled read copies files of a few large row groups into the cache folder (see
:mod:`duckstream.core.recut`), by default the temporary folder's ``duckstream-cache``. A
dataset written anew under other names, day after day, would leave a copy of every version
behind. A copy names its file in its footer; a read marks a copy used (its lock file's time)
the first time its process reads it. The folder is looked over when a process first makes or
uses a copy in it, at most once every :data:`_LOOK_EVERY_SECONDS` (a marker file's time): a
process that copies a thousand files reads no thousand footers a copy. A copy removed under
a read that still wants it is made again, as a missing one is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.core.source import is_remote
from duckstream.redact import get_logger, redact

__all__ = ["COPY_OF", "UNUSED_COPY_SECONDS", "lock_of", "mark_used", "prune", "remove_older"]

log = get_logger(__name__)

# The footer key that names the file a copy was made of.
COPY_OF = b"duckstream.copy_of"
UNUSED_COPY_SECONDS = 30 * 24 * 3600
_LOOK_EVERY_SECONDS = 3600
_MARKER = ".recut-looked-over"


def lock_of(copy: Path) -> Path:
    """The lock file of ``copy``, taken while it is written; its time is when it was last used."""
    return copy.with_name(f".{copy.stem}.lock")


def mark_used(copy: Path) -> None:
    """Note that a read uses ``copy`` now."""
    try:
        lock_of(copy).touch()
    except OSError:
        pass  # a folder others own: the copy may be removed after a month, and made again


def remove_older(path: str, directory: Path, source: str, version: str) -> None:
    """Remove the copies of other versions of the file ``path`` (named ``recut-source-*``,
    see :func:`duckstream.core.recut.local_copy`): a file rewritten in place leaves no copy of
    its old rows behind in the cache folder. A read still planned on an old version fails on
    the file itself, copy or none."""
    older = [
        found for found in directory.glob(f"recut-{source}-*.parquet") if f"-{version}-" not in found.name
    ]
    for found in older:
        _remove(found)
    if older:
        log.info("removed %d copies of an earlier version of %s from %s", len(older), redact(path), directory)


def prune(directory: Path, *, now: float | None = None) -> int:
    """Remove the copies in ``directory`` of local files that are gone and those unused for
    :data:`UNUSED_COPY_SECONDS`, unless the folder was looked over in the last hour; return
    how many were removed."""
    now = time.time() if now is None else now
    marker = directory / _MARKER
    try:
        if now - marker.stat().st_mtime < _LOOK_EVERY_SECONDS:
            return 0
    except FileNotFoundError:
        pass
    try:
        marker.touch()
        os.utime(marker, (now, now))
    except OSError:
        return 0
    removed = 0
    for copy in directory.glob("recut-*.parquet"):
        lock = lock_of(copy)
        try:
            used = max(copy.stat().st_mtime, lock.stat().st_mtime if lock.exists() else 0.0)
        except FileNotFoundError:
            continue  # removed meanwhile by another process
        if now - used > UNUSED_COPY_SECONDS or _source_gone(copy):
            try:
                _remove(copy)
            except OSError as exc:  # a folder shared with others: theirs stay
                log.debug("cannot remove %s: %s", copy, exc)
                continue
            removed += 1
    if removed:
        log.info(
            "removed %d copies from %s: their files are gone, or no read used them for %d days",
            removed,
            directory,
            UNUSED_COPY_SECONDS // 86_400,
        )
    return removed


def _source_gone(copy: Path) -> bool:
    """Whether the local file ``copy`` was made of no longer exists (a copy of an object, or
    one that does not name its file, is kept until unused)."""
    try:
        named = (pq.read_schema(copy).metadata or {}).get(COPY_OF)
    except (OSError, pa.ArrowException):
        return False
    if named is None:
        return False
    source = named.decode()
    return not is_remote(source) and not os.path.exists(source.removeprefix("file://"))


def _remove(copy: Path) -> None:
    copy.unlink(missing_ok=True)
    lock_of(copy).unlink(missing_ok=True)
