"""Pictures of an epoch's order: position in the epoch against id, one PNG per configuration.

Storage order is the diagonal; a uniform shuffle fills the square evenly; what a shuffle leaves
behind shows as structure (runs of a shard read in file order as short diagonal strokes, a
bounded buffer as a band around the diagonal). matplotlib comes with the ``quality`` extra and
is imported only when a picture is asked for (``duckstream bench --plot DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from duckstream._optional import require

if TYPE_CHECKING:
    from .loader import Measurement
    from .shuffle_quality import ShuffleQuality

__all__ = ["plot_epoch", "plot_name", "require_matplotlib"]


def require_matplotlib() -> Any:
    """matplotlib, or :class:`~duckstream.errors.MissingDependencyError` naming the ``quality`` extra."""
    return require("matplotlib")


def plot_name(m: Measurement) -> str:
    """The file name of configuration ``m``'s picture, e.g. ``captions-1x-plain-duckstream-2w.png``."""
    workers = "" if m.workers is None else f"-{m.workers}w"
    return f"{m.preset}-{m.scale}x-{m.path}-{m.loader}{workers}.png"


def plot_epoch(
    ids: npt.ArrayLike, path: str | Path, *, title: str, quality: ShuffleQuality | None = None
) -> Path:
    """Draw one epoch's ``ids`` (in the order received) against their positions into the PNG ``path``."""
    require_matplotlib()
    # The object API, not pyplot: no global figure state and no GUI backend in a headless bench.
    from matplotlib.figure import Figure

    values = np.asarray(ids)
    figure = Figure(figsize=(6, 6), dpi=100, layout="constrained")
    axes = figure.subplots()
    # One pixel a row: hundreds of thousands of points draw in about a second.
    axes.plot(np.arange(len(values)), values, linestyle="none", marker=",", color="tab:blue")
    axes.set_xlabel("position in the epoch")
    axes.set_ylabel("id (storage order)")
    axes.set_xlim(0, max(len(values) - 1, 1))
    if quality is not None:
        title += (
            f"\n|rho| {quality.spearman:.3f}, neighbours kept {quality.neighbours_kept:.3f}, "
            f"displacement {quality.displacement:.3f}"
        )
    axes.set_title(title, fontsize=9)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target
