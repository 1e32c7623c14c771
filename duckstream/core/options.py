"""How a stream reads: shuffle, seed, buffer, balance, batching and threads, validated once and
carried through to the read."""

from __future__ import annotations

from dataclasses import dataclass, replace

from duckstream.core.partition import Even
from duckstream.core.shuffle import default_shuffle_buffer
from duckstream.errors import ConfigurationError

__all__ = ["ROW_MODE_READ_ROWS", "ReadOptions"]

# Rows per batch read from storage when items are rows (batch_size=None).
ROW_MODE_READ_ROWS = 1_024


@dataclass(frozen=True)
class ReadOptions:
    """The reading settings shared by stream_batches, DuckStreamDataset and the HF adapter."""

    shuffle: bool = False
    seed: int = 0
    shuffle_buffer: int | None = None  # None: sized from the data (see default_shuffle_buffer)
    even: Even = "pad"
    threads: int | None = None
    batch_size: int | None = None  # None: items are rows
    drop_last: bool = False  # a last short batch is left out (batches only)

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

    def sized(self, row_bytes: int) -> ReadOptions:
        """These options with the shuffle buffer sized for rows of ``row_bytes``, when unset."""
        if self.shuffle_buffer is not None:
            return self
        return replace(self, shuffle_buffer=default_shuffle_buffer(row_bytes))

    @property
    def buffer(self) -> int:
        """Rows per shuffle window (the options must be :meth:`sized` first)."""
        if self.shuffle_buffer is None:
            raise ConfigurationError("the shuffle buffer is sized from the plan: call sized() first")
        return self.shuffle_buffer

    @property
    def item_rows(self) -> int:
        """Rows per item the training loop counts: 1 for rows, else ``batch_size``."""
        return 1 if self.batch_size is None else self.batch_size

    @property
    def drops_last(self) -> bool:
        """Whether a last short item is left out (rows never are)."""
        return self.batch_size is not None and self.drop_last

    @property
    def read_rows(self) -> int:
        """Rows per batch the read hands on: an item's, or a read batch of rows."""
        return self.batch_size or ROW_MODE_READ_ROWS
