"""A warning, once per plan, buffer and world size in a process, where a shuffled read cannot
mix a source's rows well at its buffer: few row groups a rank, too large to cut into parts,
each read in one pass (see :func:`duckstream.core.interleave.order_left`). It names the files
and both remedies, a buffer that holds a rank's rows, and smaller row groups. Files a shuffled
read copies into small row groups (see :mod:`duckstream.core.recut`) are judged by the copy's:
what is left is files DuckDB reads itself (a lake file only DuckLake's scan can read, a query
that computes on a type DuckDB cannot take from Arrow), or a filter the planner counts shard by
shard, over such row groups."""

from __future__ import annotations

import numpy as np

from duckstream.core.interleave import LEFT_ORDER_WARNING, visible_order
from duckstream.core.planning import StreamPlan
from duckstream.redact import get_logger

__all__ = ["LEFT_ORDER_WARNING", "warn_if_ordered"]

log = get_logger(__name__)

_ROW_GROUP_BYTES = 8 * 1024 * 1024
_NAMED_FILES = 3
_warned: set[tuple[str, int, int]] = set()


def warn_if_ordered(plan: StreamPlan, buffer: int, streams: int, *, ranks: int = 1) -> None:
    """Log a warning when a shuffled read of ``plan`` with ``buffer``-row windows, shared by
    ``ranks`` ranks, keeps visible storage order (|Spearman| over :data:`LEFT_ORDER_WARNING`)."""
    key = (plan.fingerprint, buffer, ranks)
    if key in _warned:
        return
    layout = plan.layout_for(ranks)
    left = visible_order(layout, buffer, streams, ranks)
    if left <= LEFT_ORDER_WARNING:
        return
    fixed = ~np.asarray(layout.anywhere, dtype=bool)
    _warned.add(key)
    large = np.unique(plan.shards.file[fixed]).tolist()
    names = ", ".join(plan.files[f] for f in large[:_NAMED_FILES])
    more = f" and {len(large) - _NAMED_FILES} more" if len(large) > _NAMED_FILES else ""
    groups = sum(len(plan.row_groups[f]) for f in large)
    # A window that holds a rank's rows shuffles them whole.
    rows = -(-plan.num_rows // ranks)
    shared = f", shared by {ranks} ranks" if ranks > 1 else ""
    log.warning(
        "a shuffled read of %s%s keeps part of its storage order (|Spearman| about %.2f): its rows lie "
        "in %d row group(s) of about %.0f MiB%s, each read in one pass with a %d-row buffer. Set "
        "shuffle_buffer=%d (about %.0f MiB a reader) to shuffle them whole, or rewrite the files in "
        "row groups of about 8 MiB (pyarrow.parquet.write_table(..., row_group_size=%d))",
        names,
        more,
        left,
        groups,
        plan.num_rows * plan.row_bytes / max(1, groups) / 2**20,
        shared,
        buffer,
        rows,
        rows * plan.row_bytes / 2**20,
        max(1, _ROW_GROUP_BYTES // max(1, plan.row_bytes)),
    )
