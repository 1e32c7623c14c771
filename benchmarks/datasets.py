"""Generated COCO-caption-like Parquet datasets for the benchmark, cached by their parameters."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = [
    "DatasetSpec",
    "Preset",
    "PresetName",
    "default_cache_root",
    "ensure_dataset",
    "make_dataset",
    "preset",
]

# Bump when the generator changes what it writes, so cached datasets are not reused.
_FORMAT_VERSION = 1
_VOCABULARY_SIZE = 5_000
_WORDS_PER_CAPTION = (8, 12)  # inclusive range; about 10 on average

PresetName = Literal["captions", "images"]


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """What a generated dataset holds; equal specs give byte-for-byte equal tables."""

    rows: int
    image_bytes: int = 0  # mean size of the random `image` column; 0 leaves the column out
    files: int = 8
    row_group_size: int = 8_192
    captions_per_row: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.rows < 1 or self.files < 1 or self.row_group_size < 1 or self.captions_per_row < 1:
            raise ValueError(
                "rows, files, row_group_size and captions_per_row must be at least 1, found "
                f"{self.rows}, {self.files}, {self.row_group_size}, {self.captions_per_row}"
            )
        if self.image_bytes < 0:
            raise ValueError(f"image_bytes must be 0 (no image column) or more, found {self.image_bytes}")

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns every row has, in schema order."""
        return ("id", "captions", "image") if self.image_bytes else ("id", "captions")

    @property
    def file_count(self) -> int:
        """Files actually written: never more than there are rows."""
        return min(self.files, self.rows)

    @property
    def name(self) -> str:
        """A directory name that changes whenever anything the generator writes would change."""
        return (
            f"coco-v{_FORMAT_VERSION}-rows{self.rows}-img{self.image_bytes}-files{self.files}"
            f"-rg{self.row_group_size}-cap{self.captions_per_row}-seed{self.seed}"
        )


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A named dataset shape with its default and ``--quick`` row counts."""

    name: PresetName
    rows: int
    quick_rows: int
    image_bytes: int

    def spec(self, rows: int, *, seed: int = 0) -> DatasetSpec:
        """The dataset of this shape with ``rows`` rows."""
        return DatasetSpec(rows=rows, image_bytes=self.image_bytes, seed=seed)


_PRESETS: dict[PresetName, Preset] = {
    "captions": Preset(name="captions", rows=200_000, quick_rows=4_000, image_bytes=0),
    "images": Preset(name="images", rows=50_000, quick_rows=1_000, image_bytes=10 * 1024),
}


def preset(name: PresetName) -> Preset:
    """The preset called ``name``: ``captions`` (id + captions) or ``images`` (+ a 10 KiB image)."""
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(f"expected a preset among {sorted(_PRESETS)}, found {name!r}") from None


def default_cache_root() -> Path:
    """Where generated datasets are kept between runs: ``<tempdir>/duckstream-bench``."""
    return Path(tempfile.gettempdir()) / "duckstream-bench"


def ensure_dataset(spec: DatasetSpec, cache_root: str | Path | None = None) -> Path:
    """Return the directory holding ``spec``'s dataset, generating it first if it is not cached.

    The dataset is written to a private directory and renamed into place when complete, so a
    directory under its final name is always whole (an interrupted run leaves no half dataset).
    """
    root = Path(cache_root) if cache_root is not None else default_cache_root()
    target = root / spec.name
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
    try:
        make_dataset(spec, scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not target.is_dir():  # not "another run finished first": a real failure
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def make_dataset(spec: DatasetSpec, directory: str | Path) -> list[Path]:
    """Write ``spec``'s rows into ``spec.file_count`` Parquet files under ``directory``; return them.

    Rows are split evenly across files, in id order; each file's row groups hold
    ``row_group_size`` rows. Row group ``g`` of file ``f`` is drawn from
    ``default_rng([seed, 1, f, g])``, so the data depends on the spec only.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    vocabulary = _vocabulary(spec.seed)
    word_weights = 1.0 / np.arange(1, _VOCABULARY_SIZE + 1)  # Zipf-like, as in real captions
    word_weights /= word_weights.sum()
    paths = []
    for file_index in range(spec.file_count):
        start = file_index * spec.rows // spec.file_count
        stop = (file_index + 1) * spec.rows // spec.file_count
        path = out / f"part-{file_index:05d}.parquet"
        with pq.ParquetWriter(path, _schema(spec)) as writer:
            for group_index, group_start in enumerate(range(start, stop, spec.row_group_size)):
                rng = np.random.default_rng([spec.seed, 1, file_index, group_index])
                group_stop = min(group_start + spec.row_group_size, stop)
                table = _rows(spec, rng, group_start, group_stop, vocabulary, word_weights)
                writer.write_table(table, row_group_size=table.num_rows)
        paths.append(path)
    return paths


def _schema(spec: DatasetSpec) -> pa.Schema:
    fields = [pa.field("id", pa.int64()), pa.field("captions", pa.list_(pa.string()))]
    if spec.image_bytes:
        fields.append(pa.field("image", pa.binary()))
    return pa.schema(fields)


def _vocabulary(seed: int) -> pa.StringArray:
    rng = np.random.default_rng([seed, 0])
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
    lengths = rng.integers(2, 10, size=_VOCABULARY_SIZE)
    codes = letters[rng.integers(0, len(letters), size=int(lengths.sum()))]
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    array = pa.Array.from_buffers(
        pa.string(), _VOCABULARY_SIZE, [None, pa.py_buffer(offsets), pa.py_buffer(codes.tobytes())]
    )
    assert isinstance(array, pa.StringArray)
    return array


def _rows(
    spec: DatasetSpec,
    rng: np.random.Generator,
    start: int,
    stop: int,
    vocabulary: pa.StringArray,
    word_weights: np.ndarray,
) -> pa.Table:
    rows = stop - start
    captions = rows * spec.captions_per_row
    low, high = _WORDS_PER_CAPTION
    words_per_caption = rng.integers(low, high + 1, size=captions)
    word_ids = rng.choice(_VOCABULARY_SIZE, size=int(words_per_caption.sum()), p=word_weights)
    word_offsets = np.concatenate([[0], np.cumsum(words_per_caption)]).astype(np.int32)
    words = pa.ListArray.from_arrays(pa.array(word_offsets), vocabulary.take(pa.array(word_ids)))
    caption_text = pc.binary_join(words, " ")
    caption_offsets = np.arange(0, captions + 1, spec.captions_per_row, dtype=np.int32)
    columns: dict[str, pa.Array] = {
        "id": pa.array(np.arange(start, stop, dtype=np.int64)),
        "captions": pa.ListArray.from_arrays(pa.array(caption_offsets), caption_text),
    }
    if spec.image_bytes:
        # Random bytes do not compress, like JPEG payloads; sizes vary by +-20% around the mean.
        spread = spec.image_bytes // 5
        sizes = rng.integers(spec.image_bytes - spread, spec.image_bytes + spread + 1, size=rows)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        payload = rng.bytes(int(offsets[-1]))
        columns["image"] = pa.Array.from_buffers(
            pa.large_binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(payload)]
        ).cast(pa.binary())
    return pa.table(columns, schema=_schema(spec))
