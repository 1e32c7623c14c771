"""The local S3 and PostgreSQL launchers used by the fixtures and by users without Docker."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from duckstream.devservices import PostgresCluster, PostgresService, S3Service, SeaweedFS, free_port
from duckstream.errors import ServiceError

pytestmark = pytest.mark.services


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


@pytest.mark.slow
def test_devservices_command_runs_both_until_interrupted(open_tmp_dir: Path) -> None:
    s3_port, pg_port = free_port(below=55536), free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "duckstream.devservices",
            "--dir",
            str(open_tmp_dir / "svc"),
            "--s3-port",
            str(s3_port),
            "--pg-port",
            str(pg_port),
        ],
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
        assert f"http://127.0.0.1:{s3_port}" in text, text + (process.stderr.read() if process.stderr else "")
        assert f"127.0.0.1:{pg_port}/ducklake" in text
        assert "duckstream-secret" not in text
        service = S3Service(f"127.0.0.1:{s3_port}", "duckstream", "duckstream-secret", "-", "-")
        assert "Buckets" in service.boto3_client().list_buckets()
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
