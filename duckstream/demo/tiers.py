"""Pattern 7 of the walkthrough, streamable tiers: the images split by the length of their first
caption, each tier an experiment with one recorded run, streamed as a Hugging Face
``IterableDataset``.

Without a catalog the tiers still stream; the section says that their runs were not recorded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from duckstream.core.lake import LakeTable
from duckstream.demo.data import EXPERIMENT
from duckstream.demo.frame import CAPTIONS_TABLE, Lakehouse, Section, rows_table
from duckstream.demo.streams import describe_source

__all__ = ["TIERS", "TIER_SELECT", "Tier", "tiers_section"]

TIER_SELECT = "SELECT imgid, split, sentences[1] AS first_caption, length(sentences[1]) AS chars FROM source"


@dataclass(frozen=True)
class Tier:
    """Images whose first caption has ``low`` (inclusive) to ``high`` (exclusive) characters."""

    name: str
    low: int | None
    high: int | None

    @property
    def label(self) -> str:
        if self.low is None:
            return f"under {self.high} chars"
        if self.high is None:
            return f"{self.low} chars or more"
        return f"{self.low} to {self.high - 1} chars"

    @property
    def where(self) -> str:
        bounds = [
            *([] if self.low is None else [f"length(sentences[1]) >= {self.low}"]),
            *([] if self.high is None else [f"length(sentences[1]) < {self.high}"]),
        ]
        return " AND ".join(bounds)

    @property
    def sql(self) -> str:
        return f"{TIER_SELECT} WHERE {self.where}"

    @property
    def experiment(self) -> str:
        return f"{EXPERIMENT}-{self.name}"


TIERS = (Tier("short", None, 40), Tier("medium", 40, 60), Tier("long", 60, None))


def tiers_section(lake: Lakehouse, source: LakeTable | list[str]) -> Section:
    from duckstream.stream import as_iterable_dataset

    recorded = lake.catalog is not None
    shown, facts = [], {}
    for index, tier in enumerate(TIERS):
        run_id = _register(lake, tier, index, source) if recorded else None
        rows = list(as_iterable_dataset(source, tier.sql, **lake.stream_keywords))
        metrics = {
            "images": len(rows),
            "mean_chars": round(sum(r["chars"] for r in rows) / max(1, len(rows)), 2),
        }
        status = lake.recorded.complete_run(run_id, metrics=metrics).status if run_id is not None else None
        facts[tier.name] = {"rows": rows, "run_id": run_id, "status": status, **metrics}
        shown.append(
            {
                "tier": tier.name,
                "first caption": tier.label,
                **metrics,
                "experiment": tier.experiment if recorded else "-",
                "run": run_id[:8] if run_id is not None else "not recorded",
                "status": status or "-",
            }
        )
    if recorded:
        how = "one experiment per tier, one run each, registered before it streams and completed after:"
    else:
        how = f"runs not recorded: no catalog, {lake.catalog_problem}. The tiers stream all the same:"
    wheres = "\n".join(f"  {tier.name:8}{tier.where}" for tier in TIERS)
    text = (
        "Tiers by the characters of each image's first caption, each streamed with\n"
        f"as_iterable_dataset({describe_source(source)}, sql), the SQL being\n"
        f"  {TIER_SELECT}\n  WHERE, by tier:\n{wheres}\n"
        f"{how}\n{lake.render(rows_table(shown))}"
    )
    return Section(
        "Pattern 7: Streamable tiers by caption length", text, {"tiers": facts, "recorded": recorded}
    )


def _register(lake: Lakehouse, tier: Tier, index: int, source: LakeTable | list[str]) -> str:
    catalog = lake.recorded
    experiment = catalog.register_experiment(tier.experiment, f"caption model on first captions {tier.label}")
    config: dict[str, Any] = {"tier": tier.name, "first_caption": tier.label, "sql": tier.sql}
    run = catalog.register_run(
        experiment.experiment_id,
        sim_index=index,
        config=config,
        s3_prefix=lake.settings.raw_location,
        snapshots={CAPTIONS_TABLE: source.version} if isinstance(source, LakeTable) else None,
    )
    return run.run_id
