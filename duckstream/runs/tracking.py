"""Run registration for training loops, with or without Lightning, that survives catalog outages.

A :class:`RunTracker` registers a run of an experiment in a :class:`LakehouseCatalog` (its
config, seed, world size and the snapshot of every ``LakeTable`` it reads), records loader
statistics after each epoch, and marks the run completed or failed. Catalog writes go through a
queue: when the catalog cannot be reached the write waits, a warning says so, and the queue is
replayed in order once a write succeeds again, so training never stops for the catalog.
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeVar

import duckdb

from duckstream.catalog import LakehouseCatalog, Run, refused_credentials
from duckstream.core.lake import LakeTable
from duckstream.errors import CatalogError, ConfigurationError, QueryError
from duckstream.redact import get_logger, redact
from duckstream.runs.loader_stats import EpochStats, LoaderMeter, count_rows

__all__ = ["RunTracker", "is_unreachable", "snapshots_of"]

log = get_logger(__name__)

T = TypeVar("T")

# Failures that mean "the catalog is not reachable now" (PostgreSQL down, a network fault):
# the write waits in the queue. Anything else is a refusal a retry cannot fix.
_UNREACHABLE_TYPES: tuple[type[BaseException], ...] = (
    OSError,
    duckdb.IOException,
    duckdb.ConnectionException,
    duckdb.HTTPException,
)
_UNREACHABLE_MARKERS = ("io error", "ioexception", "connect", "timeout", "timed out", "server closed")


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says the catalog could not be reached (worth retrying later).

    A server that answered to refuse the user or password was reached: waiting cannot help.
    """
    if refused_credentials(exc):
        return False
    if isinstance(exc, _UNREACHABLE_TYPES):
        return True
    if isinstance(exc, QueryError | duckdb.Error):
        text = f"{exc} {getattr(exc, 'engine_message', '')}".lower()
        return any(marker in text for marker in _UNREACHABLE_MARKERS)
    return False


