"""The ``duckstream`` command: query, profile, demo, ingest and bench (heavy imports inside commands)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Callable, Sequence
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

    _add_demo_parser(commands)

    ingest = commands.add_parser(
        "ingest",
        help="copy a Hugging Face dataset split into Parquet files (resumable, idempotent)",
        description="Stream a dataset (Hub id, data folder or save_to_disk folder) into "
        "<prefix>/<split>-NNNNNN.parquet on S3 or a local folder. Rerun to resume.",
    )
    ingest.add_argument("dataset", help="Hub id (user/name), a folder of data files, or a saved dataset")
    ingest.add_argument("--split", default="train", help="split to copy (default train)")
    where = ingest.add_mutually_exclusive_group(required=True)
    where.add_argument("--dest", help="local folder to write into")
    where.add_argument("--bucket", help="S3 bucket to write into (with --prefix)")
    ingest.add_argument("--prefix", default="", help="key prefix inside the bucket")
    ingest.add_argument("--max-samples", type=int, help="copy only the first N rows")
    ingest.add_argument("--rows-per-file", type=int, help="rows per Parquet file (default: ~256 MiB files)")
    ingest.add_argument("--row-group-rows", type=int, default=8_192, help="rows per row group")
    _add_s3_options(ingest)

    _add_bench_parser(commands)
    _add_profile_parser(commands)
    return parser


# duckstream.quality.checks.CHECK_HELP, spelled out so that parsing imports nothing heavy.
_CHECK_HELP = (
    "not_null:COL, unique:COL, range:COL:MIN:MAX, values:COL:A,B,C, length:COL:MIN:MAX, rows:MIN:MAX "
    "(empty MIN or MAX: no bound)"
)


def _add_profile_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = commands.add_parser(
        "profile",
        help="profile a source in one pass (nulls, distinct, min/max, lengths) and check expectations",
        description=(
            "Profile Parquet files (a file, directory, glob or s3:// URI) in one scan: per column its "
            "nulls, distinct values, min/max, mean, lengths and top values, and the checks given. Prints "
            "a table; --html and --markdown write a report with a histogram per column. Exits 1 when a "
            "check fails."
        ),
    )
    profile.add_argument(
        "source",
        nargs="+",
        help="Parquet file, directory, glob or s3:// URI (several: one source); with --catalog, a table name",
    )
    profile.add_argument(
        "--catalog",
        metavar="DSN_OR_PATH",
        help="a lakehouse catalog (postgresql://... or a catalog file), opened read-only: SOURCE is a table",
    )
    profile.add_argument(
        "--data-path",
        help="the catalog's data folder or s3:// prefix, checked against the one it stores (default: it)",
    )
    profile.add_argument("--version", type=int, help="with --catalog: the snapshot (default: the newest)")
    profile.add_argument("--column", "-c", action="append", metavar="COL", help="profile only these columns")
    profile.add_argument(
        "--key", "-k", action="append", metavar="COL", help="count duplicate rows of this key"
    )
    profile.add_argument(
        "--check",
        action="append",
        default=[],
        metavar="CHECK",
        help=f"an expectation (repeatable): {_CHECK_HELP}",
    )
    profile.add_argument(
        "--checks-file",
        type=Path,
        metavar="PATH",
        help='a JSON file with a list of checks, as strings like "not_null:id" or objects like '
        '{"kind": "range", "column": "id", "low": 0, "high": 100}',
    )
    profile.add_argument("--sample", type=int, default=5, help="sample rows kept in the report (default 5)")
    profile.add_argument(
        "--exact-threshold",
        type=int,
        help="exact distinct counts up to this many rows, estimates above (default 1,000,000)",
    )
    profile.add_argument("--html", type=Path, metavar="PATH", help="write a self-contained HTML report")
    profile.add_argument("--markdown", type=Path, metavar="PATH", help="write a Markdown report")
    profile.add_argument("--json", type=Path, metavar="PATH", help="write the report as JSON")
    _add_s3_options(profile)


def _add_demo_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = commands.add_parser(
        "demo",
        help="the lakehouse walkthrough on COCO-style captions (no servers needed)",
        description=(
            "Generate a COCO-Karpathy-style caption dataset, ingest it into a DuckLake table, register "
            "an experiment and a run, and print each step: schema, OLAP queries, streamed rows (PyTorch, "
            "Hugging Face, Arrow), shuffled order, W&B offline metrics, a quality profile and the seven "
            "lakehouse patterns. By default everything lives under --dir (a local catalog file and "
            "folders); --catalog and --bucket move the catalog to PostgreSQL and the files to S3. A "
            "rerun reuses what the first run wrote and prints the same figures."
        ),
    )
    # Defaults are spelled out in each help text: the catalog's comes from the environment and
    # may hold a password, which ArgumentDefaultsHelpFormatter would print.
    demo.add_argument("--dir", default="duckstream-demo", help="the folder it works in (default %(default)s)")
    demo.add_argument(
        "--images", type=int, default=2_000, help="images in the generated dataset (default %(default)s)"
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed of the generated dataset (default %(default)s)"
    )
    demo.add_argument(
        "--catalog",
        metavar="DSN",
        help="postgresql://user:password@host:port/db for the catalog (default $DUCKSTREAM_CATALOG, "
        "else a catalog file under --dir); a server that does not answer leaves out the sections "
        "that need it",
    )
    demo.add_argument(
        "--bucket", help="S3 bucket for the ingested Parquet and the lake's files (default: local folders)"
    )
    demo.add_argument(
        "--prefix", default="duckstream-walkthrough", help="key prefix in --bucket (default %(default)s)"
    )
    demo.add_argument(
        "--s3-endpoint",
        help="http://host:port, https://host:port or host:port (default $DUCKSTREAM_S3_ENDPOINT; "
        "keys from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY)",
    )


def _run_ingest(args: argparse.Namespace, out: TextIO) -> None:
    from duckstream.sync import sync_from_hf

    result = sync_from_hf(
        args.dataset,
        args.split,
        args.bucket,
        args.prefix or None,
        args.max_samples,
        args.s3_endpoint,
        dest=args.dest,
        rows_per_file=args.rows_per_file,
        row_group_rows=args.row_group_rows,
        s3_region=args.s3_region,
    )
    where = f"s3://{result.bucket}/{result.prefix or ''}" if result.bucket else result.dest
    print(
        f"{result.split}: {result.rows_total:,} rows in {len(result.files)} files "
        f"({result.bytes_total / 2**20:,.1f} MiB) at {where}; {result.files_uploaded} written now",
        file=out,
    )


# The benchmark's loaders (duckstream.benchmarks.epoch.LoaderName), read paths
# (duckstream.benchmarks.paths.PathGroup) and lake catalog kinds (.LakeCatalogKind), named here
# so that parsing the command line imports nothing from the harness.
_BENCH_LOADERS = ("pyarrow", "pyarrow-python", "duckstream", "duckstream-arrow")
_BENCH_PATHS = ("plain", "expr", "filter", "lake", "s3", "s3-delay")
_BENCH_LAKE_CATALOGS = ("duckdb", "postgres")
# The loaders `--peers` compares (duckstream.benchmarks.peer_epoch.PeerName).
_BENCH_PEERS = (
    "duckstream",
    "datasets-stream",
    "datasets-stream-buffer",
    "datasets-map",
    "litdata",
    "lance",
    "mosaic",
)


def _add_bench_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bench = commands.add_parser(
        "bench",
        help="measure the data loader against plain pyarrow scans (prints figures, asserts nothing)",
        description=(
            "Generate COCO-caption-like Parquet datasets (cached by their parameters) and, for each "
            "read path (plain columns, an expression, filters, a DuckLake table, S3, S3 with latency) "
            "and each configuration in a fresh process, measure rows/s of full shuffled epochs, time "
            "to first batch, bytes read and peak memory of the whole process tree, next to plain "
            "pyarrow scans of the same files, and how well each epoch the loop received is shuffled."
        ),
    )
    bench.add_argument(
        "--preset",
        choices=("captions", "images", "all"),
        default="all",
        help="captions (id + 5 captions, 200,000 rows), images (+ 10 KiB image, 50,000 rows), or all",
    )
    bench.add_argument(
        "--path",
        type=_choice_list("read paths", _BENCH_PATHS),
        default="all",
        metavar="NAME[,NAME...]",
        help=(
            "read paths: plain (SELECT the columns), expr (captions[1]), filter (id %% 2 = 0, a 1%% "
            "filter: filter1pct, and the first planned with count='skip': filter-skip), lake (a "
            "DuckLake table over the same files, and with a PostgreSQL "
            "catalog one over their S3 objects: lake-s3), s3 (the files on a local SeaweedFS), "
            "s3-delay (the same through a proxy adding --s3-delay-ms a request), a comma-separated "
            "list of them, or all (default)"
        ),
    )
    bench.add_argument(
        "--loader",
        type=_choice_list("loaders", _BENCH_LOADERS),
        default="all",
        metavar="NAME[,NAME...]",
        help=(
            "what to measure: pyarrow (plain scan), pyarrow-python (the scan, batches handed to Python), "
            "duckstream (output torch), duckstream-arrow (output arrow), a comma-separated list of "
            "them, or all (default)"
        ),
    )
    bench.add_argument(
        "--workers",
        type=_counts,
        metavar="N[,N...]",
        help="DataLoader worker counts for duckstream and duckstream-arrow (default 0,2; with --peers 0)",
    )
    bench.add_argument(
        "--lake-catalog",
        type=_choice_list("lake catalogs", _BENCH_LAKE_CATALOGS),
        default="all",
        metavar="KIND[,KIND...]",
        help=(
            "where the lake path's catalog lives: duckdb (a file; path lake), postgres (a throwaway "
            "cluster; paths lake-pg and, over the S3 objects, lake-s3), or all (default; lake-pg and "
            "lake-s3 say skipped where PostgreSQL is missing)"
        ),
    )
    bench.add_argument(
        "--s3-delay-ms",
        type=float,
        default=20.0,
        help="milliseconds the s3-delay path's proxy adds to each request (default 20)",
    )
    bench.add_argument("--rows", type=int, help="rows in every preset's dataset (overrides the preset)")
    bench.add_argument(
        "--scale",
        type=int,
        default=4,
        help=(
            "also measure peak memory of pyarrow and duckstream at 0 workers on the plain path on this "
            "many times the rows (default 4; 1: off)"
        ),
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small datasets (4,000 and 1,000 rows), one sampled run per configuration",
    )
    bench.add_argument("--batch-size", type=int, default=256, help="rows per batch (default 256)")
    bench.add_argument("--seed", type=int, default=0, help="seed of the data and of the shuffle")
    bench.add_argument(
        "--shuffle-buffer",
        type=int,
        metavar="ROWS",
        help="duckstream's shuffle buffer in rows (default: the dataset's, 64 MiB of rows)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        help=(
            "epochs per configuration, through one loader with persistent workers: the first is "
            "reported as cold, the fastest later one as warm (default 3, 1 with --quick); with "
            "--peers, the median of the later ones (default 4)"
        ),
    )
    bench.add_argument(
        "--cache-dir", type=Path, help="where datasets are kept (default <tmp>/duckstream-bench)"
    )
    bench.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds allowed per configuration, after which it counts as failed (default 300)",
    )
    bench.add_argument("--json", type=Path, metavar="PATH", help="also write every figure to PATH as JSON")
    bench.add_argument(
        "--peers",
        nargs="?",
        const=_BENCH_PEERS,
        type=_choice_list("peers", _BENCH_PEERS),
        metavar="NAME[,NAME...]",
        help=(
            "instead of the read paths, compare duckstream with the loaders users would pick instead, "
            "on the same data, batches and output (Python lists): "
            + ", ".join(_BENCH_PEERS)
            + "; all without a value. One not installed gets a line saying so"
        ),
    )
    bench.add_argument(
        "--scale-sim",
        action="store_true",
        help=(
            "instead: simulate planning at scale on synthetic metadata (no files read): time and peak "
            "memory of one rank's share, size of the shared plan, and checks on sampled slots"
        ),
    )
    bench.add_argument(
        "--files", type=int, default=1_000_000, help="with --scale-sim: files (default 1,000,000)"
    )
    bench.add_argument("--ranks", type=int, default=4096, help="with --scale-sim: ranks (default 4,096)")
    bench.add_argument(
        "--mosaic-python",
        type=Path,
        metavar="PATH",
        help="with --peers: an interpreter that has mosaicml-streaming (its pins conflict with datasets)",
    )
    bench.add_argument(
        "--plot",
        type=Path,
        metavar="DIR",
        help=(
            "also draw the first epoch of each configuration that shuffles, position against id, as "
            "DIR/<preset>-<scale>x-<path>-<loader>-<workers>w.png (needs matplotlib: the quality extra)"
        ),
    )


def _counts(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 0,2, found {text!r}") from None


def _choice_list(what: str, choices: tuple[str, ...]) -> Callable[[str], tuple[str, ...]]:
    """A parser of ``all`` or a comma-separated list of ``choices``, returned in the choices' order."""

    def parse(text: str) -> tuple[str, ...]:
        names = [part.strip() for part in text.split(",")]
        if names == ["all"]:
            return choices
        if any(name not in choices for name in names):
            raise argparse.ArgumentTypeError(
                f"expected all or {what} among {', '.join(choices)}, found {text!r}"
            )
        # The table's order, whatever the order given; a name given twice is measured once.
        return tuple(name for name in choices if name in names)

    return parse


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


