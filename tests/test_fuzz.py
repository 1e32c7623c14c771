"""Hostile input gets a documented error: no other exception type, no hang, no crash.

Hypothesis draws the cases here; tests/fuzz_driver.py runs each batch of them in a child
process under a watchdog, so that a hang or a native crash (segfault, abort) fails one test
with the case that caused it, instead of stopping pytest. Batches keep the child's start-up
(about two seconds with torch) to a few per test.

What the contract (duckstream/errors.py) allows a case to do:

- succeed: a flipped byte inside a page of plain values decodes to other values, and random
  SQL is sometimes a valid query;
- raise a ``DuckstreamError`` (for a file: ``SourceError``; for SQL: ``QueryError`` or
  ``ConfigurationError``; the test accepts any subclass, since which one depends on where the
  damage is found);
- for a state loaded into a reader: raise ``StateError`` and nothing else.

Anything else fails: another exception type, a case running past the driver's CASE_SECONDS
or the batch past BATCH_SECONDS, or the child dying. The last test also checks that the
message names what is at fault: the statement, the file (and column), or the state's key.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import strategies as st

from tests.dev_install import require

pytestmark = pytest.mark.slow

DRIVER = Path(__file__).with_name("fuzz_driver.py")
BATCH_SECONDS = 240  # generous: CI shares 2 cores, and a hang never ends anyway
ROWS = 120

# Shrinking would rerun the child for each step; the failure names the case at fault anyway.
FUZZ = settings(
    max_examples=2,
    deadline=None,
    derandomize=True,
    database=None,
    phases=(Phase.generate,),
    verbosity=Verbosity.quiet,  # the assertion names the failing cases; a batch would print whole
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# -- the child process -----------------------------------------------------------------------

_batches = count()


def _driver(workdir: Path, args: list[str], stderr_path: Path) -> int | None:
    """The driver's exit status (None: killed at BATCH_SECONDS), with whatever it started."""
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    with open(stderr_path, "wb") as stderr:
        child = subprocess.Popen(
            [sys.executable, str(DRIVER), str(workdir), *args],
            cwd=workdir,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,  # its DataLoader workers go with it
        )
        try:
            code: int | None = child.wait(timeout=BATCH_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    return code


def run_cases(workdir: Path, cases: list[dict[str, Any]]) -> tuple[str, list[dict[str, Any] | None]]:
    """The batch's name and what each case raised (None: nothing), run in one watched child
    process; fails on a hang or a crash, naming the case (a file case's file stays in ``workdir``)."""
    name = f"batch-{next(_batches)}"
    (workdir / f"{name}.pickle").write_bytes(pickle.dumps(cases))
    stderr_path = workdir / f"{name}.stderr"
    code = _driver(workdir, ["run", name], stderr_path)
    events = [json.loads(line) for line in (workdir / f"{name}.jsonl").read_text().splitlines()]
    ended = {e["case"]: e["raised"] for e in events if e["event"] == "end"}
    started = [e["case"] for e in events if e["event"] == "start"]
    if code != 0 or len(ended) != len(cases):
        running = started[-1] if started and started[-1] not in ended else None
        tail = stderr_path.read_text(errors="replace")[-4000:]
        if code is None:
            what = f"ran past {BATCH_SECONDS}s"
        elif code < 0:
            what = f"died of {signal.Signals(-code).name}"
        elif "Timeout (" in tail:  # the driver's own watchdog dumped the stacks
            what = "hung"
        else:
            what = f"exited with {code}"
        culprit = _shown(workdir, name, running, cases[running]) if running is not None else "none"
        pytest.fail(f"the fuzz driver {what} while running case {culprit}\n{tail}")
    return name, [ended[index] for index in range(len(cases))]


def check(workdir: Path, cases: list[dict[str, Any]]) -> None:
    """Run ``cases``; fail on a hang, a crash, or any exception the contract does not allow."""
    name, outcomes = run_cases(workdir, cases)
    wrong = []
    for index, (case, raised) in enumerate(zip(cases, outcomes, strict=True)):
        if raised is None:
            continue
        allowed = raised["state_error"] if case["kind"] == "state" else raised["documented"]
        if not allowed:
            wrong.append(
                f"{_shown(workdir, name, index, case)}\n  raised {raised['type']}: {raised['message']}\n"
                f"{raised['traceback']}"
            )
    assert not wrong, f"{len(wrong)} of {len(cases)} cases raised undocumented errors:\n\n" + "\n\n".join(
        wrong
    )


def _shown(workdir: Path, name: str, index: int, case: dict[str, Any]) -> str:
    shown = {k: v for k, v in case.items() if k != "data"}
    if case["kind"] == "file":
        shown["file"] = str(workdir / f"{name}-case-{index}.parquet")
    text = f"{index} of {name}: {shown!r}"
    return text if len(text) < 3000 else text[:3000] + "..."


# -- real inputs to damage -------------------------------------------------------------------


def _table() -> pa.Table:
    ids = list(range(ROWS))
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "x": pa.array([i * 0.5 for i in ids], pa.float64()),
            "name": pa.array([f"name-{i % 7}" for i in ids], pa.string()),
            "tags": pa.array([list(range(i % 4)) for i in ids], pa.list_(pa.int32())),
        }
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("fuzz")
    table = _table()
    pq.write_table(table, directory / "base.parquet", row_group_size=40)
    # Uncompressed and without dictionaries: a flipped byte reaches the values or page headers
    # themselves, not a decompressor that refuses it first.
    pq.write_table(
        table, directory / "plain.parquet", row_group_size=40, compression="none", use_dictionary=False
    )
    return directory


