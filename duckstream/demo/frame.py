"""The lakehouse walkthrough's frame: where its lakehouse lives, the open lakehouse, and sections.

The sections themselves live beside it in ``data`` (ingest, the run record, OLAP queries),
``streams`` (PyTorch, Hugging Face and Arrow streams), ``reports`` (metrics and quality),
``patterns`` (the lakehouse patterns) and ``tiers`` (streamable tiers, each a recorded run);
:func:`duckstream.demo.run_walkthrough` runs them in order.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb
import pyarrow as pa

from duckstream import engine
from duckstream._closing import ClosesOnExit
from duckstream.catalog import LakehouseCatalog, Run
from duckstream.core.lake import CatalogLocation, LakeTable
from duckstream.demo.render import box_table
from duckstream.errors import ConfigurationError
from duckstream.query import LakehouseQuery
from duckstream.storage import S3Settings

__all__ = [
    "CAPTIONS_TABLE",
    "INGEST_SPLITS",
    "Lakehouse",
    "Section",
    "WalkthroughSettings",
    "render_section",
    "rows_table",
    "short",
]

# The DuckLake table the walkthrough ingests into, and the splits it ingests (the Hub's
# yerevann/coco-karpathy names them so).
CAPTIONS_TABLE = "captions"
INGEST_SPLITS = ("train", "validation")


@dataclass(frozen=True)
class WalkthroughSettings:
    """Where the walkthrough keeps its lakehouse.

    The embedded default needs no server: a catalog file and folders under ``directory``.
    ``catalog`` (a ``postgresql://`` DSN) puts the catalog in PostgreSQL; ``bucket`` puts the
    ingested Parquet and the lake's data files on S3 under ``prefix`` (keys from the arguments,
    else the environment). ``directory`` always holds the generated Hugging Face dataset.
    """

    directory: Path
    images: int = 2_000
    seed: int = 0
    catalog: str | None = None
    bucket: str | None = None
    prefix: str = "duckstream-walkthrough"
    s3_endpoint: str | None = None
    s3_access_key: str | None = field(default=None, repr=False)
    s3_secret_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.images < 20:
            raise ConfigurationError(f"the walkthrough needs at least 20 images, found {self.images}")
        if self.catalog is not None and not self.catalog.startswith(("postgresql://", "postgres://")):
            raise ConfigurationError(
                f"catalog must be a postgresql:// DSN (or None for the embedded default), found "
                f"{self.catalog.split('://')[0]}://..."
            )
        if self.bucket is not None and (not self.bucket or "_" in self.bucket or "/" in self.bucket):
            raise ConfigurationError(f"expected an S3 bucket name (no '_' or '/'), found {self.bucket!r}")

    @property
    def s3(self) -> S3Settings:
        return S3Settings.resolve(self.s3_endpoint, self.s3_access_key, self.s3_secret_key)

    @property
    def hf_dataset(self) -> Path:
        """The generated dataset, saved with ``datasets``' ``save_to_disk``."""
        return self.directory / "hf-coco-karpathy"

    @property
    def raw_location(self) -> str:
        """Where ``sync_from_hf`` writes the raw Parquet tier (a folder or ``s3://`` prefix)."""
        if self.bucket is None:
            return str((self.directory / "raw").resolve())
        return f"s3://{self.bucket}/{self._key('raw')}"

    @property
    def lake_data(self) -> str:
        """Where the DuckLake tables keep their Parquet data files."""
        if self.bucket is None:
            return str((self.directory / "lake").resolve())
        return f"s3://{self.bucket}/{self._key('lake')}"

    @property
    def stream_cache(self) -> Path:
        """The streams' cache (catalog metadata copies, materialised query results)."""
        return self.directory / "stream-cache"

    @property
    def catalog_location(self) -> str:
        return self.catalog or str((self.directory / "catalog.ducklake").resolve())

    def describe(self) -> str:
        """Where things live, without secrets (the DSN's password is never shown)."""
        location = CatalogLocation.parse(self.catalog_location, self.lake_data)
        return f"{location!r}; raw Parquet at {self.raw_location}"

    def _key(self, leaf: str) -> str:
        return "/".join(part for part in (self.prefix.strip("/"), leaf) if part)


@dataclass(frozen=True)
class Section:
    """One section's result: its title, what it prints, and the plain facts behind the print."""

    title: str
    text: str
    facts: Mapping[str, Any]


def render_section(number: int, section: Section) -> str:
    rule = "=" * max(20, len(section.title) + 8)
    return f"\n{rule}\n{number:2d}. {section.title}\n{rule}\n{section.text}"


