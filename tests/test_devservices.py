"""The local S3 and PostgreSQL launchers used by the fixtures and by users without Docker."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duckstream.errors import ServiceError
from duckstream.services import PostgresCluster, PostgresService, S3Service, SeaweedFS, free_port, seaweedfs
from duckstream.services.process import ephemeral_ports, port_is_free

pytestmark = pytest.mark.services
ROOT = Path(__file__).resolve().parent.parent


def test_service_reprs_hide_credentials(s3_server: S3Service, postgres_server: PostgresService) -> None:
    shown = repr(s3_server) + repr(postgres_server)
    for secret in (s3_server.access_key, s3_server.secret_key, postgres_server.password):
        assert secret not in shown


def test_read_only_identity_can_list_but_not_write(s3_server: S3Service, s3_bucket: str) -> None:
    import botocore.exceptions

    reader = s3_server.boto3_client(read_only=True)
    assert reader.list_objects_v2(Bucket=s3_bucket).get("KeyCount", 0) == 0
    with pytest.raises(botocore.exceptions.ClientError, match="AccessDenied"):
        reader.put_object(Bucket=s3_bucket, Key="x", Body=b"x")


def test_throwaway_postgres_removes_its_files() -> None:
    cluster = PostgresCluster()
    service = cluster.start()
    root = Path(str(cluster._root))
    with service.connect() as conn:
        assert conn.execute("SELECT current_database()").fetchone() == ("ducklake",)
    cluster.stop()
    assert not root.exists()


@pytest.fixture
def open_tmp_dir() -> Iterator[Path]:
    """A temporary directory PostgreSQL's OS user can reach (pytest's tmp_path is root-only)."""
    directory = Path(tempfile.mkdtemp(prefix="duckstream-test-"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def test_kept_postgres_directory_survives_a_restart(open_tmp_dir: Path) -> None:
    directory = open_tmp_dir / "pg"
    with PostgresCluster(data_dir=directory, password="kept-password") as service, service.connect() as conn:
        conn.execute("CREATE TABLE kept AS SELECT 7 AS x")
    with PostgresCluster(data_dir=directory, password="kept-password") as service, service.connect() as conn:
        assert conn.execute("SELECT x FROM kept").fetchone() == (7,)


@pytest.mark.slow
def test_kept_s3_directory_survives_a_restart(tmp_path: Path) -> None:
    directory = tmp_path / "s3"
    with SeaweedFS(data_dir=directory, access_key="kept-key", secret_key="kept-secret") as s3:
        s3.boto3_client().create_bucket(Bucket="kept")
        s3.boto3_client().put_object(Bucket="kept", Key="k", Body=b"value")
    with SeaweedFS(data_dir=directory, access_key="kept-key", secret_key="kept-secret") as s3:
        assert s3.boto3_client().get_object(Bucket="kept", Key="k")["Body"].read() == b"value"


def test_free_ports_lie_outside_the_source_ports_of_outgoing_connections() -> None:
    # A port from that range can be taken by any connection between its draw and the server's bind.
    low, high = ephemeral_ports()
    for paired_offset in (0, 10000):
        for _ in range(100):
            port = free_port(paired_offset=paired_offset)
            for chosen in {port, port + paired_offset}:
                assert not low <= chosen <= high
                assert chosen < 65536
                assert port_is_free(chosen)


def _hold_port(port: int) -> socket.socket:
    """A socket bound to ``port`` and not listening, as an outgoing connection holds its source port."""
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", port))
    return holder


@pytest.mark.slow
def test_seaweedfs_draws_other_ports_where_one_is_taken_and_keeps_them_across_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = _hold_port(free_port(paired_offset=10000))
    taken = held.getsockname()[1]
    draws: list[int] = []

    def draw(**kwargs: int) -> int:
        # The S3 port (the fourth drawn) is one that became taken after it was drawn.
        draws.append(taken if len(draws) == 3 else free_port(**kwargs))
        return draws[-1]

    monkeypatch.setattr(seaweedfs, "free_port", draw)
    server = SeaweedFS(data_dir=tmp_path / "s3")
    try:
        service = server.start()
        assert len(draws) == 8
        assert service.endpoint == f"127.0.0.1:{draws[-1]}" != f"127.0.0.1:{taken}"
        assert "address already in use" in (tmp_path / "s3" / "weed.log").read_text()
        service.boto3_client().create_bucket(Bucket="moved")
        service.boto3_client().put_object(Bucket="moved", Key="k", Body=b"value")
        server.stop()
        assert server.start().endpoint == service.endpoint
        assert len(draws) == 8
        assert service.boto3_client().get_object(Bucket="moved", Key="k")["Body"].read() == b"value"
    finally:
        server.stop()
        held.close()


def test_a_stopped_seaweedfs_leaves_no_sockets_behind(tmp_path: Path) -> None:
    def sockets(ports: set[int]) -> list[Path]:
        found = Path(tempfile.gettempdir()).glob("seaweedfs-*.sock")
        return [p for p in found if p.stem.rsplit("-", 1)[-1] in {str(port) for port in ports}]

    server = SeaweedFS(data_dir=tmp_path / "s3")
    server.start()
    ports = {port + offset for port in (server._ports_in_use or {}).values() for offset in (0, 10000)}
    assert sockets(ports)  # weed's gRPC servers listen on Unix sockets in the temporary folder
    server.stop()
    assert sockets(ports) == []


@pytest.mark.slow
def test_seaweedfs_on_a_taken_s3_port_is_a_clear_error(tmp_path: Path) -> None:
    held = _hold_port(free_port(paired_offset=10000))
    taken = held.getsockname()[1]
    try:
        with pytest.raises(ServiceError, match=rf"a port SeaweedFS needs is taken: .*s3 {taken} "):
            SeaweedFS(s3_port=taken, data_dir=tmp_path / "s3").start()
    finally:
        held.close()


def test_services_help_shows_the_defaults() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "duckstream.services", "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=60,
    )
    assert result.returncode == 0
    help_text = " ".join(result.stdout.split())
    for default in (
        "(default: .duckstream-services)",
        "(default: 29000)",
        "(default: 55432)",
        "the S3 access key (default: duckstream)",
        "the S3 secret key (default: duckstream-secret)",
        "(default: ducklake)",
        "a bucket to create, unless it exists (default: datasets)",
    ):
        assert default in help_text


def _readme_services() -> tuple[str, list[str], str]:
    """The README's two services commands: the one that starts the servers, and the exports and
    walkthrough command for the second shell."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### On PostgreSQL and S3", 1)[1].split("\n## ", 1)[0]
    start, second = (block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)[:2])
    lines = second.splitlines()
    return start, [line for line in lines if line.startswith("export ")], lines[-1]


