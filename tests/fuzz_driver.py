"""Runs duckstream on hostile input in a process of its own, for tests/test_fuzz.py.

A case that hangs or takes the interpreter down (a segfault or abort in a native library) must
fail one test, not kill pytest, so the cases run here, in a child process the test watches.

    python tests/fuzz_driver.py WORKDIR states   writes real states to WORKDIR/states.pickle
    python tests/fuzz_driver.py WORKDIR run NAME runs the cases pickled in WORKDIR/NAME.pickle

``run`` appends one JSON line per event to WORKDIR/NAME.jsonl and flushes it at once, so the
parent knows which case was running when the process hung or died: ``{"case": i, "event":
"start"}`` before a case, ``{"case": i, "event": "end", "raised": null | {...}, "seconds": s}``
after it. A case that runs past CASE_SECONDS has every thread's stack dumped to stderr and the
process exits: the parent reports it as a hang.

WORKDIR holds ``base.parquet`` (the valid file the SQL and state cases read) and is the
working directory, so whatever a hostile statement might write stays inside it.

Cases (dicts):

- ``{"kind": "file", "data": bytes, "sql": str | None, "api": API}``: ``data`` written to
  WORKDIR/NAME-case-I.parquet (left there to reproduce a failure), read whole.
- ``{"kind": "sql", "sql": str, "api": API}``: ``base.parquet`` through ``sql``, read whole.
- ``{"kind": "state", "target": TARGET, "state": object}``: ``state`` loaded into a fresh
  reader of ``base.parquet`` configured as the one that saved the real states, then read
  whole. TARGET is "dataset", "loader" (DuckStreamLoader without workers), "workers" (torchdata's
  StatefulDataLoader with two workers, each of which loads its own part) or "hf".

API is "stream" (stream_batches), "dataset" (DuckStreamDataset in batches) or "hf"
(as_iterable_dataset).
"""

from __future__ import annotations

import faulthandler
import json
import os
import pickle
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from duckstream.errors import DuckstreamError, StateError

CASE_SECONDS = 60  # far past any case on a loaded 2-core machine (most take well under 1 s)
# The reader every state case loads into: the real states are saved by one configured so.
DATASET_OPTIONS: dict[str, Any] = {"batch_size": 7, "shuffle": True, "seed": 3, "shuffle_buffer": 16}


def base_file(workdir: Path) -> str:
    return str(workdir / "base.parquet")


def make_dataset(workdir: Path) -> Any:
    from duckstream.stream import DuckStreamDataset

    return DuckStreamDataset(base_file(workdir), cache_dir=workdir / "cache", **DATASET_OPTIONS)


def read_all(api: str, path: str, sql: str | None, workdir: Path) -> None:
    cache = workdir / "cache"
    if api == "stream":
        from duckstream.stream import stream_batches

        for _ in stream_batches(path, sql, batch_size=16, cache_dir=cache):
            pass
    elif api == "dataset":
        from duckstream.stream import DuckStreamDataset

        for _ in DuckStreamDataset(path, sql, batch_size=16, cache_dir=cache):
            pass
    elif api == "hf":
        from duckstream.stream import as_iterable_dataset

        for _ in as_iterable_dataset(path, sql, cache_dir=cache):
            pass
    else:
        raise AssertionError(f"unknown api {api!r}")


def load_and_read(target: str, state: Any, workdir: Path) -> None:
    if target == "dataset":
        dataset = make_dataset(workdir)
        dataset.load_state_dict(state)
        for _ in dataset:
            pass
    elif target == "loader":
        from duckstream.stream import DuckStreamLoader

        loader = DuckStreamLoader(make_dataset(workdir))
        loader.load_state_dict(state)
        for _ in loader:
            pass
    elif target == "workers":
        from torchdata.stateful_dataloader import StatefulDataLoader  # type: ignore[import-untyped]

        stateful = StatefulDataLoader(make_dataset(workdir), batch_size=None, num_workers=2)
        stateful.load_state_dict(state)
        for _ in stateful:
            pass
    elif target == "hf":
        from duckstream.stream import as_iterable_dataset

        hf = as_iterable_dataset(base_file(workdir), cache_dir=workdir / "cache")
        hf.load_state_dict(state)
        for _ in hf:
            pass
    else:
        raise AssertionError(f"unknown target {target!r}")


