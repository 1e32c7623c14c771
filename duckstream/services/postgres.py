"""A local PostgreSQL cluster (``initdb`` and ``pg_ctl``) for tests and development without Docker.

The server binaries come from the system: PATH, ``$DUCKSTREAM_PG_BIN`` or
``/usr/lib/postgresql/*/bin``.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from duckstream.errors import ServiceError
from duckstream.redact import get_logger, register_secret
from duckstream.services.process import START_TIMEOUT_S, free_port

__all__ = ["PostgresCluster", "PostgresService"]

log = get_logger(__name__)


@dataclass(frozen=True)
class PostgresService:
    """How to reach a running PostgreSQL server."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)
    dbname: str = "postgres"

    def dsn(self, dbname: str | None = None) -> str:
        """``postgresql://user:password@host:port/db`` (the form LakehouseCatalog takes)."""
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{dbname or self.dbname}"

    def libpq(self, dbname: str | None = None) -> str:
        """``host=... port=... user=... password=... dbname=...`` (the form DuckDB ATTACH takes)."""
        return (
            f"host={self.host} port={self.port} user={self.user} "
            f"password={self.password} dbname={dbname or self.dbname}"
        )

    def connect(self, dbname: str | None = None) -> Any:
        """A psycopg connection in autocommit mode."""
        import psycopg

        return psycopg.connect(self.libpq(dbname), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        """Create database ``name`` (an identifier) and return its DSN."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name must be alphanumeric with underscores, found {name!r}")
        with self.connect("postgres") as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)


class PostgresCluster:
    """A PostgreSQL cluster made with ``initdb`` and run with ``pg_ctl`` on 127.0.0.1.

    Server binaries come from PATH, ``$DUCKSTREAM_PG_BIN`` or ``/usr/lib/postgresql/*/bin``.
    PostgreSQL refuses to run as root; when started by root, the cluster runs as the
    ``postgres`` OS user. ``data_dir`` None means a temporary directory removed on :meth:`stop`.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        user: str = "ducklake",
        password: str | None = None,
        dbname: str = "ducklake",
    ) -> None:
        self._port = port
        self._keep_dir = data_dir is not None
        self._root = Path(data_dir) if data_dir is not None else None
        self._user = user
        self._password = password or secrets.token_hex(16)
        register_secret(self._password)
        self._dbname = dbname
        self.service: PostgresService | None = None

    def start(self) -> PostgresService:
        """Initialise (once) and start the cluster; return how to reach it."""
        if self.service is not None:
            return self.service
        bin_dir = _postgres_bin_dir()
        root = self._root or Path(tempfile.mkdtemp(prefix="duckstream-pg-"))
        self._root = root
        root.mkdir(parents=True, exist_ok=True)
        data = root / "data"
        run_as = _postgres_os_user()
        if run_as is not None:
            os.chown(root, run_as.pw_uid, run_as.pw_gid)
            _check_reachable(root, run_as)
        port = self._port or free_port()
        if not (data / "PG_VERSION").exists():
            pwfile = root / "pwfile"
            pwfile.write_text(self._password + "\n")
            pwfile.chmod(0o600)
            if run_as is not None:
                os.chown(pwfile, run_as.pw_uid, run_as.pw_gid)
            try:
                self._run(
                    run_as,
                    [
                        str(bin_dir / "initdb"),
                        "-D",
                        str(data),
                        "-U",
                        self._user,
                        f"--pwfile={pwfile}",
                        "-A",
                        "scram-sha-256",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ],
                    "initdb",
                )
            finally:
                pwfile.unlink(missing_ok=True)
        options = f"-p {port} -h 127.0.0.1 -k {root} -c fsync=off -c max_connections=200"
        self._run(
            run_as,
            [
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                str(int(START_TIMEOUT_S)),
                "start",
            ],
            "pg_ctl start",
        )
        service = PostgresService("127.0.0.1", port, self._user, self._password, "postgres")
        self._port = port
        try:
            with service.connect("postgres") as conn:
                exists = conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self._dbname,)
                ).fetchone()
            if not exists:
                service.create_database(self._dbname)
        except Exception as exc:
            self.stop()
            raise ServiceError(f"PostgreSQL started on port {port} but does not answer: {exc}") from None
        self.service = PostgresService("127.0.0.1", port, self._user, self._password, self._dbname)
        log.info("PostgreSQL answering on 127.0.0.1:%d", port)
        return self.service

    def stop(self) -> None:
        """Stop the cluster; remove its files unless ``data_dir`` was given."""
        self.service = None
        if self._root is None:
            return
        data = self._root / "data"
        if (data / "postmaster.pid").exists():
            mode = "fast" if self._keep_dir else "immediate"
            try:
                self._run(
                    _postgres_os_user(),
                    [str(_postgres_bin_dir() / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"],
                    "pg_ctl stop",
                )
            except ServiceError as exc:
                log.warning("%s", exc)
        if not self._keep_dir:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def __enter__(self) -> PostgresService:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @staticmethod
    def _run(run_as: pwd.struct_passwd | None, args: list[str], what: str) -> None:
        kwargs: dict[str, Any] = {}
        if run_as is not None:
            kwargs.update(user=run_as.pw_uid, group=run_as.pw_gid, extra_groups=[])
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=START_TIMEOUT_S + 30, check=False, **kwargs
        )
        if result.returncode != 0:
            raise ServiceError(
                f"{what} failed (exit {result.returncode}): {result.stderr.strip() or result.stdout.strip()}"
            )


def _check_reachable(directory: Path, user: pwd.struct_passwd) -> None:
    probe = subprocess.run(
        ["test", "-w", str(directory)],
        user=user.pw_uid,
        group=user.pw_gid,
        extra_groups=[],
        check=False,
    )
    if probe.returncode != 0:
        raise ServiceError(
            f"PostgreSQL runs as the OS user {user.pw_name!r} (it refuses root), which cannot reach "
            f"{directory}: a parent directory is closed to other users; choose a data directory "
            "it can reach (for example under /tmp)"
        )


def _postgres_os_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ServiceError(
            "PostgreSQL cannot run as root and there is no 'postgres' OS user; "
            "create one (useradd postgres) or run as a normal user"
        ) from None


def _postgres_bin_dir() -> Path:
    override = os.environ.get("DUCKSTREAM_PG_BIN")
    if override:
        return Path(override)
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if candidates:
        best = max(candidates, key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
        return Path(best).parent
    raise ServiceError(
        "PostgreSQL server binaries (initdb, pg_ctl) were not found on PATH, in $DUCKSTREAM_PG_BIN "
        "or under /usr/lib/postgresql/*/bin; install them (Debian: apt-get install postgresql)"
    )
