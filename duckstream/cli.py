"""The ``duckstream`` command: ``query`` and ``demo`` (heavy imports happen inside commands)."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

__all__ = ["main"]


def _add_s3_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "S3 (default: $DUCKSTREAM_S3_ENDPOINT, $AWS_ACCESS_KEY_ID, $AWS_SECRET_ACCESS_KEY)"
    )
    group.add_argument("--s3-endpoint", help="http://host:port, https://host:port or host:port")
    group.add_argument("--s3-region", help="signing region (default us-east-1)")
    # Keys come from the environment only: a key on the command line lands in shell history.


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="duckstream",
        description="Stream lakehouse data (Parquet, DuckLake) into training loops.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    query = commands.add_parser(
        "query",
        help="run SQL over Parquet files (local or s3://) and print the result",
        description="Run SQL. With --source, the query can name those files as the table `source`.",
    )
    query.add_argument("sql", help='the SQL to run, e.g. "SELECT split, count(*) FROM source GROUP BY 1"')
    query.add_argument(
        "--source",
        "-s",
        action="append",
        metavar="PATH",
        help="Parquet file, directory, glob or s3:// URI, readable as `source` (repeatable)",
    )
    query.add_argument(
        "--format",
        "-f",
        choices=("table", "csv", "json"),
        default="table",
        help="table (default), csv, or json (one JSON object per line)",
    )
    query.add_argument("--threads", type=int, help="DuckDB threads (default: all cores)")
    query.add_argument("--memory-limit", help="DuckDB memory limit, e.g. 4GB")
    _add_s3_options(query)

    demo = commands.add_parser(
        "demo",
        help="build a small caption dataset and query it on the embedded lakehouse",
    )
    demo.add_argument(
        "--dir", default="duckstream-demo", help="where the demo keeps its files (default ./duckstream-demo)"
    )
    demo.add_argument("--images", type=int, default=2_000, help="images in the generated dataset")
    return parser


def _run_query(args: argparse.Namespace, out: TextIO) -> None:
    from duckstream.query import LakehouseQuery

    with LakehouseQuery(
        args.s3_endpoint, s3_region=args.s3_region, threads=args.threads, memory_limit=args.memory_limit
    ) as query:
        if args.source:
            query.register_source(args.source)
        result = query.execute(args.sql)
        if args.format == "table":
            print(result.render(), file=out)
            return
        reader = result.to_arrow_reader()
        if args.format == "csv":
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(reader.schema.names)
            for batch in reader:
                writer.writerows([_csv_cell(v) for v in row.values()] for row in batch.to_pylist())
        else:
            for batch in reader:
                for row in batch.to_pylist():
                    out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")


def _csv_cell(value: object) -> object:
    # Lists and structs have no CSV form of their own: write them as JSON text.
    if isinstance(value, (list, dict)):
        return json.dumps(value, default=str, ensure_ascii=False)
    return value


def _run_demo(args: argparse.Namespace, out: TextIO) -> None:
    from duckstream.demo import run_demo

    run_demo(Path(args.dir), images=args.images, echo=lambda text: print(text, file=out))


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 user error, 2 usage error)."""
    from duckstream.errors import DuckstreamError

    args = _build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        if args.command == "query":
            _run_query(args, stream)
        else:
            _run_demo(args, stream)
    except DuckstreamError as exc:
        print(f"duckstream: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `duckstream query ... | head`: the reader left; that is not an error.
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