@pytest.fixture(scope="module")
def states(workdir: Path) -> dict[str, Any]:
    """Real states of every kind, saved mid-epoch by the driver (see save_states there)."""
    require("torchdata.stateful_dataloader")
    stderr_path = workdir / "states.stderr"
    code = _driver(workdir, ["states"], stderr_path)
    assert code == 0, (
        f"saving real states failed ({code}):\n{stderr_path.read_text(errors='replace')[-4000:]}"
    )
    saved: dict[str, Any] = pickle.loads((workdir / "states.pickle").read_bytes())
    return saved


def _files(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / f"{name}.parquet").read_bytes() for name in ("base", "plain")}


def _page_ranges(data: bytes) -> list[tuple[int, int]]:
    """Byte ranges of the column chunks (dictionary and data pages) of a Parquet file."""
    meta = pq.ParquetFile(pa.BufferReader(data)).metadata
    ranges = []
    for group in range(meta.num_row_groups):
        for column in range(meta.num_columns):
            chunk = meta.row_group(group).column(column)
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            ranges.append((start, start + chunk.total_compressed_size))
    return ranges


# -- strategies ------------------------------------------------------------------------------

APIS = st.sampled_from(["stream", "dataset", "hf"])
# Queries that read the damaged file through each path: pyarrow's decoding, DuckDB over the
# decoded batches or over the file, and a whole-source query materialised once.
FILE_SQL = st.sampled_from(
    [
        None,
        "SELECT id, x FROM source WHERE id % 3 = 0",
        "SELECT name, count(*) AS n FROM source GROUP BY name",
        "SELECT id, unnest(tags) AS tag FROM source",
    ]
)