@pytest.mark.slow
def test_the_readme_services_path_runs_the_walkthrough_on_postgres_and_s3(open_tmp_dir: Path) -> None:
    start, exports, demo = _readme_services()
    # The README's command, run with this interpreter, in a folder and on ports of its own (the
    # default ports may be taken on a machine that runs the tests).
    started = shlex.split(start.rsplit(" && ", 1)[-1])
    assert started[:3] == [".venv/bin/python", "-m", "duckstream.services"]
    s3_port, pg_port = free_port(paired_offset=10000), free_port()
    own = ["--dir", str(open_tmp_dir / "svc"), "--s3-port", str(s3_port), "--pg-port", str(pg_port)]
    process = subprocess.Popen(
        [sys.executable, *started[1:], *own],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C" in line:
                break
        text = "".join(lines)
        assert "Ctrl-C" in text, text + (process.stderr.read() if process.stderr else "")
        printed = [line.strip() for line in lines if line.strip().startswith("export ")]
        # What the README shows is what duckstream.services prints on its default ports, real values.
        on_default_ports = [
            line.replace(f"127.0.0.1:{s3_port}", "127.0.0.1:29000").replace(
                f"127.0.0.1:{pg_port}", "127.0.0.1:55432"
            )
            for line in printed
        ]
        assert on_default_ports == exports
        environment = dict(
            pair.split("=", 1) for line in printed for pair in shlex.split(line.removeprefix("export "))
        )
        service = S3Service(f"127.0.0.1:{s3_port}", "duckstream", "duckstream-secret", "-", "-")
        assert "datasets" in [b["Name"] for b in service.boto3_client().list_buckets()["Buckets"]]

        # The README's walkthrough command, with that environment; a small dataset keeps it short.
        command = shlex.split(demo)
        assert command[:2] == [".venv/bin/duckstream", "demo"]
        small = ["--dir", str(open_tmp_dir / "demo"), "--images", "40"]
        walked = subprocess.run(
            [str(Path(sys.executable).with_name("duckstream")), *command[1:], *small],
            env={**os.environ, **environment},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert walked.returncode == 0, walked.stderr[-3000:]
        assert "The walkthrough ran 22 sections" in walked.stdout
        assert "No catalog" not in walked.stdout
        assert "postgres: host=127.0.0.1 port=" in walked.stdout  # the catalog in PostgreSQL
        assert "raw Parquet at s3://datasets/duckstream-walkthrough/raw" in walked.stdout
        raw = service.boto3_client().list_objects_v2(Bucket="datasets", Prefix="duckstream-walkthrough/raw/")
        assert raw.get("KeyCount", 0) > 0
        pg = PostgresService("127.0.0.1", pg_port, "ducklake", "ducklake", "ducklake")
        with pg.connect() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to another OS user")
def test_a_directory_postgres_cannot_reach_is_a_clear_error(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    with pytest.raises(ServiceError, match="cannot reach"):
        PostgresCluster(data_dir=closed / "pg").start()
