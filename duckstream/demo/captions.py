"""The demo's data: a COCO-Karpathy-style caption dataset, as an Arrow table, Parquet files or a saved
Hugging Face ``DatasetDict``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from duckstream._optional import require

__all__ = ["CAPTION_SCHEMA", "caption_table", "make_caption_dataset", "save_caption_dataset"]

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


def caption_table(images: int, *, seed: int = 0, start: int = 0) -> pa.Table:
    """``images`` COCO-style caption rows (image ids ``start`` onwards), deterministic per seed.

    Splits follow Karpathy's proportions (train 70%, restval 20%, val and test 5% each, every
    split present from 4 images on); most images have 5
    captions and some 6 or 7, as in COCO; captions vary in length so histograms have a shape.
    """
    if images < 1:
        raise ValueError(f"images must be at least 1, found {images}")
    rng = np.random.default_rng([seed, start, images])
    # Exact shares, every split present from 4 images on, in a seeded order.
    held_out = [max(1, round(images * share)) if images >= 4 else 0 for share in (0.20, 0.05, 0.05)]
    names = ["train"] * (images - sum(held_out))
    for name, count in zip(("restval", "val", "test"), held_out, strict=True):
        names += [name] * count
    splits = [names[i] for i in rng.permutation(images)]
    counts = rng.choice([5, 6, 7], size=images, p=[0.88, 0.09, 0.03])
    first_sentid = np.concatenate([[0], np.cumsum(counts)[:-1]]) + 5 * start
    imgids = list(range(start, start + images))
    cocoids = [100_000 + 7 * i for i in imgids]
    rows = {
        "filepath": ["val2014" if s in ("val", "test") else "train2014" for s in splits],
        "sentids": [list(range(int(f), int(f) + int(n))) for f, n in zip(first_sentid, counts, strict=True)],
        "filename": [f"COCO_2014_{c:012d}.jpg" for c in cocoids],
        "imgid": imgids,
        "split": splits,
        "sentences": [[_caption(rng) for _ in range(int(n))] for n in counts],
        "cocoid": cocoids,
        "url": [f"http://images.cocodataset.org/2014/{c:012d}.jpg" for c in cocoids],
    }
    return pa.table(rows, schema=CAPTION_SCHEMA)


def make_caption_dataset(
    directory: str | Path,
    *,
    images: int = 2_000,
    files: int = 4,
    seed: int = 0,
    row_group_size: int = 256,
) -> list[Path]:
    """Write ``images`` caption rows (:func:`caption_table`) into ``files`` Parquet files."""
    if files < 1:
        raise ValueError(f"files must be at least 1, found {files}")
    table = caption_table(images, seed=seed)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, images, files + 1).astype(int)
    paths = []
    for index in range(files):
        lo, hi = int(bounds[index]), int(bounds[index + 1])
        path = out / f"captions-{index:06d}.parquet"
        pq.write_table(table.slice(lo, hi - lo), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def save_caption_dataset(
    directory: str | Path,
    *,
    images: int = 2_000,
    seed: int = 0,
    renames: Mapping[str, str] | None = None,
) -> Path:
    """Save the captions as a Hugging Face ``DatasetDict`` (``save_to_disk``), split like the Hub's
    ``yerevann/coco-karpathy``: train (Karpathy's train and restval), validation (val), test.

    ``renames`` maps column names to the names the saved dataset uses.
    """
    datasets = require("datasets")
    table = caption_table(images, seed=seed)
    if renames:
        table = table.rename_columns([renames.get(name, name) for name in table.column_names])
    features = datasets.Features.from_arrow_schema(table.schema)
    groups = {"train": ("train", "restval"), "validation": ("val",), "test": ("test",)}
    split_column = table.column("split")
    parts = {
        name: datasets.Dataset(
            datasets.table.InMemoryTable(table.filter(pc.is_in(split_column, pa.array(members)))),
            info=datasets.DatasetInfo(features=features),
        )
        for name, members in groups.items()
    }
    out = Path(directory)
    # The demo prints tables; datasets' progress bars would interleave with them.
    bars = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        datasets.DatasetDict(parts).save_to_disk(str(out))
    finally:
        if bars:
            datasets.enable_progress_bars()
    return out


def _caption(rng: np.random.Generator) -> str:
    parts = [
        _SUBJECTS[rng.integers(len(_SUBJECTS))],
        "is" if rng.random() < 0.5 else "",
        _VERBS[rng.integers(len(_VERBS))],
        _PLACES[rng.integers(len(_PLACES))],
    ]
    text = " ".join(p for p in parts if p) + _EXTRAS[rng.integers(len(_EXTRAS))]
    return text[0].upper() + text[1:] + "."
