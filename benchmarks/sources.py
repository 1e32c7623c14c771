"""Where each read path reads a dataset from, as arguments and environment for the epoch process.

The local paths read the generated folder; the lake paths a DuckLake table over the same
files; the S3 paths the same files uploaded once per run to the bench's own SeaweedFS, directly
or through the delay proxy; ``lake-s3`` a DuckLake table over those objects. Secrets (S3 keys,
the PostgreSQL password) go in the environment only, never on a command line or in the output.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .datasets import DatasetSpec
from .lake import LakeLocation, add_files, ensure_file_lake
from .paths import ReadPath
from .services import BenchServices

__all__ = ["BUCKET", "Sources", "Target"]

BUCKET = "duckstream-bench"  # S3 bucket names cannot hold "_"


@dataclass(frozen=True, kw_only=True)
class Target:
    """What the epoch process needs to read one path: command-line arguments and environment."""

    args: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


class Sources:
    """Makes each path's copy (an upload, a catalog) of a dataset on first use, and remembers it.

    Raises :class:`~.services.Unavailable` for a path whose server cannot start.
    """

    def __init__(self, services: BenchServices, *, echo: Callable[[str], None] = print) -> None:
        self._services = services
        self._echo = echo
        self._targets: dict[tuple[str, str], Target | Exception] = {}
        self._uploaded: set[str] = set()
        self._pg_lakes: dict[tuple[str, str], LakeLocation] = {}
        self._scratch: tempfile.TemporaryDirectory[str] | None = None

    def target(self, path: ReadPath, spec: DatasetSpec, source: Path) -> Target:
        """How the epoch process reads ``spec``'s dataset (generated in ``source``) along ``path``.

        Made once per path and dataset: a later call returns the same target, or raises the
        same error, without trying again.
        """
        key = (path.name, spec.name)
        if key not in self._targets:
            try:
                self._targets[key] = self._make(path, spec, source)
            except Exception as exc:
                self._targets[key] = exc
        found = self._targets[key]
        if isinstance(found, Exception):
            raise found
        return found

    def _make(self, path: ReadPath, spec: DatasetSpec, source: Path) -> Target:
        if path.lake == "duckdb":
            return _lake_target(ensure_file_lake(source))
        if path.lake == "postgres":
            return self._pg_lake(path, spec, source)
        if path.remote:
            uri = self._upload(spec, source)
            delayed = f"http://{self._services.delayed_s3()}" if path.name == "s3-delay" else None
            return Target(args=(f"--source={uri}",), env=self._s3_env(delayed))
        return Target(args=(f"--source={source}",))

    def _s3_env(self, endpoint: str | None = None) -> dict[str, str]:
        """The read-only S3 identity for the epoch process, at ``endpoint`` (default: the server's)."""
        s3 = self._services.s3().settings(read_only=True)
        return {
            "DUCKSTREAM_S3_ENDPOINT": endpoint or s3.endpoint_url or "",
            "AWS_ACCESS_KEY_ID": s3.access_key or "",
            "AWS_SECRET_ACCESS_KEY": s3.secret_key or "",
            "AWS_SESSION_TOKEN": "",
        }

    def _upload(self, spec: DatasetSpec, source: Path) -> str:
        """``s3://bucket/<dataset name>``, its objects uploaded from ``source`` once per run."""
        uri = f"s3://{BUCKET}/{spec.name}"
        if spec.name in self._uploaded:
            return uri
        client = self._services.s3().boto3_client()
        if BUCKET not in {bucket["Name"] for bucket in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=BUCKET)
        files = sorted(source.glob("*.parquet"))
        self._echo(f"uploading {len(files)} files to {uri}")
        for file in files:
            client.upload_file(str(file), BUCKET, f"{spec.name}/{file.name}")
        self._uploaded.add(spec.name)
        return uri

    def _pg_lake(self, path: ReadPath, spec: DatasetSpec, source: Path) -> Target:
        """A DuckLake catalog in PostgreSQL over ``source``'s files, made once per run.

        On a remote path (``lake-s3``) the table's files are the S3 path's objects instead, and
        the epoch process gets the read-only S3 identity besides the password.
        """
        from duckstream.catalog import LakehouseCatalog

        server = self._services.postgres()
        s3 = self._services.s3() if path.remote else None  # unavailable: skipped, like the s3 path
        key = (path.name, spec.name)
        if key not in self._pg_lakes:
            database = re.sub(r"[^a-z0-9]+", "_", f"{path.name} {spec.name}".lower())[:63]
            server.create_database(database)
            # DuckLake writes nothing under the data path: the table only references files.
            uri: str | None = None
            keys: tuple[str | None, ...] = ()
            if s3 is None:
                if self._scratch is None:
                    self._scratch = tempfile.TemporaryDirectory(prefix="duckstream-bench-lake-")
                data_path = str(Path(self._scratch.name) / database)
            else:
                data_path = f"s3://{BUCKET}/{spec.name}.lake"
                uri = self._upload(spec, source)
                keys = (s3.endpoint_url, s3.access_key, s3.secret_key)  # the admin identity
            with LakehouseCatalog(server.dsn(database), data_path, *keys) as catalog:
                add_files(catalog.con, source, uri=uri)
            # The password travels as PGPASSWORD, which libpq (and so DuckDB) reads.
            dsn = f"postgresql://{server.user}@{server.host}:{server.port}/{database}"
            self._pg_lakes[key] = LakeLocation(catalog=dsn, data_path=data_path)
        env = {"PGPASSWORD": server.password, **(self._s3_env() if s3 is not None else {})}
        return _lake_target(self._pg_lakes[key], env=env)

    def close(self) -> None:
        """Remove the scratch folder of the PostgreSQL lakes' (empty) data paths."""
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _lake_target(location: LakeLocation, env: Mapping[str, str] | None = None) -> Target:
    args = (f"--lake-catalog={location.catalog}", f"--lake-data-path={location.data_path}")
    return Target(args=args, env=dict(env or {}))
