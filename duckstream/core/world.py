"""Where this process stands: rank and world size, DataLoader worker and worker count."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from duckstream.errors import ConfigurationError

__all__ = ["World", "ranks_from_env"]


@dataclass(frozen=True)
class World:
    """One reading slot among ``world_size * num_workers``; ``num_workers`` counts at least 1."""

    rank: int = 0
    world_size: int = 1
    worker: int = 0
    num_workers: int = 1

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ConfigurationError(
                f"expected 0 <= rank < world_size, found rank={self.rank}, world_size={self.world_size}"
            )
        if self.num_workers < 1 or not 0 <= self.worker < self.num_workers:
            raise ConfigurationError(
                f"expected 0 <= worker < num_workers, found worker={self.worker}, "
                f"num_workers={self.num_workers}"
            )

    @property
    def slot(self) -> int:
        return self.rank * self.num_workers + self.worker

    @property
    def num_slots(self) -> int:
        return self.world_size * self.num_workers


def ranks_from_env(environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(rank, world_size)`` from ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    env = os.environ if environ is None else environ
    try:
        rank = int(env.get("RANK", "0"))
        world_size = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigurationError(
            f"RANK and WORLD_SIZE must be integers, found RANK={env.get('RANK')!r}, "
            f"WORLD_SIZE={env.get('WORLD_SIZE')!r}"
        ) from None
    World(rank, world_size)  # validates
    return rank, world_size
