"""Plans kept in a folder or an ``s3://`` prefix, reused while the listed files are unchanged.

Planning reads every Parquet footer and, for a filtering query, counts its rows: minutes for a
large source on a distant store. Listing the files is cheap by comparison (a page of a thousand
objects per request). A plan is kept under a key of what it was asked for (the source as named,
the SQL, the options that change the plan), together with the listing it was made from: every
file's path, size and modification time. A later run lists again; a plan whose listing differs
(a file added, removed, rewritten) is stale, replanned and replaced, never used.

Entries are pickles: whoever can write to the cache can run code in the jobs that read it, as
whoever can write the data can change what they learn. Keep it as private as the data.
S3 keys never enter an entry; the plan read back takes the caller's settings.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from duckstream.core.source import is_remote
from duckstream.redact import get_logger
from duckstream.storage import S3Settings, pyarrow_s3

__all__ = ["Listing", "PlanCache"]

log = get_logger(__name__)

# Bumped whenever what an entry holds, or a plan's layout, changes.
_FORMAT = 1

# Per file: path, size in bytes, modification time in nanoseconds.
Listing = tuple[tuple[str, int, int], ...]


class PlanCache:
    """Plans under ``location``: a local folder or an ``s3://bucket/prefix``."""

    def __init__(self, location: str | os.PathLike[str], s3: S3Settings) -> None:
        self.location = os.fspath(location)
        self.s3 = s3
        self._remote = is_remote(self.location)
        self._filesystem: Any = pyarrow_s3(s3) if self._remote else None

    def key(self, patterns: Sequence[str], sql: str | None, **options: object) -> str:
        """The entry's name for a source as named, its SQL and the options that shape the plan."""
        text = json.dumps(
            [_FORMAT, _package_version(), list(patterns), sql, self.s3.endpoint, options],
            sort_keys=True,
            default=str,
        )
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def listing(self, files: Sequence[str]) -> Listing:
        """Size and modification time of each of ``files``, as the store reports them now."""
        remote = [f for f in files if is_remote(f)]
        found = {entry[0]: entry for entry in self._remote_listing(remote)} if remote else {}
        for path in files:
            if not is_remote(path):
                stat = os.stat(path)
                found[path] = (path, stat.st_size, stat.st_mtime_ns)
        return tuple(found[path] for path in files)

    def _remote_listing(self, files: Sequence[str]) -> Listing:
        from pyarrow import fs

        filesystem = self._filesystem or pyarrow_s3(self.s3)
        located = [f.split("://", 1)[1] for f in files]
        buckets: dict[str, list[str]] = {}
        for path in located:
            buckets.setdefault(path.split("/", 1)[0], []).append(path)
        known: dict[str, fs.FileInfo] = {}
        # One recursive listing per bucket, of the folder its files share: pages of a thousand
        # objects, not a request per file.
        for paths in buckets.values():
            selector = fs.FileSelector(_common_folder(paths), recursive=True, allow_not_found=True)
            known.update((info.path, info) for info in filesystem.get_file_info(selector))
        missing = [p for p in located if p not in known]
        if missing:
            known.update((info.path, info) for info in filesystem.get_file_info(missing))
        entries = []
        for uri, path in zip(files, located, strict=True):
            info = known[path]
            if info.type == fs.FileType.NotFound:
                entries.append((uri, -1, -1))
                continue
            mtime = info.mtime_ns if info.mtime_ns is not None else -1
            entries.append((uri, int(info.size or 0), int(mtime)))
        return tuple(entries)

    def load(self, key: str, listing: Listing) -> Any | None:
        """The plan kept under ``key`` if it was made from exactly ``listing``, else None."""
        data = self._read(key)
        if data is None:
            return None
        try:
            entry = pickle.loads(data)  # as trusted as the data (see above)
            kept, plan = entry["listing"], entry["plan"]
        except Exception:  # a damaged entry is planned anew
            log.info("plan cache entry %s is damaged; planning again", self._where(key))
            return None
        if kept != listing:
            log.info(
                "plan cache entry %s is stale (%s); planning again", self._where(key), _change(kept, listing)
            )
            return None
        return dataclasses.replace(plan, s3=self.s3)

    def store(self, key: str, listing: Listing, plan: Any) -> None:
        """Keep ``plan``, made from ``listing``, under ``key`` (without S3 keys); a cache that
        cannot be written is logged, and planning goes on."""
        anonymous = dataclasses.replace(plan.s3, access_key=None, secret_key=None, session_token=None)
        data = pickle.dumps(
            {"listing": listing, "plan": dataclasses.replace(plan, s3=anonymous)},
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        try:
            self._write(key, data)
        except OSError as exc:  # the plan is good; only the next start pays for planning again
            log.warning("cannot keep the plan in %s: %s", self._where(key), exc)

    def _write(self, key: str, data: bytes) -> None:
        if self._remote:
            # An object appears whole when its upload completes.
            with self._filesystem.open_output_stream(self._path(key)) as out:
                out.write(data)
            return
        directory = Path(self.location)
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / f".{_name(key)}-{os.getpid()}"
        partial.write_bytes(data)
        os.replace(partial, directory / _name(key))  # atomic: racing writers leave one whole entry

    def _read(self, key: str) -> bytes | None:
        if not self._remote:
            try:
                return (Path(self.location) / _name(key)).read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
        try:
            with self._filesystem.open_input_stream(self._path(key)) as stream:
                return bytes(stream.read())
        except FileNotFoundError:
            return None

    def _path(self, key: str) -> str:
        return f"{self.location.split('://', 1)[1].rstrip('/')}/{_name(key)}"

    def _where(self, key: str) -> str:
        return f"{self.location.rstrip('/')}/{_name(key)}"


def _name(key: str) -> str:
    return f"plan-{key}.pickle"


def _common_folder(paths: Sequence[str]) -> str:
    """The deepest folder (``bucket/prefix``) holding every one of ``paths``."""
    return os.path.commonpath(paths) if len(paths) > 1 else paths[0].rsplit("/", 1)[0]


def _change(kept: Listing, now: Listing) -> str:
    """What differs between two listings, in a few words for the log."""
    before = {path: (size, mtime) for path, size, mtime in kept}
    after = {path: (size, mtime) for path, size, mtime in now}
    added = sorted(after.keys() - before.keys())
    removed = sorted(before.keys() - after.keys())
    changed = sorted(p for p in before.keys() & after.keys() if before[p] != after[p])
    for what, paths in (("changed", changed), ("added", added), ("removed", removed)):
        if paths:
            return f"{len(paths)} file(s) {what}, first {paths[0]}"
    return "files listed in another order"


def _package_version() -> str:
    from duckstream import __version__

    return __version__