def _run_profile(args: argparse.Namespace, out: TextIO) -> int:
    from duckstream.errors import ConfigurationError
    from duckstream.quality.checks import read_checks_file
    from duckstream.quality.profiling import DEFAULT_EXACT_THRESHOLD, profile
    from duckstream.quality.render import render_html, render_markdown, render_text

    checks = [*args.check, *(read_checks_file(args.checks_file) if args.checks_file else [])]
    options = {
        "s3_endpoint": args.s3_endpoint,
        "s3_region": args.s3_region,
        "columns": args.column,
        "key": args.key,
        "checks": checks,
        "sample": args.sample,
        "exact_threshold": DEFAULT_EXACT_THRESHOLD if args.exact_threshold is None else args.exact_threshold,
    }
    if args.catalog is None:
        if args.version is not None or args.data_path is not None:
            raise ConfigurationError("--version and --data-path go with --catalog")
        report = profile(args.source[0] if len(args.source) == 1 else args.source, **options)
    else:
        from duckstream.catalog import LakehouseCatalog

        if len(args.source) != 1:
            raise ConfigurationError(f"with --catalog, give one table name, found {len(args.source)}")
        with LakehouseCatalog(
            args.catalog, args.data_path, args.s3_endpoint, s3_region=args.s3_region, read_only=True
        ) as catalog:
            report = profile(catalog.table(args.source[0], args.version), **options)
    print(render_text(report), file=out)
    outputs = [
        (args.html, render_html),
        (args.markdown, render_markdown),
        (args.json, lambda r: r.model_dump_json(indent=2)),
    ]
    for path, render in outputs:
        if path is not None:
            _write_report(path, render(report))
            print(f"wrote {path}", file=out)
    return 0 if report.passed else 1


