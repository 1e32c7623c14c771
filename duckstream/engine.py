"""The one place that opens DuckDB connections: offline extensions, S3 secrets, limits, errors."""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterable
from pathlib import Path

import duckdb

from duckstream.errors import ConfigurationError, ExtensionError, QueryError, S3AccessError
from duckstream.redact import get_logger, redact
from duckstream.storage import S3Settings

__all__ = [
    "ALL_EXTENSIONS",
    "connect",
    "create_s3_secret",
    "extension_path",
    "load_extension",
    "query_error",
    "sql_literal",
]

log = get_logger(__name__)

# DuckDB extension name -> the pip package that ships its binary for this duckdb version.
EXTENSION_PACKAGES: dict[str, str] = {
    "ducklake": "duckdb-extension-ducklake",
    "httpfs": "duckdb-extension-httpfs",
    "postgres_scanner": "duckdb-extension-postgres-scanner",
}
ALL_EXTENSIONS: tuple[str, ...] = tuple(EXTENSION_PACKAGES)

S3_SECRET_NAME = "duckstream_s3"


def extension_path(name: str) -> Path | None:
    """The extension binary shipped by its pip package for the running duckdb, if installed."""
    package = EXTENSION_PACKAGES.get(name)
    if package is None:
        return None
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        return None
    version = duckdb.__version__
    for root in spec.submodule_search_locations:
        candidate = Path(root, "extensions", f"v{version}", f"{name}.duckdb_extension")
        if candidate.is_file():
            return candidate
    return None