@st.composite
def damaged_files(draw: st.DrawFn, files: dict[str, bytes]) -> dict[str, Any]:
    how = draw(st.sampled_from(["random", "framed", "truncated", "page", "anywhere"]))
    if how == "random":
        data = draw(st.binary(max_size=300))
    elif how == "framed":  # gets past the magic-number checks to the footer parser
        body = draw(st.binary(max_size=200))
        length = draw(st.one_of(st.integers(0, len(body) + 8), st.integers(0, 2**32 - 1)))
        data = b"PAR1" + body + length.to_bytes(4, "little") + b"PAR1"
    else:
        original = files[draw(st.sampled_from(sorted(files)))]
        if how == "truncated":
            data = original[: draw(st.integers(0, len(original) - 1))]
        else:
            if how == "page":
                start, stop = draw(st.sampled_from(_page_ranges(original)))
            else:
                start, stop = 0, len(original)
            damaged = bytearray(original)
            for _ in range(draw(st.integers(1, 6))):
                at = draw(st.integers(start, stop - 1))
                damaged[at] ^= draw(st.integers(1, 255))
            data = bytes(damaged)
    return {"kind": "file", "data": data, "sql": draw(FILE_SQL), "api": draw(APIS)}


def _valid_sql(base: str) -> list[str]:
    return [
        "SELECT * FROM source",
        "SELECT id, x FROM source WHERE id % 3 = 0",
        "SELECT id, name FROM source ORDER BY id DESC LIMIT 10",
        "SELECT name, count(*) AS n FROM source GROUP BY name",
        "SELECT DISTINCT name FROM source",
        "SELECT id, unnest(tags) AS tag FROM source",
        "SELECT id, row_number() OVER (ORDER BY x DESC) AS r FROM source",
        "WITH s AS (SELECT * FROM source WHERE x > 3) SELECT id FROM s",
        "SELECT a.id FROM source a JOIN source b USING (id) WHERE a.id < 50",
        f"SELECT * FROM read_parquet('{base}') WHERE id > 60",
        "SELECT id, CAST(name AS INTEGER) AS n FROM source",  # fails while reading
        "SELECT id, error('refused at ' || id) FROM source WHERE id = 100",
    ]


# Statements and fragments that break a query or are no query: extra statements, comments,
# unterminated literals, DDL, writes, settings.
HOSTILE_SQL = [
    "; SELECT 1",
    ";",
    "; ;",
    "-- a comment",
    "/* an unterminated comment",
    "'an unterminated string",
    '"an unterminated identifier',
    "$$",
    "?",
    "$1",
    "\x00",
    "CREATE TABLE copied AS SELECT * FROM source",
    "CREATE OR REPLACE VIEW source AS SELECT 1 AS id",
    "ATTACH 'other.db' AS other",
    "DETACH other",
    "COPY (SELECT * FROM source) TO 'copied.csv'",
    "COPY source TO 'copied.parquet' (FORMAT parquet)",
    "DROP VIEW source",
    "INSERT INTO source VALUES (1)",
    "SET threads = 1",
    "PRAGMA version",
    "EXPLAIN SELECT * FROM source",
    "PIVOT source ON name USING count(*)",
    "SELECT random() AS r FROM source",
    "UNION ALL SELECT * FROM source",
    "WHERE",
    "ORDER BY",
    "LIMIT -1",
    "FROM source",
    "(",
    ")",
    ",",
    "source",
]


@st.composite
def hostile_sql(draw: st.DrawFn, base: str) -> dict[str, Any]:
    valid = st.sampled_from(_valid_sql(base))
    fragment = st.sampled_from(HOSTILE_SQL)
    how = draw(st.sampled_from(["valid", "join", "insert", "cut", "random", "hostile"]))
    if how == "valid":  # some fail only while reading, after planning accepted them
        sql = draw(valid)
    elif how == "join":  # several statements, in either order, with hostile ones among them
        parts = draw(st.lists(st.one_of(valid, fragment), min_size=2, max_size=4))
        sql = draw(st.sampled_from(["; ", ";\n", " ", "\n-- x\n"])).join(parts)
    elif how == "insert":
        sql = draw(valid)
        at = draw(st.integers(0, len(sql)))
        sql = sql[:at] + " " + draw(fragment) + " " + sql[at:]
    elif how == "cut":  # a valid query cut short or with a slice taken out
        sql = draw(valid)
        a, b = sorted(draw(st.lists(st.integers(0, len(sql)), min_size=2, max_size=2)))
        sql = sql[:a] + sql[b:] if draw(st.booleans()) else sql[:a]
    elif how == "random":  # random text that still names the source
        sql = f"SELECT {draw(st.text(max_size=40))} FROM source {draw(st.text(max_size=20))}"
    else:
        sql = draw(fragment)
    return {"kind": "sql", "sql": sql, "api": draw(APIS)}