class Lakehouse(ClosesOnExit):
    """The walkthrough's open lakehouse: its catalog, settings and a way to show results.

    A PostgreSQL catalog that does not answer leaves ``catalog`` None (``catalog_problem``
    says why): the walkthrough then runs the sections that need no catalog, on the raw
    Parquet tier, which :meth:`serve_raw` makes queryable under the lake table's name.
    """

    def __init__(self, settings: WalkthroughSettings) -> None:
        self.settings = settings
        self.s3 = settings.s3
        self.catalog_problem = _unreachable(settings.catalog)
        self.catalog: LakehouseCatalog | None = None
        self._own_con: duckdb.DuckDBPyConnection | None = None
        if self.catalog_problem is not None:
            self._own_con = engine.connect(s3=self.s3)
            return
        self.catalog = LakehouseCatalog(
            settings.catalog_location,
            settings.lake_data,
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key,
        )

    @property
    def recorded(self) -> LakehouseCatalog:
        """The catalog, for the sections that record runs or read snapshots."""
        if self.catalog is None:
            raise ConfigurationError(f"this section needs the catalog, and {self.catalog_problem}")
        return self.catalog

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        if self.catalog is not None:
            return self.catalog.con
        if self._own_con is None:
            raise ConfigurationError("this walkthrough lakehouse is closed")
        return self._own_con

    def serve_raw(self, files: Sequence[str]) -> None:
        """Without a catalog: the raw Parquet ``files`` as a view named like the lake table, so
        that the queries of the sections read the same rows from the raw tier."""
        listed = ", ".join(engine.sql_literal(f) for f in files)
        self.query(f"CREATE OR REPLACE VIEW {CAPTIONS_TABLE} AS SELECT * FROM read_parquet([{listed}])")

    @property
    def s3_keywords(self) -> dict[str, Any]:
        """The S3 keywords of the stream and query APIs, as the settings give them."""
        return {
            "s3_endpoint": self.settings.s3_endpoint,
            "s3_access_key": self.settings.s3_access_key,
            "s3_secret_key": self.settings.s3_secret_key,
        }

    def query_engine(self) -> LakehouseQuery:
        """A LakehouseQuery for the raw Parquet tier, with the walkthrough's S3 settings."""
        settings = self.settings
        return LakehouseQuery(settings.s3_endpoint, settings.s3_access_key, settings.s3_secret_key)

    @property
    def stream_keywords(self) -> dict[str, Any]:
        """Keywords for the streams: S3 settings, and the walkthrough's own stream cache."""
        return {**self.s3_keywords, "cache_dir": str(self.settings.stream_cache)}

    def pinned(self, run: Run) -> LakeTable:
        """The lake table as ``run`` trains on it: pinned to the snapshot its record names."""
        return self.recorded.table(CAPTIONS_TABLE, version=int((run.snapshots or {})[CAPTIONS_TABLE]))

    def last_change(self, table: str) -> int:
        """The snapshot that last changed ``table``: a rerun on unchanged data finds the same one,
        where the catalog's current snapshot moves on with every run recorded."""
        alias = self.recorded.alias
        found = self.scalar(
            f"""SELECT max(s.snapshot_id)
                FROM {alias}.snapshots() s, ducklake_table_info({engine.sql_literal(alias)}) t
                WHERE t.table_name = ?
                  AND (list_contains(flatten(map_values(s.changes)), t.table_id::VARCHAR)
                       OR list_contains(s.changes['tables_created'],
                                        current_schema() || '.' || t.table_name))""",
            [table],
        )
        if found is None:
            raise ConfigurationError(f"the lake has no table {table!r}")
        return int(found)

    def query(self, sql: str, params: Sequence[Any] | None = None) -> pa.Table:
        """Run ``sql`` on the lake's connection; errors name the statement."""
        try:
            return self.con.execute(sql, params).to_arrow_table()
        except duckdb.Error as exc:
            raise engine.query_error(exc, sql, s3=self.s3) from None

    def scalar(self, sql: str, params: Sequence[Any] | None = None) -> Any:
        table = self.query(sql, params)
        return table.column(0)[0].as_py()

    def render(self, table: pa.Table, *, max_rows: int = 40) -> str:
        """``table`` as a plain-text box table, cells never wrapped (long results elided)."""
        return box_table(table, max_rows=max_rows)

    def close(self) -> None:
        if self.catalog is not None:
            self.catalog.close()
        if self._own_con is not None:
            self._own_con.close()
            self._own_con = None


def _unreachable(dsn: str | None) -> str | None:
    """Why the PostgreSQL server of ``dsn`` does not answer, or None when it does (or when the
    catalog is the embedded file). A server that answers with a refusal (a wrong password, no
    such database) is not this: opening the catalog then fails with PostgreSQL's reason."""
    if dsn is None:
        return None
    parts = urlsplit(dsn)
    host, port = parts.hostname or "localhost", parts.port or 5432
    try:
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        return f"PostgreSQL at {host}:{port} does not answer ({exc.strerror or exc})"
    return None


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Plain dict rows as an Arrow table (for rendering values computed in Python)."""
    return pa.Table.from_pylist([dict(row) for row in rows])


def short(text: str, width: int = 60) -> str:
    """``text`` cut to ``width`` characters, for table cells."""
    return text if len(text) <= width else text[: width - 1] + "…"
