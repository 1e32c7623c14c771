"""The run tables of a lake: ``experiments`` and ``simulation_runs``, written append-only.

A run's status change is a new revision of its row in ``simulation_run_log``, and the
``simulation_runs`` view shows the latest, because concurrent UPDATEs conflict on a shared
catalog. :class:`RunRecords` is the half of :class:`~duckstream.catalog.LakehouseCatalog` that
writes them; the catalog supplies the statements' plumbing (:meth:`~RunRecords.fetchall`,
:meth:`~RunRecords.write`, :meth:`~RunRecords.exclusive_append`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict

from duckstream.errors import CatalogError, ConfigurationError
from duckstream.redact import redact

__all__ = ["Experiment", "Run", "RunRecords", "RunStatus"]

RunStatus = Literal["running", "completed", "failed"]

_TRACKING_DDL = (
    """CREATE TABLE IF NOT EXISTS {a}.experiment_log (
        experiment_id VARCHAR, name VARCHAR, description VARCHAR, created_at TIMESTAMPTZ)""",
    """CREATE TABLE IF NOT EXISTS {a}.simulation_run_log (
        run_id VARCHAR, experiment_id VARCHAR, sim_index INTEGER, status VARCHAR, config JSON,
        s3_prefix VARCHAR, snapshots JSON, metrics JSON, error VARCHAR,
        started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, revision INTEGER, recorded_at TIMESTAMPTZ)""",
    # The first registration of a name wins, so racing get-or-creates agree on one id.
    """CREATE VIEW IF NOT EXISTS {a}.experiments AS
        SELECT experiment_id, name, description, created_at FROM {a}.experiment_log
        QUALIFY row_number() OVER (PARTITION BY name ORDER BY created_at, experiment_id) = 1""",
    """CREATE VIEW IF NOT EXISTS {a}.simulation_runs AS
        SELECT * EXCLUDE (revision, recorded_at) FROM {a}.simulation_run_log
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY revision DESC, recorded_at DESC) = 1""",
)
_RUN_COLUMNS = (
    "run_id, experiment_id, sim_index, status, config, s3_prefix, snapshots, metrics, error, "
    "started_at, finished_at"
)


class Experiment(BaseModel):
    """One row of ``experiments``."""

    model_config = ConfigDict(frozen=True)

    experiment_id: str
    name: str
    description: str
    created_at: datetime


class Run(BaseModel):
    """One run, as the ``simulation_runs`` view shows it."""

    model_config = ConfigDict(frozen=True)

    run_id: str
    experiment_id: str
    sim_index: int
    status: RunStatus
    config: dict[str, Any] | None
    s3_prefix: str | None
    snapshots: dict[str, Any] | None
    metrics: dict[str, Any] | None
    error: str | None
    started_at: datetime
    finished_at: datetime | None


class RunRecords:
    """Experiments and runs in the lake attached as :attr:`alias`.

    A subclass (:class:`~duckstream.catalog.LakehouseCatalog`) supplies the three statements'
    methods below and calls :meth:`_create_run_tables` once the lake is attached.
    """

    alias: str

    def fetchall(
        self, sql: str, params: list[Any] | None = None, *, on: duckdb.DuckDBPyConnection | None = None
    ) -> list[tuple[Any, ...]]:
        """The rows of ``sql``; see :meth:`duckstream.catalog.LakehouseCatalog.fetchall`."""
        raise NotImplementedError

    def write(
        self,
        what: str,
        sql: str,
        params: list[Any] | None = None,
        *,
        on: duckdb.DuckDBPyConnection | None = None,
    ) -> list[tuple[Any, ...]]:
        """Run a write, retried on commit conflicts; see :meth:`duckstream.catalog.LakehouseCatalog.write`."""
        raise NotImplementedError

    def exclusive_append(self, table: str) -> AbstractContextManager[None]:
        """Keyed appends into ``table`` take turns while held; see
        :meth:`duckstream.catalog.LakehouseCatalog.exclusive_append`."""
        raise NotImplementedError

    def _create_run_tables(self) -> None:
        for ddl in _TRACKING_DDL:
            self.write("create the run tables", ddl.format(a=self.alias))

    def register_experiment(self, name: str, description: str = "") -> Experiment:
        """The experiment called ``name``, created when it does not exist yet."""
        if not name:
            raise ConfigurationError("an experiment needs a non-empty name")
        existing = self._experiment(name)
        if existing is not None:
            return existing
        # New names take turns. The view ranks registrations by created_at, the start of each
        # one's transaction, but they become visible in commit order: one that began first and
        # committed second would take the name from a registration that had already returned
        # its own id. Under the lock the second one finds the first and inserts nothing.
        with self.exclusive_append("experiment_log"):
            existing = self._experiment(name)
            if existing is not None:
                return existing
            self.write(
                "register an experiment",
                f"INSERT INTO {self.alias}.experiment_log VALUES (?, ?, ?, now())",
                [_new_id(), name, description],
            )
            created = self._experiment(name)
        assert created is not None
        return created

    def _experiment(self, name: str) -> Experiment | None:
        rows = self.fetchall(
            "SELECT experiment_id, name, description, created_at "
            f"FROM {self.alias}.experiments WHERE name = ?",
            [name],
        )
        if not rows:
            return None
        experiment_id, name, description, created_at = rows[0]
        return Experiment(
            experiment_id=experiment_id, name=name, description=description or "", created_at=created_at
        )

    def register_run(
        self,
        experiment_id: str,
        sim_index: int = 0,
        config: Mapping[str, Any] | None = None,
        s3_prefix: str | None = None,
        *,
        snapshots: Mapping[str, Any] | None = None,
    ) -> Run:
        """A new run of ``experiment_id``, status ``running``."""
        known = self.fetchall(
            f"SELECT 1 FROM {self.alias}.experiments WHERE experiment_id = ?", [experiment_id]
        )
        if not known:
            raise CatalogError(f"no experiment with id {experiment_id!r}; register_experiment first")
        run_id = _new_id()
        self._append_run(
            run_id=run_id,
            experiment_id=experiment_id,
            sim_index=sim_index,
            status="running",
            config=_json(config),
            s3_prefix=s3_prefix,
            snapshots=_json(snapshots),
            metrics=None,
            error=None,
            started_at=None,
            finished_at=None,
            revision=0,
        )
        return self.get_run(run_id)

    def complete_run(self, run_id: str, metrics: Mapping[str, Any] | None = None) -> Run:
        """Mark ``run_id`` completed, with its final metrics."""
        return self._finish(run_id, "completed", metrics=metrics, error=None)

    def fail_run(
        self, run_id: str, error: str | BaseException, *, metrics: Mapping[str, Any] | None = None
    ) -> Run:
        """Mark ``run_id`` failed, with what went wrong (and the metrics gathered until then)."""
        text = redact(f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else str(error))
        return self._finish(run_id, "failed", metrics=metrics, error=text)

    def record_run_metrics(self, run_id: str, metrics: Mapping[str, Any]) -> Run:
        """Replace the metrics of running ``run_id`` (e.g. loader statistics after each epoch).

        Appends a revision of the run's row (still ``running``); the newest one shows.
        """
        return self._revise(run_id, "running", metrics=metrics, error=None, action="takes metrics")

    def get_run(self, run_id: str) -> Run:
        """The run as ``simulation_runs`` shows it now."""
        rows = self.fetchall(
            f"SELECT {_RUN_COLUMNS} FROM {self.alias}.simulation_runs WHERE run_id = ?", [run_id]
        )
        if not rows:
            raise CatalogError(f"no run with id {run_id!r}")
        names = [c.strip() for c in _RUN_COLUMNS.split(",")]
        record = dict(zip(names, rows[0], strict=True))
        for key in ("config", "snapshots", "metrics"):
            record[key] = json.loads(record[key]) if record[key] is not None else None
        return Run(**record)

    def _finish(
        self, run_id: str, status: RunStatus, *, metrics: Mapping[str, Any] | None, error: str | None
    ) -> Run:
        return self._revise(run_id, status, metrics=metrics, error=error, action="can end")

    def _revise(
        self,
        run_id: str,
        status: RunStatus,
        *,
        metrics: Mapping[str, Any] | None,
        error: str | None,
        action: str,
    ) -> Run:
        """Append the next revision of running ``run_id``: ``status``, ``metrics`` and ``error``."""
        run = self.get_run(run_id)
        if run.status != "running":
            raise CatalogError(f"run {run_id!r} is already {run.status}; only a running run {action}")
        self._append_run(
            run_id=run_id,
            experiment_id=run.experiment_id,
            sim_index=run.sim_index,
            status=status,
            config=_json(run.config),
            s3_prefix=run.s3_prefix,
            snapshots=_json(run.snapshots),
            metrics=_json(metrics),
            error=error,
            started_at=run.started_at,
            finished_at=None if status == "running" else "now",
            revision=self._next_revision(run_id),
        )
        return self.get_run(run_id)

    def _next_revision(self, run_id: str) -> int:
        rows = self.fetchall(
            f"SELECT coalesce(max(revision), -1) + 1 FROM {self.alias}.simulation_run_log WHERE run_id = ?",
            [run_id],
        )
        return int(rows[0][0])

    def _append_run(self, **row: Any) -> None:
        started = "now()" if row["started_at"] is None else "?"
        finished = "now()" if row["finished_at"] == "now" else "NULL"
        params = [
            row["run_id"],
            row["experiment_id"],
            row["sim_index"],
            row["status"],
            row["config"],
            row["s3_prefix"],
            row["snapshots"],
            row["metrics"],
            row["error"],
        ]
        if row["started_at"] is not None:
            params.append(row["started_at"])
        params.append(row["revision"])
        sql = (
            f"INSERT INTO {self.alias}.simulation_run_log VALUES "
            f"(?, ?, ?, ?, ?, ?, ?, ?, ?, {started}, {finished}, ?, now())"
        )
        self.write("record a run", sql, params)


def _new_id() -> str:
    # Random UUIDs need no coordination between machines registering runs at once.
    return str(uuid.uuid4())


def _json(value: Mapping[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(dict(value), default=str, sort_keys=True)