def _write_report(path: Path, text: str) -> None:
    from duckstream.errors import ConfigurationError

    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"cannot write the report to {path}: {exc.strerror or exc}") from None


def _run_demo(args: argparse.Namespace, out: TextIO) -> None:
    from duckstream.demo import WalkthroughSettings, run_walkthrough

    settings = WalkthroughSettings(
        Path(args.dir),
        images=args.images,
        seed=args.seed,
        catalog=args.catalog or os.environ.get("DUCKSTREAM_CATALOG") or None,
        bucket=args.bucket,
        prefix=args.prefix,
        s3_endpoint=args.s3_endpoint,
    )
    run_walkthrough(settings, echo=lambda text: print(text, file=out, flush=True))


def _run_bench(args: argparse.Namespace, out: TextIO) -> int:
    if args.scale_sim:
        from duckstream.benchmarks.scale import run_and_report

        # --workers is a list for the loader benchmark: the simulation takes its first count.
        workers = args.workers[0] if args.workers else 8
        code: int = run_and_report(args.files, args.ranks, workers, args.json, out)
        return code
    if args.peers is not None:
        return _run_bench_peers(args, out)
    from duckstream.benchmarks.loader import BenchConfig, run_bench
    from duckstream.benchmarks.report import report, write_json

    config = BenchConfig(
        presets=("captions", "images") if args.preset == "all" else (args.preset,),
        paths=args.path,
        loaders=args.loader,
        workers=args.workers or (0, 2),
        lake_catalogs=args.lake_catalog,
        s3_delay_ms=args.s3_delay_ms,
        rows=args.rows,
        scale=args.scale,
        quick=args.quick,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_dir=args.cache_dir,
        timeout=args.timeout or None,
        repeat=args.repeat if args.repeat is not None else (1 if args.quick else 3),
        plot_dir=args.plot,
        shuffle_buffer=args.shuffle_buffer,
    )
    measurements = run_bench(config, echo=lambda text: print(text, file=out, flush=True))
    report(measurements, out)
    if args.json is not None:
        write_json(args.json, config, measurements)
    return 1 if any(m.error is not None for m in measurements) else 0


