"""The demo: a small COCO-style caption dataset, queried on the embedded default lakehouse."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from duckstream.engine import sql_literal
from duckstream.query import LakehouseQuery

__all__ = ["CAPTION_SCHEMA", "make_caption_dataset", "run_demo"]

# The shape of the COCO Karpathy captions split that our users train on.
CAPTION_SCHEMA = pa.schema(
    [
        ("filepath", pa.string()),
        ("sentids", pa.list_(pa.int64())),
        ("filename", pa.string()),
        ("imgid", pa.int64()),
        ("split", pa.string()),
        ("sentences", pa.list_(pa.string())),
        ("cocoid", pa.int64()),
        ("url", pa.string()),
    ]
)

_SUBJECTS = [
    "a man",
    "a woman",
    "two dogs",
    "a cat",
    "a child",
    "a group of people",
    "a bus",
    "a red train",
    "an old truck",
    "a small boat",
    "a giraffe",
    "a pizza",
]
_VERBS = ["standing", "sitting", "walking", "parked", "lying", "riding", "waiting", "eating"]
_PLACES = [
    "on a street",
    "near the water",
    "in a kitchen",
    "on a beach",
    "in a field",
    "next to a building",
    "under a tree",
    "at the station",
    "on a table",
    "in the snow",
]
_EXTRAS = ["", "", " at night", " in the rain", " with a blue sky", " on a sunny day"]


def make_caption_dataset(
    directory: str | Path,
    *,
    images: int = 2_000,
    files: int = 4,
    captions_per_image: int = 5,
    seed: int = 0,
    row_group_size: int = 256,
) -> list[Path]:
    """Write ``images`` COCO-style caption rows into ``files`` Parquet files; return their paths.

    Deterministic for a given seed. Splits follow Karpathy's proportions (train, restval,
    val, test); captions vary in length so histograms have a shape.
    """
    if images < 1 or files < 1 or captions_per_image < 1:
        raise ValueError("images, files and captions_per_image must be at least 1")
    rng = np.random.default_rng([seed, images])
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    split_names = np.array(["train", "restval", "val", "test"])
    splits = split_names[rng.choice(4, size=images, p=[0.70, 0.20, 0.05, 0.05])]
    bounds = np.linspace(0, images, files + 1).astype(int)
    paths = []
    for index in range(files):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        cocoids = [100_000 + 7 * i for i in range(lo, hi)]
        rows = {
            "filepath": ["val2014" if s in ("val", "test") else "train2014" for s in splits[lo:hi]],
            "sentids": [
                list(range(i * captions_per_image, (i + 1) * captions_per_image)) for i in range(lo, hi)
            ],
            "filename": [f"COCO_2014_{c:012d}.jpg" for c in cocoids],
            "imgid": list(range(lo, hi)),
            "split": [str(s) for s in splits[lo:hi]],
            "sentences": [[_caption(rng) for _ in range(captions_per_image)] for _ in range(lo, hi)],
            "cocoid": cocoids,
            "url": [f"http://images.cocodataset.org/2014/{c:012d}.jpg" for c in cocoids],
        }
        path = out / f"captions-{index:06d}.parquet"
        pq.write_table(pa.table(rows, schema=CAPTION_SCHEMA), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def _caption(rng: np.random.Generator) -> str:
    parts = [
        _SUBJECTS[rng.integers(len(_SUBJECTS))],
        "is" if rng.random() < 0.5 else "",
        _VERBS[rng.integers(len(_VERBS))],
        _PLACES[rng.integers(len(_PLACES))],
    ]
    text = " ".join(p for p in parts if p) + _EXTRAS[rng.integers(len(_EXTRAS))]
    return text[0].upper() + text[1:] + "."


@dataclass(frozen=True)
class DemoStep:
    title: str
    sql: str


def _steps(catalog: Path, lake_data: Path) -> list[DemoStep]:
    return [
        DemoStep(
            "Schema of the Parquet files",
            "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM source)",
        ),
        DemoStep(
            "Images per split",
            "SELECT split, count(*) AS images FROM source GROUP BY split ORDER BY images DESC",
        ),
        DemoStep(
            "Caption length histogram (words per caption)",
            """SELECT len(string_split(caption, ' ')) AS words, count(*) AS captions,
                      repeat('#', (count(*) * 60 / max(count(*)) OVER ())::INT) AS bar
               FROM (SELECT unnest(sentences) AS caption FROM source)
               GROUP BY words ORDER BY words""",
        ),
        DemoStep(
            "Most frequent words",
            """SELECT lower(trim(word, '.')) AS word, count(*) AS n
               FROM (SELECT unnest(string_split(caption, ' ')) AS word
                     FROM (SELECT unnest(sentences) AS caption FROM source))
               GROUP BY ALL ORDER BY n DESC, word LIMIT 8""",
        ),
        DemoStep(
            "Filter pushdown: the WHERE clause runs inside the Parquet scan",
            "EXPLAIN SELECT filename FROM source WHERE split = 'val' AND imgid < 500",
        ),
        DemoStep(
            "The same data as a DuckLake table (catalog file + local folder)",
            f"""ATTACH IF NOT EXISTS {sql_literal("ducklake:" + str(catalog))} AS lake
                    (DATA_PATH {sql_literal(str(lake_data) + "/")});
                CREATE TABLE IF NOT EXISTS lake.captions AS SELECT * FROM source;
                SELECT split, count(*) AS images, sum(len(sentences)) AS captions
                FROM lake.captions GROUP BY split ORDER BY split""",
        ),
        DemoStep(
            "Lake snapshots (each commit is a version you can pin)",
            """SELECT snapshot_id, snapshot_time::TIMESTAMP(0) AS at, changes
               FROM lake.snapshots() ORDER BY snapshot_id""",
        ),
    ]


def run_demo(
    directory: str | Path,
    *,
    images: int = 2_000,
    echo: Callable[[str], None] = print,
) -> None:
    """Build the demo dataset under ``directory`` (once) and print each step's result."""
    root = Path(directory)
    raw = root / "captions"
    if not any(raw.glob("*.parquet")):
        paths = make_caption_dataset(raw, images=images)
        echo(f"Wrote {len(paths)} Parquet files with {images} images to {raw}")
    else:
        echo(f"Using the Parquet files already in {raw}")
    (root / "lake").mkdir(parents=True, exist_ok=True)
    with LakehouseQuery() as query:
        query.register_source(raw)
        for step in _steps(root / "catalog.ducklake", root / "lake"):
            echo(f"\n== {step.title}")
            result = query.execute(step.sql)
            if step.sql.lstrip().upper().startswith("EXPLAIN"):
                echo(_explain_text(result.fetchall()))
            else:
                echo(result.render())


def _explain_text(rows: list[tuple[object, ...]]) -> str:
    return "\n".join(str(row[-1]) for row in rows)
