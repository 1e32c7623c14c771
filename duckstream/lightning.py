"""Lightning faces of duckstream: DuckStreamDataModule (the data) and CatalogCallback (the run record).

Under DDP each rank reads its own exact share: Lightning leaves an ``IterableDataset`` alone
(no DistributedSampler), and the dataset partitions itself by the rank torch.distributed
reports. Resuming: the train loader is stateful, so Lightning saves what the training loop took
from it in every checkpoint and loads it back right after creating the loader again; the data
module's own ``state_dict`` carries the same state for loops that checkpoint it directly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from typing import Any, Literal

try:
    import lightning as L
except ModuleNotFoundError:  # name the extra to install
    from duckstream._optional import require

    require("lightning")
    raise

from duckstream.adapters.mix import DuckStreamMix
from duckstream.adapters.torch import DuckStreamDataset, DuckStreamLoader
from duckstream.catalog import LakehouseCatalog
from duckstream.core.lake import LakeTable
from duckstream.errors import ConfigurationError
from duckstream.redact import get_logger
from duckstream.runs.loader_stats import EpochStats, LoaderMeter, count_rows
from duckstream.runs.metrics import column_statistics, loader_metrics, log_metrics
from duckstream.runs.tracking import RunTracker
from duckstream.storage import S3Settings

__all__ = ["CatalogCallback", "DuckStreamDataModule", "LoaderMetricsCallback", "MeteredLoader", "Split"]

log = get_logger(__name__)

Split = Literal["train", "val", "test", "predict"]
SPLITS: tuple[Split, ...] = ("train", "val", "test", "predict")
# The data module's keywords that say how to reach its files (LoaderMetricsCallback reads them too).
_READ_KEYWORDS = (
    "s3_endpoint",
    "s3_access_key",
    "s3_secret_key",
    "s3_region",
    "s3_use_ssl",
    "s3_retry_seconds",
    "cache_dir",
)


class MeteredLoader(DuckStreamLoader):
    """A :class:`DuckStreamLoader` that times each pass and reads the epoch from a trainer.

    ``epoch_of`` returns the epoch the trainer is in (None when unknown, or when not given:
    then each pass is the next epoch): each pass reads that epoch, except a pass continuing a
    loaded state of the same epoch.
    """

    def __init__(
        self,
        dataset: DuckStreamDataset | DuckStreamMix,
        num_workers: int = 0,
        *,
        meter: LoaderMeter,
        epoch_of: Callable[[], int | None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, num_workers=num_workers, **kwargs)
        self.meter = meter
        self._epoch_of = epoch_of

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        # A generator: this runs at the pass's first next(), once the trainer's epoch has begun.
        epoch = None if self._epoch_of is None else self._epoch_of()
        if epoch is not None:
            self.set_epoch(epoch)
        sources = self.source_items if isinstance(self.dataset, DuckStreamMix) else None
        yield from self.meter.measure(super().__iter__(), lambda: self.epoch, sources=sources)


class DuckStreamDataModule(L.LightningDataModule):
    """Train/val/test/predict splits read by duckstream, for ``Trainer.fit(model, datamodule=...)``.

    Each split is a source (path, glob, ``s3://`` URI, list, ``LakeTable``) or a ready
    :class:`DuckStreamDataset` or :class:`DuckStreamMix` (kept as it is). Sources become
    datasets with ``sql``, ``batch_size``, ``seed`` and ``dataset_kwargs``; only ``train`` is
    shuffled. The train loader reads the trainer's epoch each epoch, and its state resumes a
    checkpoint mid-epoch with no sample repeated or lost. ``loader_kwargs`` go to every DataLoader
    (``pin_memory``, ``persistent_workers``, ``multiprocessing_context``, ...). ``meters``
    hold each split's loader statistics.
    """

    def __init__(
        self,
        train: Any,
        val: Any = None,
        test: Any = None,
        predict: Any = None,
        *,
        sql: str | None = None,
        batch_size: int | None = 32,
        num_workers: int = 0,
        shuffle: bool = True,
        seed: int = 0,
        loader_kwargs: Mapping[str, Any] | None = None,
        **dataset_kwargs: Any,
    ) -> None:
        super().__init__()
        if train is None:
            raise ConfigurationError("DuckStreamDataModule needs a train source or DuckStreamDataset")
        if num_workers < 0:
            raise ConfigurationError(f"num_workers must be >= 0, found {num_workers}")
        if batch_size is not None and batch_size < 1:
            raise ConfigurationError(f"batch_size must be a positive integer or None, found {batch_size}")
        self.sources: dict[Split, Any] = {
            name: value
            for name, value in zip(SPLITS, (train, val, test, predict), strict=True)
            if value is not None
        }
        self.sql = sql
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.shuffle = shuffle
        self.seed = seed
        self.loader_kwargs = dict(loader_kwargs or {})
        self.dataset_kwargs = dataset_kwargs
        self.meters: dict[Split, LoaderMeter] = {
            name: LoaderMeter(self._rows_of(name)) for name in self.sources
        }
        for split in ("val", "test", "predict"):
            if split in self.sources:
                # Lightning's own from_datasets sets hooks per instance too; a partial pickles.
                setattr(self, f"{split}_dataloader", partial(self._loader, split))
        self._datasets: dict[Split, DuckStreamDataset | DuckStreamMix] = {}
        self._train_loader: MeteredLoader | None = None
        self._train_state: dict[str, Any] | None = None

    # -- datasets --------------------------------------------------------------------------

    def dataset(self, split: Split) -> DuckStreamDataset | DuckStreamMix:
        """The dataset of ``split``, built on first use (in this process, so on each rank)."""
        if split not in self.sources:
            raise ConfigurationError(
                f"this data module has no {split!r} split; it has {sorted(self.sources)}"
            )
        if split not in self._datasets:
            source = self.sources[split]
            if isinstance(source, DuckStreamDataset | DuckStreamMix):
                self._datasets[split] = source
            else:
                self._datasets[split] = DuckStreamDataset(
                    source,
                    self.sql,
                    batch_size=self.batch_size,
                    shuffle=self.shuffle and split == "train",
                    seed=self.seed,
                    **self.dataset_kwargs,
                )
        return self._datasets[split]

    def _rows_of(self, split: Split) -> Callable[[Any], int]:
        source = self.sources[split]
        ready = isinstance(source, DuckStreamDataset | DuckStreamMix)
        batch_size = source.batch_size if ready else self.batch_size
        return count_rows if batch_size is not None else _one_row

    def setup(self, stage: str) -> None:
        wanted: dict[str, tuple[Split, ...]] = {
            "fit": ("train", "val"),
            "validate": ("val",),
            "test": ("test",),
            "predict": ("predict",),
        }
        for split in wanted.get(stage, ()):
            if split in self.sources:
                self.dataset(split)

    def snapshots(self) -> dict[str, dict[str, Any]]:
        """For each split read from a lakehouse table, the table and the snapshot it is pinned to."""
        found: dict[str, dict[str, Any]] = {}
        for split, source in self.sources.items():
            if isinstance(source, LakeTable):
                found[split] = {"table": source.name, "version": source.version}
            elif isinstance(source, DuckStreamDataset) and source.plan.lake is not None:
                found[split] = {"scan": source.plan.lake.scan, "fingerprint": source.plan.fingerprint}
            elif isinstance(source, DuckStreamMix):
                # Every mixed source, files or table: what it read, at which snapshot.
                for name, dataset, weight in zip(source.names, source.datasets, source.weights, strict=True):
                    plan = dataset.plan
                    summary = plan.summary()
                    found[f"{split}/{name}"] = {
                        "scan": plan.lake.scan if plan.lake is not None else None,
                        "fingerprint": plan.fingerprint,
                        "files": summary["files"],
                        "first_file": summary["first_file"],
                        "rows": plan.num_rows,
                        "sql": plan.query,
                        "weight": weight,
                    }
        return found

    # -- loaders ---------------------------------------------------------------------------

    def _loader(self, split: Split) -> MeteredLoader:
        """A new loader of ``split`` (train: see :meth:`train_dataloader`)."""
        return MeteredLoader(
            self.dataset(split),
            self.num_workers,
            meter=self.meters[split],
            epoch_of=self._trainer_epoch if split == "train" else None,
            **self.loader_kwargs,
        )

    def _trainer_epoch(self) -> int | None:
        trainer = self.trainer
        return None if trainer is None else int(trainer.current_epoch)

    def train_dataloader(self) -> MeteredLoader:
        loader = self._loader("train")
        if self._train_state is not None:
            loader.load_state_dict(self._train_state)
            self._train_state = None
        self._train_loader = loader
        return loader

    # val/test/predict_dataloader exist only for the splits given (set in __init__), so
    # Lightning skips a stage that has no data instead of iterating an empty one.

    # -- state -----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{"train": <loader state>}``: what the training loop took from the train loader."""
        if self._train_loader is not None:
            return {"train": self._train_loader.state_dict()}
        return {} if self._train_state is None else {"train": dict(self._train_state)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume the train loader from ``state_dict`` (now, or when it is created)."""
        train = state_dict.get("train")
        if train is None:
            return
        if self._train_loader is not None:
            self._train_loader.load_state_dict(train)
        else:
            self._train_state = dict(train)

    def epoch_stats(self, split: Split = "train") -> EpochStats | None:
        """Loader statistics of ``split``'s pass in progress, else its last pass."""
        meter = self.meters.get(split)
        return None if meter is None else meter.current()


def _one_row(item: Any) -> int:
    return 1


class CatalogCallback(L.Callback):
    """Records each ``fit`` as a run in a lakehouse catalog, from rank 0 only.

    At fit start it registers a run of ``experiment`` with the model's hyperparameters,
    ``config``, the seed, the world size and the snapshot of every ``LakeTable`` the
    :class:`DuckStreamDataModule` reads; after each training epoch it records the train
    loader's statistics (rows, batches, rows/s, time waiting for data; rank 0's loader, whose
    share equals every other rank's); at the end it marks the
    run completed, or failed with the error. ``catalog`` is a :class:`LakehouseCatalog` or its
    DSN/path (opened here with ``catalog_options``, closed when fit ends; an existing catalog
    needs no ``data_path``, and one that disagrees with it stops the fit at start). A catalog
    outage never stops training: see :class:`duckstream.runs.tracking.RunTracker`.
    """

    def __init__(
        self,
        catalog: LakehouseCatalog | str | os.PathLike[str],
        experiment: str,
        *,
        description: str = "",
        config: Mapping[str, Any] | None = None,
        catalog_options: Mapping[str, Any] | None = None,
        reconcile_timeout: float = 30.0,
    ) -> None:
        if not experiment:
            raise ConfigurationError("CatalogCallback needs a non-empty experiment name")
        if isinstance(catalog, LakehouseCatalog) and catalog_options:
            raise ConfigurationError("catalog_options apply only when the catalog is given as a DSN/path")
        self.catalog = catalog
        self.experiment = experiment
        self.description = description
        self.config = dict(config or {})
        self.catalog_options = dict(catalog_options or {})
        self.reconcile_timeout = reconcile_timeout
        self.tracker: RunTracker | None = None

    @property
    def run_id(self) -> str | None:
        """The id of the run this callback recorded last (rank 0; None elsewhere)."""
        return None if self.tracker is None else self.tracker.run_id

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)  # set by fit()
        config: dict[str, Any] = {
            "hyperparameters": dict(pl_module.hparams),
            "max_epochs": trainer.max_epochs,
            **self.config,
        }
        seed = None
        snapshots: dict[str, Any] = {}
        if isinstance(datamodule, DuckStreamDataModule):
            seed = datamodule.seed
            snapshots = datamodule.snapshots()
            config["data"] = {
                "batch_size": datamodule.batch_size,
                "num_workers": datamodule.num_workers,
                "shuffle": datamodule.shuffle,
                "sql": datamodule.sql,
            }
            train = datamodule.sources.get("train")
            if isinstance(train, DuckStreamMix):
                config["data"]["mix"] = {
                    "sources": list(train.names),
                    "weights": list(train.weights),
                    "stopping": train.stopping,
                    "num_items": train.num_items,
                    "seed": train.seed,
                }
        self.tracker = None
        tracker = RunTracker(
            self.catalog,
            self.experiment,
            description=self.description,
            config=config,
            seed=seed,
            world_size=trainer.world_size,
            catalog_options=self.catalog_options,
            reconcile_timeout=self.reconcile_timeout,
            snapshots=snapshots,
        )
        # A catalog given by DSN/path that cannot be opened as configured stops the fit here,
        # before training; the failure is no run to mark failed.
        tracker.start()
        self.tracker = tracker

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tracker is None or not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)  # set by fit()
        if isinstance(datamodule, DuckStreamDataModule):
            stats = datamodule.epoch_stats("train")
            if stats is not None:
                self.tracker.record_epoch(stats)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.tracker is None or not trainer.is_global_zero:
            return
        try:
            self.tracker.complete(_scalars(trainer.callback_metrics))
        finally:
            self.tracker.close()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if self.tracker is None or not trainer.is_global_zero:
            return
        try:
            self.tracker.fail(exception, _scalars(trainer.callback_metrics))
        finally:
            self.tracker.close()


