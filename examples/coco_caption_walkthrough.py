"""The whole lakehouse walkthrough on COCO-style captions, section by section.

Run it from the repository root::

    .venv/bin/python examples/coco_caption_walkthrough.py --dir /tmp/walkthrough

It needs no server: the catalog is a local DuckLake file and the data local folders. Against a
shared lakehouse, give PostgreSQL and S3 (keys from ``AWS_ACCESS_KEY_ID`` and
``AWS_SECRET_ACCESS_KEY``); ``python -m duckstream.services`` starts local ones, creates the
bucket ``datasets`` and prints the environment to export::

    .venv/bin/python examples/coco_caption_walkthrough.py --catalog postgresql://user:pw@db:5432/lake \\
        --bucket datasets --s3-endpoint http://localhost:29000

Each section is one function of the package (``duckstream.demo.data``,
``duckstream.demo.streams``, ``duckstream.demo.reports``, ``duckstream.demo.patterns``,
``duckstream.demo.tiers``), run in this order:

 1. ingest: a Hugging Face dataset saved with ``save_to_disk``, synced with ``sync_from_hf`` into
    Parquet files and appended to the DuckLake table ``captions`` (key ``imgid``); the ``test``
    split is held out
 2. an experiment and a run registered in the catalog, pinned to the snapshot that last changed
    the table
 3. the schema, then OLAP queries: 4. caption-length histogram (words), 5. caption length in
    characters, 6. captions per image, 7. word counts
 8. five rows streamed by ``DuckStreamDataset(batch_size=None)``; 9. a ``LIMIT 5`` query as a
    Hugging Face ``IterableDataset`` (``as_iterable_dataset``); 10. shuffled vs plain order;
    11. reshuffling per epoch with ``stream_batches(shuffle=True)``
12. one epoch's loader statistics (``LoaderMeter``: rows, batches, rows/s, waiting time) recorded on
    the run and, with caption statistics and a histogram, logged to W&B offline (``duckstream.runs.metrics``)
13. ``duckstream.quality.profile`` of the pinned table, with a key and checks (one fails on purpose),
    and its HTML report; 14. the run completed with its metrics
15-21. the seven lakehouse patterns: schema evolution, time travel, a join of runs with data,
    pushdown into the Parquet scan, idempotent ingest, analytics, and streamable tiers (three
    caption-length tiers, each an experiment with a completed run, streamed as ``IterableDataset``)
22. why a lakehouse: the seven patterns, what each gives and where the walkthrough showed it

A rerun reuses what the first run wrote and prints the same figures. With a PostgreSQL catalog
that does not answer, the sections that need it are left out and the rest run on the raw
Parquet tier.

``duckstream demo`` runs the same walkthrough with the same options.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from duckstream.cli import main as duckstream_main


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the walkthrough with ``duckstream demo``'s options; return the exit code."""
    return duckstream_main(["demo", *(sys.argv[1:] if argv is None else argv)], out=out)


if __name__ == "__main__":
    sys.exit(main())