# Keys and values a hostile or corrupted state may hold in place of the real ones.
KEYS = [
    "version",
    "fingerprint",
    "seed",
    "shuffle",
    "even",
    "epoch",
    "stages",
    "consumed",
    "world_size",
    "num_workers",
    "batch_size",
    "chunk",
    "staggered",
    "slot",
    "worker",
    "stage",
    "rows",
    "_snapshot",
    "_worker_snapshots",
    "dataset_state",
    "_num_yielded",
]
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 40),
    st.sampled_from([2**31, 2**53 + 1, 2**63, 2**64, 10**30, -(2**63)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 1.0, 3.0, -1.0, float("nan"), float("inf")]),
    st.text(max_size=8),
    st.sampled_from(["", "pad", "drop", "1", "worker_0", "DuckExamplesIterable"]),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)), inner, max_size=3),
    ),
    max_leaves=6,
)


def _paths(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _paths(item, (*path, index))


def _at(value: Any, path: tuple[Any, ...]) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def mutated_state(
    draw: st.DrawFn, state: Any, under: tuple[Any, ...] = (), replace_only: bool = False
) -> Any:
    """``state`` with one to three values under ``under`` replaced, removed or added to."""
    state = copy.deepcopy(state)
    for _ in range(draw(st.integers(1, 3))):
        candidates = [p for p in _paths(state) if p[: len(under)] == under]
        if replace_only:
            candidates = [p for p in candidates if not isinstance(_at(state, p), dict | list)]
        if not candidates:
            break
        path = draw(st.sampled_from(candidates))
        current = _at(state, path)
        ops = ["replace", "nudge"] if replace_only else ["replace", "nudge", "delete", "add", "wrap"]
        new: Any
        op = draw(st.sampled_from(ops))
        if op == "nudge" and isinstance(current, int) and not isinstance(current, bool):
            new = current + draw(st.sampled_from([-1000, -1, 1, 1000, 2**40]))
        elif op == "delete" and len(path) > len(under):
            del _at(state, path[:-1])[path[-1]]
            continue
        elif op == "add" and isinstance(current, dict):
            current[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=4)))] = draw(VALUES)
            continue
        elif op == "add" and isinstance(current, list):
            current.append(draw(st.one_of(VALUES, st.just(copy.deepcopy(current[0]) if current else 0))))
            continue
        elif op == "wrap":
            new = [current]
        else:
            new = draw(VALUES)
        if path:
            _at(state, path[:-1])[path[-1]] = new
        else:
            state = new
    return state


@st.composite
def hostile_states(draw: st.DrawFn, states: dict[str, Any]) -> dict[str, Any]:
    """A state for the dataset or DuckStreamLoader: a real one of any kind mutated, or noise."""
    if draw(st.integers(0, 9)) == 0:
        state = draw(VALUES)
    else:
        state = draw(
            mutated_state(
                states[draw(st.sampled_from(["dataset", "loader", "stages", "workers", "in_process"]))]
            )
        )
    return {"kind": "state", "target": draw(st.sampled_from(["dataset", "loader"])), "state": state}


# -- the tests -------------------------------------------------------------------------------


def batch(cases: st.SearchStrategy[dict[str, Any]], size: int) -> st.SearchStrategy[list[dict[str, Any]]]:
    # Distinct cases: Hypothesis's first, simplest batch would otherwise repeat one case.
    return st.lists(cases, min_size=size, max_size=size, unique_by=repr)