def _run_bench_peers(args: argparse.Namespace, out: TextIO) -> int:
    from duckstream.benchmarks.peer_report import report_peers, write_peer_json
    from duckstream.benchmarks.peers import PeerConfig, run_peers
    from duckstream.errors import ConfigurationError

    if args.plot is not None:
        raise ConfigurationError("--plot draws the read paths' epochs: leave it out with --peers")
    if args.shuffle_buffer is not None:
        raise ConfigurationError(
            "--shuffle-buffer sets duckstream's buffer on the read paths: leave it out with --peers "
            "(each loader there keeps its own default)"
        )

    config = PeerConfig(
        presets=("captions", "images") if args.preset == "all" else (args.preset,),
        peers=args.peers,
        workers=args.workers or (0,),
        rows=args.rows,
        quick=args.quick,
        batch_size=args.batch_size,
        seed=args.seed,
        cache_dir=args.cache_dir,
        timeout=args.timeout or None,
        repeat=args.repeat if args.repeat is not None else (1 if args.quick else 4),
        mosaic_python=args.mosaic_python,
    )
    measurements = run_peers(config, echo=lambda text: print(text, file=out, flush=True))
    report_peers(measurements, out)
    if args.json is not None:
        write_peer_json(args.json, config, measurements)
    return 1 if any(m.error is not None for m in measurements) else 0


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 user error, 2 usage error)."""
    from duckstream.errors import DuckstreamError

    args = _build_parser().parse_args(argv)
    stream = out if out is not None else sys.stdout
    try:
        if args.command == "query":
            _run_query(args, stream)
        elif args.command == "bench":
            return _run_bench(args, stream)
        elif args.command == "profile":
            return _run_profile(args, stream)
        elif args.command == "ingest":
            _run_ingest(args, stream)
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
