"""One plan per job under torch.distributed: rank 0 plans, every other rank receives its plan.

Planning reads every Parquet footer of the source (and counts a filter's rows); done by every
rank at once, a job of many nodes asks the store for each footer once per rank. When a default
process group is initialised, rank 0 plans alone and sends the plan to the others with
``broadcast_object_list`` on that group. This is a collective: every rank must construct the
dataset, in the same order as the other collective calls of the job. A failure to plan on rank 0
is raised on every rank, so none waits for a plan that never comes.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable

import torch.distributed as dist

from duckstream.core.planning import StreamPlan
from duckstream.errors import DuckstreamError
from duckstream.storage import S3Settings

__all__ = ["shared_plan"]


def shared_plan(plan: Callable[[], StreamPlan], s3: S3Settings) -> StreamPlan:
    """``plan()`` run on rank 0 only and broadcast to every rank, when a process group is
    initialised and holds more than one rank; else ``plan()`` here.

    S3 keys do not travel: each rank's plan reads with its own ``s3`` settings.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return plan()
    box: list[object] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            made = plan()
            anonymous = dataclasses.replace(made.s3, access_key=None, secret_key=None, session_token=None)
            box[0] = dataclasses.replace(made, s3=anonymous)
        except Exception as exc:  # every rank must raise it, not wait
            failure = exc
            box[0] = _portable(exc)
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    received = box[0]
    if isinstance(received, BaseException):
        raise received
    assert isinstance(received, StreamPlan)
    return dataclasses.replace(received, s3=s3)


def _portable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling whole, else a DuckstreamError with its message."""
    try:
        copy = pickle.loads(pickle.dumps(exc))
    except Exception:  # one that does not travel is described
        return DuckstreamError(f"rank 0 could not plan the stream: {type(exc).__name__}: {exc}")
    return copy if isinstance(copy, Exception) else exc