def test_damaged_parquet_files_raise_documented_errors(workdir: Path) -> None:
    files = _files(workdir)

    @FUZZ
    @given(batch(damaged_files(files), 30))
    def run(cases: list[dict[str, Any]]) -> None:
        check(workdir, cases)

    run()


def test_hostile_sql_raises_documented_errors(workdir: Path) -> None:
    base = str(workdir / "base.parquet")

    @FUZZ
    @given(batch(hostile_sql(base), 40))
    def run(cases: list[dict[str, Any]]) -> None:
        check(workdir, cases)

    run()


def test_hostile_states_raise_state_errors(workdir: Path, states: dict[str, Any]) -> None:
    @FUZZ
    @given(batch(hostile_states(states), 40))
    def run(cases: list[dict[str, Any]]) -> None:
        check(workdir, cases)

    run()


def test_hostile_worker_and_hf_states_raise_state_errors(workdir: Path, states: dict[str, Any]) -> None:
    # Only what duckstream writes is damaged: the layers torchdata and datasets wrap around it
    # are theirs, and they parse (and refuse) those themselves.
    worker_0 = ("_snapshot", "_worker_snapshots", "worker_0", "dataset_state")
    worker_cases = mutated_state(states["workers"], under=worker_0).map(
        lambda s: {"kind": "state", "target": "workers", "state": s}
    )
    ours = ("examples_iterable", "examples_iterable")
    hf_cases = mutated_state(states["hf"], under=ours, replace_only=True).map(
        lambda s: {"kind": "state", "target": "hf", "state": s}
    )

    # A worker that refuses its state costs torchdata seconds to shut down: few such cases.
    @FUZZ
    @given(st.tuples(batch(hf_cases, 8), batch(worker_cases, 1)).map(lambda parts: parts[0] + parts[1]))
    def run(cases: list[dict[str, Any]]) -> None:
        check(workdir, cases)

    run()


