"""The public face of the stream: stream_batches (Arrow, no torch), DuckStreamDataset,
DuckStreamLoader, DuckStreamMix and as_iterable_dataset (imported lazily with their optional stacks)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import pyarrow as pa

from duckstream.core.cursor import EpochCursor
from duckstream.core.late_filter import Count
from duckstream.core.options import ReadOptions
from duckstream.core.partition import Even
from duckstream.core.planning import Source, prepare
from duckstream.core.world import World, ranks_from_env
from duckstream.errors import ConfigurationError
from duckstream.storage import S3Settings

__all__ = ["DuckStreamDataset", "DuckStreamLoader", "DuckStreamMix", "as_iterable_dataset", "stream_batches"]

if TYPE_CHECKING:
    import datasets

    from duckstream.adapters.mix import DuckStreamMix as DuckStreamMix
    from duckstream.adapters.torch import DuckStreamDataset as DuckStreamDataset
    from duckstream.adapters.torch import DuckStreamLoader as DuckStreamLoader

_LAZY = {
    "DuckStreamDataset": ("duckstream.adapters.torch", "torch"),
    "DuckStreamLoader": ("duckstream.adapters.torch", "torch"),
    "DuckStreamMix": ("duckstream.adapters.mix", "torch"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'duckstream.stream' has no attribute {name!r}")
    from duckstream._optional import require

    module, stack = _LAZY[name]
    require(stack)
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def stream_batches(
    source: Source,
    sql: str | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    batch_size: int = 1_024,
    drop_last: bool = False,
    shuffle_buffer: int | None = None,
    even: Even = "pad",
    world: World | None = None,
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str | None = None,
    s3_use_ssl: bool | None = None,
    s3_retry_seconds: float | None = None,
    threads: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    count: Count = "exact",
) -> Iterator[pa.RecordBatch]:
    """Arrow record batches of ``source`` through ``sql``: one epoch of this process's share.

    ``world`` defaults to RANK/WORLD_SIZE from the environment (one reader per rank). Batches
    hold ``batch_size`` rows except the last (dropped with ``drop_last``). Planning and SQL
    checks happen at the call, reading as the iterator is consumed.

    ``count="skip"`` plans a filtering ``sql`` without counting the rows it keeps: batches
    are of ``batch_size`` source rows, each then filtered and projected by ``sql``, so they
    vary in size and may be empty (see the README, "Skipping the count of a filter").
    """
    options = ReadOptions(shuffle, seed, shuffle_buffer, even, threads, batch_size, drop_last)
    if epoch < 0:
        raise ConfigurationError(f"epoch must be non-negative, found {epoch}")
    s3 = S3Settings.resolve(
        s3_endpoint,
        s3_access_key,
        s3_secret_key,
        region=s3_region,
        use_ssl=s3_use_ssl,
        retry_seconds=s3_retry_seconds,
    )
    plan = prepare(source, sql, s3=s3, cache_dir=cache_dir, count=count)
    if world is None:
        rank, world_size = ranks_from_env()
        world = World(rank, world_size)
    return EpochCursor(plan, options, ranks=world.world_size).open(world, epoch=epoch).batches


def as_iterable_dataset(
    source: Source | DuckStreamMix,
    sql: str | None = None,
    *,
    shuffle: bool = False,
    seed: int = 0,
    shuffle_buffer: int | None = None,
    s3_endpoint: str | None = None,
    s3_access_key: str | None = None,
    s3_secret_key: str | None = None,
    s3_region: str | None = None,
    s3_use_ssl: bool | None = None,
    s3_retry_seconds: float | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    count: Count = "exact",
) -> datasets.IterableDataset:
    """``source`` through ``sql`` as a real ``datasets.IterableDataset`` of rows; ``source`` may
    also be a :class:`DuckStreamMix` (its sources as set up, read as rows; other arguments unused).

    ``split_dataset_by_node`` and DataLoader workers get exact, disjoint shares (every row once
    per epoch, for any world size); ``set_epoch`` gives a new order when shuffled; ``.shuffle``,
    ``.map``, ``.batch``, ``.with_format`` work as in datasets, and ``state_dict`` /
    ``load_state_dict`` resume exactly (without a ``.shuffle`` buffer on top).

    ``count="skip"`` plans a filtering ``sql`` without counting the rows it keeps (shares are
    then even in source rows read, not in rows yielded; see :func:`stream_batches`).
    """
    from duckstream._optional import require

    require("datasets")
    # A DuckStreamMix (its module is loaded once one exists): its sources, as they are set up.
    mix_module = sys.modules.get("duckstream.adapters.mix")
    if mix_module is not None and isinstance(source, mix_module.DuckStreamMix):
        from duckstream.adapters.hf_mix import mix_iterable_dataset

        return mix_iterable_dataset(source)
    from duckstream.adapters.hf import iterable_dataset

    options = ReadOptions(shuffle, seed, shuffle_buffer, even="split")
    s3 = S3Settings.resolve(
        s3_endpoint,
        s3_access_key,
        s3_secret_key,
        region=s3_region,
        use_ssl=s3_use_ssl,
        retry_seconds=s3_retry_seconds,
    )
    plan = prepare(cast(Source, source), sql, s3=s3, cache_dir=cache_dir, count=count)
    return iterable_dataset(plan, options)
