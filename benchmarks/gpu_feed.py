"""Does the loader keep an accelerator fed? A small image+caption model trained for fixed steps.

``python -m duckstream.benchmarks.gpu_feed`` trains the same small contrastive model (a
convolutional image tower and a bag-of-words caption tower) for ``--steps`` steps after
``--warmup`` steps, once per loader and worker count, each in a fresh process, and prints
steps/s, the fraction of the measured time the loop spent waiting for its next batch, and
the waits of single steps (median, 99th percentile, longest: a steady cost per batch or a few
long stalls such as an epoch's start). The loaders read the same generated images dataset
(``datasets.py``, 10 KiB images, 16 files so that 16 workers each get one), shuffled, and turn
each batch into tensors by the same function
(:func:`prepare`) inside their workers: ``duckstream`` (``DuckStreamDataset(output="python",
transform=prepare)`` through ``DuckStreamLoader``) and ``datasets-stream``
(``load_dataset("parquet", streaming=True).shuffle(buffer_size=...).batch(...)`` through a
``DataLoader`` with ``collate_fn=prepare``). Batches come in pinned memory and are copied with
``non_blocking=True`` on CUDA, and each step ends with a synchronize there, so the time spent
waiting for a batch is time the accelerator sat idle. On a machine without one it runs on the
CPU (the figures then say little about an accelerator; tiny sizes make it a smoke run). It
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, get_args

from .datasets import DatasetSpec, ensure_dataset
from .memory import run_sampled

__all__ = ["FeedLoader", "FeedResult", "format_feed_table", "main", "prepare", "train"]

FeedLoader = Literal["duckstream", "datasets-stream"]

_MAX_WORDS = 16  # caption tokens per row, padded with 0
_VOCABULARY = 8_192
_IMAGE_BYTES = 10 * 1024  # mean image size; the smallest is 80% of it
_FILES = 16
_MB = 1024 * 1024


@dataclass(frozen=True, kw_only=True)
class FeedResult:
    """One loader at one worker count: measured steps, their seconds, and the time spent waiting."""

    loader: FeedLoader
    workers: int
    device: str
    steps: int
    seconds: float
    wait_seconds: float
    first_batch_seconds: float
    batch_size: int
    # Waits of single measured steps: the typical one, the 99th percentile and the longest (an
    # epoch's start, a row group entered): where a wait fraction comes from.
    wait_median_ms: float = 0.0
    wait_p99_ms: float = 0.0
    wait_max_ms: float = 0.0
    peak_rss_bytes: int = 0
    error: str | None = None

    @property
    def steps_per_second(self) -> float:
        """Measured steps over their wall time."""
        return self.steps / self.seconds if self.seconds else 0.0

    @property
    def wait_fraction(self) -> float:
        """The share of the measured time the loop waited for its next batch."""
        return self.wait_seconds / self.seconds if self.seconds else 0.0


def prepare(batch: dict[str, list[Any]], *, image_size: int) -> dict[str, Any]:
    """A batch of Python lists as the model takes it: uint8 images and caption token ids.

    Each image is the first ``3 * image_size**2`` bytes of its ``image`` value, shaped
    ``(3, image_size, image_size)``; each caption (the first of a row's ``captions``) becomes
    up to 16 word ids (CRC-32 of the word, modulo the vocabulary), 0 after its end. It runs in
    the loader's workers, as decoding and tokenising do in a real pipeline.
    """
    import numpy as np
    import torch

    pixels = 3 * image_size * image_size
    images = np.frombuffer(b"".join(image[:pixels] for image in batch["image"]), dtype=np.uint8)
    tokens = np.zeros((len(batch["image"]), _MAX_WORDS), dtype=np.int64)
    for row, captions in enumerate(batch["captions"]):
        words = captions[0].split()[:_MAX_WORDS]
        tokens[row, : len(words)] = [1 + zlib.crc32(word.encode()) % (_VOCABULARY - 1) for word in words]
    return {
        "image": torch.from_numpy(images.reshape(-1, 3, image_size, image_size).copy()),
        "tokens": torch.from_numpy(tokens),
    }


def _model(width: int) -> Any:
    import torch
    from torch import nn

    class CaptionMatcher(nn.Module):
        """Image and caption embeddings trained to match: a small CLIP."""

        def __init__(self) -> None:
            super().__init__()
            self.image = nn.Sequential(
                nn.Conv2d(3, width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1),
                nn.ReLU(),
                nn.AdaptiveAvgPool2d(1),
                nn.Flatten(),
                nn.Linear(4 * width, 128),
            )
            self.text = nn.EmbeddingBag(_VOCABULARY, 128, mode="mean", padding_idx=0)

        def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            image = nn.functional.normalize(self.image(images), dim=1)
            text = nn.functional.normalize(self.text(tokens), dim=1)
            logits = image @ text.T / 0.07
            labels = torch.arange(len(logits), device=logits.device)
            return (
                nn.functional.cross_entropy(logits, labels) + nn.functional.cross_entropy(logits.T, labels)
            ) / 2

    return CaptionMatcher()


def _loader(
    name: FeedLoader,
    source: Path,
    *,
    batch_size: int,
    workers: int,
    seed: int,
    image_size: int,
    shuffle_buffer: int,
    pin: bool,
) -> tuple[Any, Any]:
    """The loader and the object whose ``set_epoch`` starts each epoch (None: the loader counts)."""
    transform = partial(prepare, image_size=image_size)
    if name == "duckstream":
        from duckstream.stream import DuckStreamDataset, DuckStreamLoader

        dataset = DuckStreamDataset(
            str(source),
            sql="SELECT captions, image FROM source",
            batch_size=batch_size,
            shuffle=True,
            seed=seed,
            output="python",
            transform=transform,
        )
        loader = DuckStreamLoader(
            dataset, num_workers=workers, persistent_workers=workers > 0, pin_memory=pin
        )
        return loader, None
    import datasets
    from torch.utils.data import DataLoader

    files = sorted(str(path) for path in source.glob("*.parquet"))
    stream = datasets.load_dataset("parquet", data_files=files, split="train", streaming=True)
    batched = stream.select_columns(["captions", "image"]).shuffle(seed=seed, buffer_size=shuffle_buffer)
    batched = batched.batch(batch_size)
    # Not persistent: set_epoch reaches workers only when they start anew each epoch.
    return DataLoader(
        batched, batch_size=None, collate_fn=transform, num_workers=workers, pin_memory=pin
    ), batched


def train(
    name: FeedLoader,
    source: Path,
    *,
    device: str,
    steps: int,
    warmup: int,
    batch_size: int,
    workers: int,
    seed: int,
    image_size: int,
    width: int,
    shuffle_buffer: int,
) -> FeedResult:
    """Train the model for ``warmup`` then ``steps`` steps fed by ``name``; time the latter."""
    import torch

    torch.manual_seed(seed)
    target = torch.device(device)
    cuda = target.type == "cuda"
    model = _model(width).to(target)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    loader, epochs = _loader(
        name,
        source,
        batch_size=batch_size,
        workers=workers,
        seed=seed,
        image_size=image_size,
        shuffle_buffer=shuffle_buffer,
        pin=cuda,
    )
    epoch = 0
    batches = _epoch(loader, epochs, epoch)
    first = 0.0
    waits: list[float] = []
    clock = start
    for step in range(warmup + steps):
        if step == warmup:
            if cuda:
                torch.cuda.synchronize()
            clock = time.perf_counter()
            waits.clear()
        asked = time.perf_counter()
        batch = next(batches, None)
        if batch is None:  # the epoch ended: the next one, as a training loop goes on
            epoch += 1
            batches = _epoch(loader, epochs, epoch)
            batch = next(batches)
        waits.append(time.perf_counter() - asked)
        if step == 0:
            first = time.perf_counter() - start
        images = batch["image"].to(target, non_blocking=True).float().div_(255)
        tokens = batch["tokens"].to(target, non_blocking=True)
        loss = model(images, tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
    seconds = time.perf_counter() - clock
    import numpy as np

    step_ms = np.array(waits) * 1000
    return FeedResult(
        loader=name,
        workers=workers,
        device=_device_name(target),
        steps=steps,
        seconds=seconds,
        wait_seconds=sum(waits),
        first_batch_seconds=first,
        batch_size=batch_size,
        wait_median_ms=float(np.median(step_ms)),
        wait_p99_ms=float(np.percentile(step_ms, 99)),
        wait_max_ms=float(step_ms.max()),
    )


def _epoch(loader: Iterable[Any], epochs: Any, epoch: int) -> Any:
    if epochs is not None:
        epochs.set_epoch(epoch)
    return iter(loader)


def _device_name(device: Any) -> str:
    import torch

    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({os.cpu_count()} CPUs)"


def _resolve_device(asked: str) -> str:
    import torch

    if asked == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return asked


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1,4,8,16, found {text!r}") from None
    if min(counts) < 0:
        raise argparse.ArgumentTypeError(f"expected counts of 0 or more, found {text!r}")
    return counts


def _names(text: str) -> tuple[FeedLoader, ...]:
    known: tuple[FeedLoader, ...] = get_args(FeedLoader)
    names = [part.strip() for part in text.split(",")]
    if names == ["all"]:
        return known
    if any(name not in known for name in names):
        raise argparse.ArgumentTypeError(f"expected all or loaders among {', '.join(known)}, found {text!r}")
    return tuple(name for name in known if name in names)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m duckstream.benchmarks.gpu_feed", description=__doc__)
    parser.add_argument(
        "--device", default="auto", help="cuda, cpu, or auto (default: cuda where there is one)"
    )
    parser.add_argument("--loader", type=_names, default=get_args(FeedLoader), metavar="NAME[,NAME...]")
    parser.add_argument("--workers", type=_counts, default=(1, 4, 8, 16), metavar="N[,N...]")
    parser.add_argument("--rows", type=int, default=50_000, help="rows of the images dataset")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300, help="measured steps (default 300)")
    parser.add_argument("--warmup", type=int, default=30, help="steps before the clock starts (default 30)")
    parser.add_argument("--image-size", type=int, default=48, help="image side in pixels, at most 52")
    parser.add_argument("--width", type=int, default=64, help="channels of the first convolution")
    parser.add_argument("--shuffle-buffer", type=int, default=10_000, help="datasets' shuffle buffer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, help="where datasets are kept")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per configuration")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write the figures to PATH")
    parser.add_argument("--run", choices=get_args(FeedLoader), help=argparse.SUPPRESS)  # one, in this process
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run every loader and worker count in fresh processes and print the table; or, with --run, one."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.image_size < 1 or 3 * args.image_size**2 > _IMAGE_BYTES * 4 // 5:
        parser.error(f"--image-size must be 1 to 52 (pixels of a 10 KiB image), found {args.image_size}")
    for name in ("rows", "batch_size", "steps", "width", "shuffle_buffer"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, found {getattr(args, name)}")
    if args.warmup < 1:
        parser.error(f"--warmup must be at least 1 (the first batch starts the workers), found {args.warmup}")
    spec = DatasetSpec(rows=args.rows, image_bytes=_IMAGE_BYTES, files=_FILES, seed=args.seed)
    source = ensure_dataset(spec, args.cache_dir)
    device = _resolve_device(args.device)
    if args.run is not None:
        result = train(
            args.run,
            source,
            device=device,
            steps=args.steps,
            warmup=args.warmup,
            batch_size=args.batch_size,
            workers=args.workers[0],
            seed=args.seed,
            image_size=args.image_size,
            width=args.width,
            shuffle_buffer=args.shuffle_buffer,
        )
        print(json.dumps(asdict(result)), flush=True)
        return 0
    print(
        f"python {platform.python_version()}, device {device}, {args.rows:,} rows at {source}, batch "
        f"{args.batch_size}, {args.warmup} warm-up + {args.steps} measured steps",
        flush=True,
    )
    results = []
    for name in args.loader:
        for workers in args.workers:
            result = _run_one(args, name, workers, device)
            results.append(result)
            outcome = (
                result.error or f"{result.steps_per_second:.2f} steps/s, wait {result.wait_fraction:.1%}"
            )
            print(f"  {name} workers={workers}: {outcome}", flush=True)
    print()
    print(format_feed_table(results))
    if args.json is not None:
        document = {
            "machine": {"python": platform.python_version(), "platform": platform.platform()},
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "results": [
                {**asdict(r), "steps_per_second": r.steps_per_second, "wait_fraction": r.wait_fraction}
                for r in results
            ],
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 1 if any(r.error for r in results) else 0


def _run_one(args: argparse.Namespace, name: FeedLoader, workers: int, device: str) -> FeedResult:
    command = [
        sys.executable,
        "-m",
        "duckstream.benchmarks.gpu_feed",
        f"--run={name}",
        f"--workers={workers}",
        f"--device={device}",
        f"--rows={args.rows}",
        f"--batch-size={args.batch_size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
        f"--image-size={args.image_size}",
        f"--width={args.width}",
        f"--shuffle-buffer={args.shuffle_buffer}",
        f"--seed={args.seed}",
    ]
    if args.cache_dir is not None:
        command.append(f"--cache-dir={args.cache_dir}")
    run = run_sampled(command, timeout=args.timeout or None)
    failed = FeedResult(
        loader=name,
        workers=workers,
        device=device,
        steps=0,
        seconds=0.0,
        wait_seconds=0.0,
        first_batch_seconds=0.0,
        batch_size=args.batch_size,
    )
    if run.timed_out:
        return FeedResult(**{**asdict(failed), "error": f"no result within {args.timeout} s"})
    try:
        figures = json.loads(run.stdout.strip().splitlines()[-1])
        return FeedResult(**{**figures, "peak_rss_bytes": run.peak_rss_bytes})
    except (IndexError, ValueError, TypeError):
        lines = run.stderr.strip().splitlines() or [f"exit status {run.returncode}"]
        return FeedResult(**{**asdict(failed), "error": lines[-1]})


def format_feed_table(results: Sequence[FeedResult]) -> str:
    """The figures as an aligned plain-text table, one line per loader and worker count."""
    headers = (
        "loader",
        "workers",
        "device",
        "steps/s",
        "samples/s",
        "data wait",
        "step wait ms p50/p99/max",
        "1st batch s",
        "peak MB",
    )
    rows = [
        [r.loader, str(r.workers), r.device, f"failed: {r.error}"]
        if r.error
        else [
            r.loader,
            str(r.workers),
            r.device,
            f"{r.steps_per_second:,.2f}",
            f"{r.steps_per_second * r.batch_size:,.0f}",
            f"{r.wait_fraction:.1%}",
            f"{r.wait_median_ms:.2f} / {r.wait_p99_ms:.1f} / {r.wait_max_ms:.0f}",
            f"{r.first_batch_seconds:.2f}",
            f"{r.peak_rss_bytes / _MB:,.0f}",
        ]
        for r in results
    ]
    full = [row for row in rows if len(row) == len(headers)]
    widths = [max([len(h), *(len(row[i]) for row in full)]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i in (0, 2) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=False))
        ).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(row) for row in rows)])


if __name__ == "__main__":
    sys.exit(main())