def test_known_bad_input_gets_an_error_naming_what_is_at_fault(workdir: Path, states: dict[str, Any]) -> None:
    dataset = states["dataset"]
    stage = dataset["stages"][0]
    files = _files(workdir)
    plain = files["plain"]
    at = plain.index(b"name-3")  # first in a data page: the file is uncompressed, no dictionary
    not_utf8 = plain[:at] + b"name\xff3" + plain[at + 6 :]
    worker_1 = ("_snapshot", "_worker_snapshots", "worker_1", "dataset_state")
    wrong_role = copy.deepcopy(states["workers"])
    _at(wrong_role, worker_1)["slot"]["worker"] = 7
    text_count = copy.deepcopy(states["workers"])
    _at(text_count, ("_snapshot", "_worker_snapshots", "worker_0", "dataset_state"))["slot"]["stage"][
        "consumed"
    ] = "3"
    hf_ours = ("examples_iterable", "examples_iterable", "rows")

    def hf_rows(rows: Any) -> dict[str, Any]:
        state: dict[str, Any] = copy.deepcopy(states["hf"])
        _at(state, hf_ours[:-1])["rows"] = rows
        return state

    def state(target: str, value: Any) -> dict[str, Any]:
        return {"kind": "state", "target": target, "state": value}

    def sql(text: str, api: str = "dataset") -> dict[str, Any]:
        return {"kind": "sql", "sql": text, "api": api}

    # (case, the error it raises, words of its message that name the statement, file or key)
    expected: list[tuple[dict[str, Any], str, list[str]]] = [
        *(
            (sql("SELECT id FROM source; SELECT 1", api), "ConfigurationError", ["2 statements", "SELECT 1"])
            for api in ("stream", "dataset", "hf")
        ),
        (sql("SELECT id FROM source; COPY (SELECT 1) TO 'written.csv'"), "ConfigurationError", ["COPY"]),
        (sql("CREATE TABLE copied AS SELECT * FROM source"), "ConfigurationError", ["CREATE", "copied"]),
        (sql("ATTACH 'other.db' AS source"), "ConfigurationError", ["ATTACH", "other.db"]),
        (sql("-- nothing but a comment on source"), "ConfigurationError", ["no statement"]),
        (sql("PIVOT source ON name USING count(*)"), "ConfigurationError", ["PIVOT", "IN (...)"]),
        (
            sql("SELECT 'unterminated FROM source", "stream"),
            "QueryError",
            ["unterminated", "SELECT 'unterminated"],
        ),
        (
            {"kind": "file", "data": plain[: len(plain) // 2], "sql": None, "api": "dataset"},
            "SourceError",
            ["case-", ".parquet"],
        ),
        *(
            (
                {"kind": "file", "data": not_utf8, "sql": None, "api": api},
                "SourceError",
                ["case-", "column 'name'"],
            )
            for api in ("dataset", "hf")
        ),
        *(
            (state(target, {**dataset, "stages": 3}), "StateError", ["state['stages']"])
            for target in ("dataset", "loader")
        ),
        (
            state("dataset", {**dataset, "stages": [{**stage, "consumed": 1.5}]}),
            "StateError",
            ["state['stages'][0]['consumed']", "1.5"],
        ),
        (
            state("dataset", {**dataset, "stages": [{**stage, "consumed": float("nan")}]}),
            "StateError",
            ["state['stages'][0]['consumed']", "nan"],
        ),
        (
            state("loader", {**dataset, "stages": [{**stage, "world_size": 2**40}]}),
            "StateError",
            ["state['stages'][0]['world_size']"],
        ),
        (
            state("dataset", {**dataset, "stages": [{**stage, "drop_last": 0}]}),
            "StateError",
            ["state['stages'][0]['drop_last']"],
        ),
        (state("dataset", {**dataset, "epoch": True}), "StateError", ["state['epoch']", "True"]),
        (state("dataset", {**dataset, "epoch": -1}), "StateError", ["state['epoch']", "-1"]),
        (state("dataset", {**dataset, "epoch": 2**64}), "StateError", ["state['epoch']"]),
        (state("dataset", {**dataset, "shuffle": 1}), "StateError", ["shuffle"]),
        (state("dataset", {**dataset, "extra": 0}), "StateError", ["unexpected", "'extra'"]),
        (
            state("dataset", {k: v for k, v in dataset.items() if k != "epoch"}),
            "StateError",
            ["missing ['epoch']"],
        ),
        (
            state("loader", {**states["workers"], "_steps_since_snapshot": "2"}),
            "StateError",
            ["state['_steps_since_snapshot']"],
        ),
        (
            state("dataset", wrong_role),
            "StateError",
            ["['worker_1']['dataset_state']['slot']['worker']", "7"],
        ),
        (state("workers", text_count), "StateError", ["['slot']['stage']['consumed']", "'3'"]),
        (state("hf", hf_rows(-1)), "StateError", ["'rows'", "-1"]),
        (state("hf", hf_rows(1.5)), "StateError", ["'rows'", "1.5"]),
        (state("hf", hf_rows(10**6)), "StateError", ["'rows'", "holds only"]),
    ]
    _, outcomes = run_cases(workdir, [case for case, _, _ in expected])
    wrong = []
    for (case, error, words), raised in zip(expected, outcomes, strict=True):
        found = "nothing" if raised is None else f"{raised['type']}: {raised['message']}"
        if (
            raised is None
            or not raised["type"].endswith(f".{error}")
            or not all(w in raised["message"] for w in words)
        ):
            wrong.append(f"{case!r:.300}\n  expected {error} naming {words}, raised {found}")
    assert not wrong, "\n".join(wrong)
    assert not (workdir / "written.csv").exists(), "a statement after the query ran while planning"
