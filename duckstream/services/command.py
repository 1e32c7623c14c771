"""``python -m duckstream.services``: SeaweedFS (S3) and PostgreSQL on the ports of ``docker-compose.yml``.

S3 on 29000 and PostgreSQL on 55432, data kept in ``.duckstream-services/``; it creates the bucket
``datasets``, prints the ``export`` lines that reach both, and runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from duckstream.errors import ServiceError
from duckstream.services.postgres import PostgresCluster, PostgresService
from duckstream.services.seaweedfs import S3Service, SeaweedFS

__all__ = ["environment_lines", "main"]


def main(argv: list[str] | None = None) -> int:
    """Start both servers, print how to reach them, and run until Ctrl-C; return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m duckstream.services",
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
        print(f"services: error: {exc}", file=sys.stderr)
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
