"""The read paths the benchmark measures: what SQL each runs, where it reads, and its floor.

A path is one way a training run reaches its rows (a plain column selection, an expression, a
filter, a DuckLake table over local files or S3 objects, S3, S3 with latency). Each is measured
beside the scan it should be judged against, so that a slow path shows as a low ratio instead of
hiding in an absolute figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = [
    "ALL_PATHS",
    "LakeCatalogKind",
    "PathGroup",
    "PathName",
    "ReadPath",
    "expand",
    "path_sql",
    "read_path",
]

# What `--path` selects: `filter` brings its 1% variant, `lake` one table per catalog kind (and,
# with PostgreSQL, one over the S3 objects).
PathGroup = Literal["plain", "expr", "filter", "lake", "s3", "s3-delay"]
# What the table shows, in table order (a path's baseline above it).
PathName = Literal[
    "plain", "expr", "filter", "filter1pct", "filter-skip", "lake", "lake-pg", "s3", "lake-s3", "s3-delay"
]
# Where a DuckLake catalog lives: a DuckDB file (the embedded default) or PostgreSQL.
LakeCatalogKind = Literal["duckdb", "postgres"]


@dataclass(frozen=True, kw_only=True)
class ReadPath:
    """One read path and what it is compared with.

    ``floor`` names the path whose pyarrow scans are this path's floor: the local scan for
    everything that reads the local files (a DuckLake table here references the same files),
    the scan of the same objects for S3 (the ``lake-s3`` table's included). ``baseline`` names a
    duckstream path this one should come close to (``target``: the ratio wanted), e.g. the lake
    against reading its files plainly.
    """

    name: PathName
    group: PathGroup
    floor: PathName
    where: Literal["", "half", "1pct"] = ""  # the filter, if any
    expression: bool = False  # captions[1] instead of the captions list
    lake: LakeCatalogKind | None = None
    remote: bool = False  # objects on S3: bytes read through sockets are not counted
    baseline: PathName | None = None
    target: float | None = None
    compare_bytes: bool = False  # report bytes read against the plain path's
    count: Literal["exact", "skip"] = "exact"  # skip: the filter planned uncounted, run per batch

    @property
    def filters(self) -> bool:
        """Whether the path drops rows: its rows/s then counts rows scanned, not rows delivered."""
        return bool(self.where)

    @property
    def same_rows_as_floor(self) -> bool:
        """Whether it delivers what its floor scans (so the Python-objects pair compares like for like)."""
        return not self.where and not self.expression

    @property
    def is_floor(self) -> bool:
        """Whether the pyarrow floors are measured on this path (and shown under its name)."""
        return self.floor == self.name


ALL_PATHS: tuple[ReadPath, ...] = (
    ReadPath(name="plain", group="plain", floor="plain"),
    ReadPath(name="expr", group="expr", floor="plain", expression=True),
    ReadPath(name="filter", group="filter", floor="plain", where="half"),
    ReadPath(name="filter1pct", group="filter", floor="plain", where="1pct", compare_bytes=True),
    # The half filter planned without counting it (count="skip"): against the counted one.
    ReadPath(
        name="filter-skip", group="filter", floor="plain", where="half", count="skip", baseline="filter"
    ),
    ReadPath(name="lake", group="lake", floor="plain", lake="duckdb", baseline="plain", target=0.9),
    ReadPath(name="lake-pg", group="lake", floor="plain", lake="postgres", baseline="plain", target=0.9),
    ReadPath(name="s3", group="s3", floor="s3", remote=True),
    # A lake many machines can share: the catalog in PostgreSQL, its files the s3 path's objects,
    # so that lake-s3 / s3 is what the catalog costs when the files are remote.
    ReadPath(
        name="lake-s3", group="lake", floor="s3", lake="postgres", remote=True, baseline="s3", target=0.9
    ),
    ReadPath(name="s3-delay", group="s3-delay", floor="s3-delay", remote=True, baseline="s3", target=0.7),
)
assert tuple(p.name for p in ALL_PATHS) == get_args(PathName)

_BY_NAME = {p.name: p for p in ALL_PATHS}


def read_path(name: PathName) -> ReadPath:
    """The path called ``name``."""
    return _BY_NAME[name]


def expand(
    groups: Iterable[PathGroup], lake_catalogs: Sequence[LakeCatalogKind]
) -> tuple[tuple[ReadPath, bool], ...]:
    """The paths ``groups`` select, with those they are judged against, in table order.

    Each comes with whether duckstream runs on it: on the paths asked for and on their
    duckstream baselines (``lake`` brings ``plain``, and ``s3`` for ``lake-s3``; ``s3-delay``
    brings ``s3``). A path brought in only as a floor (``plain`` when ``expr`` alone is asked
    for) runs its pyarrow scans and nothing else. ``lake`` gives one path per catalog kind in
    ``lake_catalogs``, and ``lake-s3`` with ``postgres``.
    """
    wanted = set(groups)
    asked = {p.name for p in ALL_PATHS if p.group in wanted and (p.lake is None or p.lake in lake_catalogs)}
    asked |= {p.baseline for p in ALL_PATHS if p.name in asked and p.baseline is not None}
    asked |= {"plain" for p in ALL_PATHS if p.name in asked and p.compare_bytes}
    needed = asked | {read_path(name).floor for name in asked}
    return tuple((p, p.name in asked) for p in ALL_PATHS if p.name in needed)


def path_sql(path: ReadPath, columns: Sequence[str], rows: int) -> str:
    """The query duckstream runs for ``path`` over a dataset of ``columns`` and ``rows`` rows.

    ``captions`` is a list of strings; DuckDB indexes lists from 1. ``id`` runs from 0 in
    storage order, so ``id < rows/100`` keeps the first 1% and lets row-group statistics prune.
    """
    selected = ["captions[1] AS caption" if path.expression and c == "captions" else c for c in columns]
    sql = f"SELECT {', '.join(selected)} FROM source"
    if path.where == "half":
        sql += " WHERE id % 2 = 0"
    elif path.where == "1pct":
        sql += f" WHERE id < {max(1, rows // 100)}"
    return sql