def _scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The trainer's last logged metrics as plain floats."""
    found: dict[str, float] = {}
    for key, value in metrics.items():
        try:
            found[key] = float(value)
        except (TypeError, ValueError):
            continue
    return found


class LoaderMetricsCallback(L.Callback):
    """Logs the train loader's statistics to the trainer's loggers after each training epoch.

    With Lightning's ``WandbLogger`` they reach Weights & Biases (offline too). ``column_sql``,
    a one-row aggregate over the train source such as ``SELECT avg(length(caption)) AS
    caption_length FROM source``, is logged once at fit start (over ``column_source`` when
    given, else the data module's train source), read with the data module's S3 settings (those
    of its train dataset when that split is a ready :class:`DuckStreamDataset`). Rank 0 logs;
    every rank reads its own share.
    """

    def __init__(
        self,
        *,
        column_sql: str | None = None,
        column_source: Any = None,
        prefix: str = "loader/",
        column_prefix: str = "data/",
    ) -> None:
        self.column_sql = column_sql
        self.column_source = column_source
        self.prefix = prefix
        self.column_prefix = column_prefix
        self.logged: list[dict[str, float]] = []  # what this callback sent, in order

    def _send(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        for logger in trainer.loggers:
            log_metrics(logger, metrics, step=trainer.global_step)
        self.logged.append(metrics)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.column_sql is None or not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        source = self.column_source
        if source is None:
            train = datamodule.sources.get("train") if isinstance(datamodule, DuckStreamDataModule) else None
            if train is None or isinstance(train, DuckStreamDataset | DuckStreamMix):
                raise ConfigurationError(
                    "LoaderMetricsCallback(column_sql=...) needs a source to query: pass column_source=, "
                    "or give the DuckStreamDataModule its train split as a source, not a dataset"
                )
            source = train
        statistics = column_statistics(
            source, self.column_sql, prefix=self.column_prefix, **_read_keywords(datamodule)
        )
        self._send(trainer, statistics)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        datamodule = getattr(trainer, "datamodule", None)
        if not isinstance(datamodule, DuckStreamDataModule):
            return
        stats = datamodule.epoch_stats("train")
        if stats is not None:
            self._send(
                trainer, {**loader_metrics(stats, prefix=self.prefix), f"{self.prefix}epoch": stats.epoch}
            )


def _read_keywords(datamodule: Any) -> dict[str, Any]:
    """How the data module reaches its train data: its S3 keywords and cache folder."""
    if not isinstance(datamodule, DuckStreamDataModule):
        return {}
    train = datamodule.sources.get("train")
    if isinstance(train, DuckStreamDataset):
        return _s3_keywords(train.plan.s3)
    if isinstance(train, DuckStreamMix):
        return _s3_keywords(train.datasets[0].plan.s3)
    return {key: value for key, value in datamodule.dataset_kwargs.items() if key in _READ_KEYWORDS}


def _s3_keywords(s3: S3Settings) -> dict[str, Any]:
    return {
        "s3_endpoint": s3.endpoint_url,  # with its scheme, which carries use_ssl
        "s3_access_key": s3.access_key,
        "s3_secret_key": s3.secret_key,
        "s3_region": s3.region,
        "s3_use_ssl": s3.use_ssl if s3.endpoint is None else None,
        "s3_retry_seconds": s3.retry_seconds,
    }