def load_extension(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Load ``name`` from its pip package; fall back to DuckDB's own ``INSTALL`` + ``LOAD``."""
    path = extension_path(name)
    try:
        if path is not None:
            con.execute(f"LOAD {sql_literal(str(path))}")
            return
        log.debug("no pip package ships DuckDB extension %s; trying INSTALL", name)
        con.execute(f"INSTALL {name}")
        con.execute(f"LOAD {name}")
    except duckdb.Error as exc:
        package = EXTENSION_PACKAGES.get(name, f"duckdb-extension-{name.replace('_', '-')}")
        raise ExtensionError(
            f"could not load DuckDB extension {name!r} (duckdb {duckdb.__version__}): "
            f"{_first_line(str(exc))}; install the matching binary with "
            f"pip install '{package}=={duckdb.__version__}'"
        ) from None


def connect(
    database: str = ":memory:",
    *,
    s3: S3Settings | None = None,
    extensions: Iterable[str] = ("httpfs",),
    threads: int | None = None,
    memory_limit: str | None = None,
    read_only: bool = False,
    config: dict[str, str | bool | int | float] | None = None,
) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection with ``extensions`` loaded, an S3 secret and resource limits.

    ``s3`` defaults to :meth:`S3Settings.resolve` (the environment). ``threads`` and
    ``memory_limit`` (``"4GB"``) cap DuckDB; None keeps its defaults. ``config`` passes other
    DuckDB settings at open time.
    """
    if threads is not None and threads < 1:
        raise ConfigurationError(f"threads must be at least 1, found {threads}")
    settings: dict[str, str | bool | int | float | list[str]] = {
        # Extensions come from pip packages; a silent download attempt would only fail offline.
        "autoinstall_known_extensions": False,
        **(config or {}),
    }
    if threads is not None:
        settings["threads"] = threads
    if memory_limit is not None:
        settings["memory_limit"] = memory_limit
    try:
        con = duckdb.connect(database, read_only=read_only, config=settings)
    except duckdb.Error as exc:
        raise ConfigurationError(
            f"could not open DuckDB database {database!r}: {_first_line(redact(str(exc)))}"
        ) from None
    names = tuple(extensions)
    try:
        for name in names:
            load_extension(con, name)
        if "httpfs" in names:  # S3 secrets belong to httpfs; without it there is no S3 to reach
            create_s3_secret(con, S3Settings.resolve() if s3 is None else s3)
    except BaseException:
        con.close()
        raise
    return con


def create_s3_secret(con: duckdb.DuckDBPyConnection, s3: S3Settings) -> None:
    """Create (or replace) the connection's S3 secret; without credentials or endpoint, none."""
    if not s3.has_credentials and s3.endpoint is None:
        return
    fields = {
        "TYPE": "s3",
        "REGION": sql_literal(s3.region),
        "URL_STYLE": sql_literal(s3.url_style),
        "USE_SSL": "true" if s3.use_ssl else "false",
    }
    if s3.endpoint is not None:
        fields["ENDPOINT"] = sql_literal(s3.endpoint)
    if s3.access_key is not None and s3.secret_key is not None:
        fields["KEY_ID"] = sql_literal(s3.access_key)
        fields["SECRET"] = sql_literal(s3.secret_key)
        if s3.session_token:
            fields["SESSION_TOKEN"] = sql_literal(s3.session_token)
    body = ", ".join(f"{key} {value}" for key, value in fields.items())
    try:
        con.execute(f"CREATE OR REPLACE SECRET {S3_SECRET_NAME} ({body})")
    except duckdb.Error as exc:
        raise ConfigurationError(
            f"could not create the S3 secret for {s3!r}: {_first_line(redact(str(exc)))}"
        ) from None
    log.debug("S3 secret set for %r", s3)


def sql_literal(value: str) -> str:
    """``value`` as a single-quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


# Paths DuckDB quotes in its messages: URIs, and anything that looks like a data file.
_QUOTED = re.compile(r"""['"]([^'"\n]+)['"]""")
_FILE_LIKE = re.compile(
    r"(?i)^([a-z][a-z0-9+.-]*://|/|\./|[^ ]*\.(parquet|csv|json|ndjson|ducklake|duckdb)$)"
)
_S3_DENIED = re.compile(
    r"HTTP 403|SignatureDoesNotMatch|InvalidAccessKeyId|AccessDenied|Authentication Failure"
)
_STATEMENT_PREVIEW = 300
_HINT_PREFIXES = ("Candidate bindings", "Did you mean", "Candidate tables")


# PostgreSQL refusing a catalog's user or password: waiting cannot fix that, so it is no outage.
_CREDENTIALS_REFUSED = ("password authentication failed", "no password supplied", "no pg_hba.conf entry")


def credentials_refused(message: str) -> bool:
    """Whether an error message (unredacted: a masked secret may cut a word) says PostgreSQL
    refused the user or password."""
    text = message.lower()
    return any(marker in text for marker in _CREDENTIALS_REFUSED)


def query_error(exc: duckdb.Error, statement: str, *, s3: S3Settings | None = None) -> QueryError:
    """Translate a DuckDB error into a :class:`QueryError` naming the statement and files.

    Secrets are removed from every part. The caller raises it ``from None``: DuckDB's own
    exception may echo a secret and must not ride along as ``__cause__``.
    """
    secrets = (s3.access_key, s3.secret_key, s3.session_token) if s3 is not None else ()
    message = redact(str(exc), secrets)
    clean_sql = redact(statement, secrets)
    files = tuple(dict.fromkeys(m for m in _QUOTED.findall(message) if _FILE_LIKE.match(m.strip())))
    one_line_sql = " ".join(clean_sql.split())
    if len(one_line_sql) > _STATEMENT_PREVIEW:
        one_line_sql = one_line_sql[: _STATEMENT_PREVIEW - 3] + "..."
    summary = f"{type(exc).__name__}: {_first_line(message)}"
    hints = [ln.strip() for ln in message.splitlines() if ln.strip().startswith(_HINT_PREFIXES)]
    if hints:
        summary += " (" + "; ".join(hints) + ")"
    if files and not any(f in summary for f in files):
        summary += f" [file: {files[0]}]"
    summary += f" -- in statement: {one_line_sql}"
    if _S3_DENIED.search(message):
        where = s3.endpoint_url if s3 is not None and s3.endpoint_url else "AWS S3"
        summary += (
            f" -- {where} refused the request: check s3_access_key/s3_secret_key "
            "(or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY) and the bucket's permissions"
        )
        return S3AccessError(summary, statement=clean_sql, files=files, engine_message=message)
    refused = credentials_refused(str(exc))
    return QueryError(
        summary, statement=clean_sql, files=files, engine_message=message, credentials_refused=refused
    )


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), text.strip())
