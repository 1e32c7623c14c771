"""How a stream reads: shuffle, seed, buffer, balance and threads, validated once for every face."""

from __future__ import annotations

from dataclasses import dataclass

from duckstream.core.partition import Even
from duckstream.errors import ConfigurationError

__all__ = ["ReadOptions"]


@dataclass(frozen=True)
class ReadOptions:
    """The reading settings shared by stream_batches, DuckStreamDataset and the HF adapter."""

    shuffle: bool = False
    seed: int = 0
    shuffle_buffer: int | None = None  # None: sized from the data (see default_shuffle_buffer)
    even: Even = "pad"
    threads: int | None = None
    batch_size: int | None = None  # None: rows

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigurationError(f"seed must be a non-negative integer, found {self.seed}")
        if self.shuffle_buffer is not None and self.shuffle_buffer < 1:
            raise ConfigurationError(f"shuffle_buffer must be at least 1, found {self.shuffle_buffer}")
        if self.even not in ("pad", "drop", "split"):
            raise ConfigurationError(f"even must be 'pad', 'drop' or 'split', found {self.even!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigurationError(f"threads must be at least 1, found {self.threads}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigurationError(f"batch_size must be None or at least 1, found {self.batch_size}")