def case_file(workdir: Path, name: str, index: int) -> Path:
    """Where the file of case ``index`` of batch ``name`` is written (and left, to reproduce it)."""
    return workdir / f"{name}-case-{index}.parquet"


def run_case(name: str, index: int, case: dict[str, Any], workdir: Path) -> None:
    kind = case["kind"]
    if kind == "file":
        path = case_file(workdir, name, index)
        path.write_bytes(case["data"])
        read_all(case["api"], str(path), case["sql"], workdir)
    elif kind == "sql":
        read_all(case["api"], base_file(workdir), case["sql"], workdir)
    elif kind == "state":
        load_and_read(case["target"], case["state"], workdir)
    else:
        raise AssertionError(f"unknown kind {kind!r}")


def describe(exc: BaseException) -> dict[str, Any]:
    message = str(exc)
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "documented": isinstance(exc, DuckstreamError),
        "state_error": isinstance(exc, StateError),
        # Both ends: a worker's error re-raised by DataLoader ends with the original message.
        "message": message if len(message) <= 2000 else f"{message[:1000]} ... {message[-1000:]}",
        "traceback": "".join(traceback.format_exception(exc)[-6:])[-3000:],
    }


def run(workdir: Path, name: str) -> None:
    cases = pickle.loads((workdir / f"{name}.pickle").read_bytes())
    with open(workdir / f"{name}.jsonl", "a", encoding="utf-8") as report:

        def emit(record: dict[str, Any]) -> None:
            report.write(json.dumps(record) + "\n")
            report.flush()

        for index, case in enumerate(cases):
            emit({"case": index, "event": "start"})
            faulthandler.dump_traceback_later(CASE_SECONDS, exit=True)
            began = time.perf_counter()
            raised: dict[str, Any] | None = None
            try:
                run_case(name, index, case, workdir)
            except Exception as exc:  # every escape is recorded; the parent judges it
                raised = describe(exc)
            finally:
                faulthandler.cancel_dump_traceback_later()
            seconds = round(time.perf_counter() - began, 3)
            emit({"case": index, "event": "end", "raised": raised, "seconds": seconds})


def save_states(workdir: Path) -> None:
    """Real states of each kind the readers save, taken mid-epoch, for the parent to mutate."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from duckstream.stream import DuckStreamLoader, as_iterable_dataset

    def take(iterable: Any, count: int) -> None:
        for index, _ in enumerate(iterable):
            if index + 1 >= count:
                break

    states: dict[str, Any] = {}
    dataset = make_dataset(workdir)
    take(dataset, 3)
    states["dataset"] = dataset.state_dict()
    loader = DuckStreamLoader(make_dataset(workdir))
    take(loader, 4)
    states["loader"] = loader.state_dict()
    # Two stages: read by two workers, then resumed in-process.
    two = StatefulDataLoader(make_dataset(workdir), batch_size=None, num_workers=2)
    take(two, 5)
    states["workers"] = two.state_dict()
    resumed = make_dataset(workdir)
    resumed.load_state_dict(states["workers"])
    take(resumed, 2)
    states["stages"] = resumed.state_dict()
    plain = StatefulDataLoader(make_dataset(workdir), batch_size=None)
    take(plain, 2)
    states["in_process"] = plain.state_dict()
    hf = as_iterable_dataset(base_file(workdir), cache_dir=workdir / "cache")
    take(hf, 5)
    states["hf"] = hf.state_dict()
    (workdir / "states.pickle").write_bytes(pickle.dumps(states))


def main() -> None:
    faulthandler.enable()
    workdir = Path(sys.argv[1]).resolve()
    os.chdir(workdir)
    if sys.argv[2] == "states":
        save_states(workdir)
    elif sys.argv[2] == "run":
        run(workdir, sys.argv[3])
    else:
        raise SystemExit(f"unknown command {sys.argv[2]!r}")
    # Every outcome is written and flushed. pyarrow 26 sometimes aborts while the interpreter
    # tears its thread pools down ("terminate called without an active exception"), with or
    # without duckstream: that is no verdict on a case.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
