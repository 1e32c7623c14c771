"""The demo: a COCO-style caption dataset and the lakehouse walkthrough that runs on it.

``duckstream demo`` (or ``python -m duckstream.demo``) runs :func:`run_walkthrough`; the
dataset comes from :mod:`duckstream.demo.captions`, and each section of the walkthrough is one
function of ``data``, ``streams``, ``reports``, ``patterns`` or ``tiers`` (``frame`` holds what
they share, ``render`` draws their tables).
"""

from __future__ import annotations

from duckstream.demo.captions import CAPTION_SCHEMA, caption_table, make_caption_dataset, save_caption_dataset
from duckstream.demo.frame import Section, WalkthroughSettings
from duckstream.demo.walkthrough import run_demo, run_walkthrough

__all__ = [
    "CAPTION_SCHEMA",
    "Section",
    "WalkthroughSettings",
    "caption_table",
    "make_caption_dataset",
    "run_demo",
    "run_walkthrough",
    "save_caption_dataset",
]