def snapshots_of(sources: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``{name: {"table": ..., "version": ...}}`` for the ``LakeTable`` sources among ``sources``."""
    return {
        name: {"table": source.name, "version": source.version}
        for name, source in sources.items()
        if isinstance(source, LakeTable)
    }


@dataclass
class _Write:
    """One catalog write waiting its turn; ``apply`` gets the catalog and the run id so far."""

    what: str
    apply: Callable[[LakehouseCatalog, str | None], str | None]
    attempts: int = field(default=0)


class RunTracker:
    """One training run's record in the lakehouse catalog.

    ``catalog`` is a :class:`LakehouseCatalog` or its DSN/path (then opened here, with
    ``catalog_options`` such as ``data_path``, and closed by :meth:`close`). The run's
    ``snapshots`` name the table and snapshot of each ``LakeTable`` among ``sources`` (keyed
    as there), plus any ``snapshots`` given; its ``config`` holds ``config``, ``seed`` and
    ``world_size`` (by default the process group's, else 1).

    Under an initialised ``torch.distributed`` only rank 0 writes: every rank may create and
    drive a tracker as a plain training loop does, and the job is one run (the other ranks'
    trackers record nothing and have no ``run_id``).

    Call :meth:`start` before training, :meth:`record_epoch` (or iterate through
    :meth:`measure`) after each epoch, and :meth:`complete` or :meth:`fail` at the end; as a
    context manager it starts on entry and completes, or fails with the exception, on exit.
    No method raises because the catalog is down or refuses: writes wait while it cannot be
    reached and are replayed, in order, at the next write or :meth:`flush`; a refused write
    is dropped with a warning, at once (a wrong PostgreSQL password is a refusal, not an outage).
    A catalog given by DSN/path that cannot be opened as configured (a ``data_path`` other than
    the one it stores, a new PostgreSQL catalog without one) raises from :meth:`start`, before
    training; one that stops opening later (a refused password) drops the record with one
    warning.
    """

    def __init__(
        self,
        catalog: LakehouseCatalog | str | os.PathLike[str],
        experiment: str,
        *,
        description: str = "",
        config: Mapping[str, Any] | None = None,
        sources: Mapping[str, Any] | None = None,
        snapshots: Mapping[str, Any] | None = None,
        seed: int | None = None,
        world_size: int | None = None,
        catalog_options: Mapping[str, Any] | None = None,
        reconcile_timeout: float = 30.0,
    ) -> None:
        if not experiment:
            raise ConfigurationError("a run needs a non-empty experiment name")
        if reconcile_timeout < 0:
            raise ConfigurationError(f"reconcile_timeout must be >= 0 seconds, found {reconcile_timeout}")
        self.experiment = experiment
        self.description = description
        self.config: dict[str, Any] = dict(config or {})
        self.snapshots: dict[str, Any] = {**snapshots_of(sources or {}), **dict(snapshots or {})}
        self.seed = seed
        self.world_size = world_size
        self.reconcile_timeout = reconcile_timeout
        self._given: LakehouseCatalog | None = None
        self._where: str | os.PathLike[str] | None = None
        if isinstance(catalog, LakehouseCatalog):
            self._given = catalog
        else:
            self._where = catalog
        self._options = dict(catalog_options or {})
        self._opened: LakehouseCatalog | None = None
        self._queue: deque[_Write] = deque()
        self._run_id: str | None = None
        self._epochs: list[dict[str, Any]] = []
        self._outage_since: float | None = None
        self._unopenable: str | None = None  # why the catalog given by DSN/path cannot be opened
        self._started = False
        self._ended = False
        self._quiet = False  # a rank other than 0 of a process group: writes nothing

    # -- the record ------------------------------------------------------------------------

    @property
    def run_id(self) -> str | None:
        """The run's id once its registration reached the catalog, else None."""
        return self._run_id

    @property
    def pending(self) -> int:
        """Writes waiting for the catalog."""
        return len(self._queue)

    @property
    def epochs(self) -> list[dict[str, Any]]:
        """Loader statistics recorded so far, one dict per epoch."""
        return [dict(e) for e in self._epochs]

    def run_config(self) -> dict[str, Any]:
        """What the run's ``config`` column holds."""
        return {
            "config": self.config,
            "seed": self.seed,
            "world_size": self.world_size or (process_group() or (0, 1))[1],
        }

    def start(self) -> None:
        """Register the run (status ``running``); a second call does nothing."""
        if self._started:
            return
        group = process_group()
        if group is not None and group[0] != 0:
            self._started = self._quiet = True
            return
        if self._given is None:
            self._open_or_raise()
        self._started = True
        config, snapshots = self.run_config(), dict(self.snapshots)

        def register(catalog: LakehouseCatalog, _: str | None) -> str:
            experiment = catalog.register_experiment(self.experiment, self.description)
            run = catalog.register_run(experiment.experiment_id, config=config, snapshots=snapshots)
            return run.run_id

        self._submit(_Write("register the run", register))

    def record_epoch(self, stats: EpochStats | Mapping[str, Any]) -> None:
        """Add one epoch's loader statistics to the run's ``metrics``."""
        self._require_started()
        entry = stats.as_dict() if isinstance(stats, EpochStats) else dict(stats)
        self._epochs.append(entry)
        metrics = self._metrics()

        def record(catalog: LakehouseCatalog, run_id: str | None) -> None:
            catalog.record_run_metrics(_known(run_id), metrics)

        self._submit(_Write(f"record epoch {entry.get('epoch')}", record))

    def complete(self, metrics: Mapping[str, Any] | None = None) -> None:
        """Mark the run completed, with ``metrics`` beside the loader statistics."""
        self._end("complete the run", lambda c, r, m: c.complete_run(r, m), metrics)

    def fail(self, error: str | BaseException, metrics: Mapping[str, Any] | None = None) -> None:
        """Mark the run failed with ``error`` (redacted), keeping the statistics so far."""
        self._end("mark the run failed", lambda c, r, m: c.fail_run(r, error, metrics=m), metrics)

    def _end(
        self,
        what: str,
        action: Callable[[LakehouseCatalog, str, dict[str, Any]], Run],
        metrics: Mapping[str, Any] | None,
    ) -> None:
        self._require_started()
        if self._ended:
            return
        self._ended = True
        final = self._metrics(metrics)

        def end(catalog: LakehouseCatalog, run_id: str | None) -> None:
            action(catalog, _known(run_id), final)

        self._submit(_Write(what, end))

    def _metrics(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return {**dict(extra or {}), "loader_epochs": [dict(e) for e in self._epochs]}

    def _require_started(self) -> None:
        if not self._started:
            raise ConfigurationError("call RunTracker.start() before recording the run")

    # -- plain training loops --------------------------------------------------------------

    def measure(
        self, loader: Iterable[T], epoch: int, *, rows_of: Callable[[Any], int] = count_rows
    ) -> Iterator[T]:
        """Iterate ``loader`` as the pass of ``epoch``; its statistics are recorded when the pass
        ends (also when the loop leaves it early, e.g. with ``break``)."""
        meter = LoaderMeter(rows_of)
        try:
            yield from meter.measure(loader, epoch)
        finally:
            stats = meter.current()
            if stats is not None:
                self.record_epoch(stats)

    # -- the queue -------------------------------------------------------------------------

    def _open_or_raise(self) -> None:
        """Open the catalog given by DSN/path now, so that a wrong setting stops the run before
        training rather than dropping each of its writes. An outage leaves the registration
        waiting, and a refused password drops the record with one warning, as documented."""
        try:
            self._catalog()
        except Exception as exc:
            if is_unreachable(exc):
                return  # the registration waits in the queue
            if refused_credentials(exc):
                self._give_up(exc)
                return
            raise

    def _submit(self, write: _Write) -> None:
        if self._quiet:
            return
        if self._unopenable is not None:
            log.info("not trying to %s: %s", write.what, self._unopenable)
            return
        self._queue.append(write)
        self._drain()

    def _drain(self) -> bool:
        """Replay waiting writes in order; False when the catalog is still out of reach."""
        while self._queue:
            write = self._queue[0]
            write.attempts += 1
            try:
                result = write.apply(self._catalog(), self._run_id)
            except Exception as exc:
                if is_unreachable(exc):
                    self._note_outage(write, exc)
                    return False
                opening = self._given is None and self._opened is None
                if opening and isinstance(exc, CatalogError | ConfigurationError):
                    self._give_up(exc)
                    return True
                # The catalog refused (e.g. a replayed write had reached it before the connection
                # broke, so the run is already completed): a retry cannot help, and the run's
                # record must never stop training.
                log.warning(
                    "could not %s; dropping that write: %s: %s",
                    write.what,
                    type(exc).__name__,
                    redact(str(exc)),
                )
            else:
                if isinstance(result, str):
                    self._run_id = result
            self._queue.popleft()
        if self._outage_since is not None:
            log.warning(
                "the catalog is reachable again after %.1f s; the run's record is reconciled",
                time.monotonic() - self._outage_since,
            )
            self._outage_since = None
        return True

    def _give_up(self, exc: BaseException) -> None:
        # Opening failed for a reason no retry fixes (e.g. a refused password): every write
        # would fail the same way, so the record is dropped once, with one warning.
        self._unopenable = f"the catalog cannot be opened: {type(exc).__name__}: {redact(str(exc))}"
        log.warning("%s; the run is not recorded (no write of it will be tried)", self._unopenable)
        self._queue.clear()
        self._outage_since = None

    def _note_outage(self, write: _Write, exc: BaseException) -> None:
        if self._given is None:
            self._close_opened()  # reopen on the next attempt
        first_line = redact(str(exc)).splitlines()[0] if str(exc) else type(exc).__name__
        if self._outage_since is None:
            self._outage_since = time.monotonic()
        log.warning(
            "catalog unreachable while trying to %s (attempt %d, %d write(s) waiting); "
            "training goes on and the writes will be replayed: %s",
            write.what,
            write.attempts,
            len(self._queue),
            first_line,
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Replay waiting writes, retrying for up to ``timeout`` seconds (default
        ``reconcile_timeout``); True when the catalog holds the whole record."""
        deadline = time.monotonic() + (self.reconcile_timeout if timeout is None else timeout)
        delay = 0.2
        while not self._drain():
            if time.monotonic() >= deadline:
                log.warning(
                    "catalog still unreachable; %d write(s) of run %s were not recorded",
                    len(self._queue),
                    self._run_id or "(not yet registered)",
                )
                return False
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 5.0)
        return True

    def _catalog(self) -> LakehouseCatalog:
        if self._given is not None:
            return self._given
        if self._opened is None:
            assert self._where is not None
            self._opened = LakehouseCatalog(self._where, **self._options)
        return self._opened

    def _close_opened(self) -> None:
        if self._opened is not None:
            try:
                self._opened.close()
            except Exception as exc:  # a broken connection may fail to close; it is dropped anyway
                log.info("closing the unreachable catalog failed: %s", redact(str(exc)))
            self._opened = None

    # -- resources -------------------------------------------------------------------------

    def close(self) -> None:
        """Flush what waits (up to ``reconcile_timeout``) and close a catalog opened here."""
        try:
            if self._queue:
                self.flush()
        finally:
            self._close_opened()

    def __enter__(self) -> RunTracker:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if exc is None:
                self.complete()
            else:
                self.fail(exc)
        finally:
            self.close()

    def __repr__(self) -> str:
        return (
            f"RunTracker(experiment={self.experiment!r}, run_id={self._run_id!r}, "
            f"epochs={len(self._epochs)}, pending={len(self._queue)})"
        )


def process_group() -> tuple[int, int] | None:
    """This process's rank and the world size under an initialised ``torch.distributed``,
    else None (torch is not imported here: a process that never imported it has no group)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return int(dist.get_rank()), int(dist.get_world_size())


def _known(run_id: str | None) -> str:
    # Writes replay in order and registration comes first, so a later write always has an id.
    if run_id is None:
        raise CatalogError("the run was not registered; its registration write was dropped")
    return run_id
