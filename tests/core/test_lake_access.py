from __future__ import annotations

import pickle
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from duckstream.core.lake import LakeAccess, SparseFiles


class _File(NamedTuple):
    """What a lake table's plan knows of one file."""

    file_index: int
    direct: bool
    delete: str | None
    renames: tuple[tuple[str, str], ...]
    inlined: tuple[int, ...]


_files = st.builds(
    _File,
    st.integers(0, 2**40),
    st.booleans(),
    st.one_of(st.none(), st.sampled_from(["s3://b/t/d-1.parquet", "/data/t/ducklake-é-delete.parquet"])),
    st.sampled_from([(), (("label", "old_label"),), (("a", "b"), ("c", "d"))]),
    st.one_of(st.just(()), st.lists(st.integers(0, 10_000), max_size=4, unique=True).map(sorted).map(tuple)),
)


def _lake(files: list[_File]) -> LakeAccess:
    return LakeAccess.of(
        "ATTACH 'ducklake:postgres:password=secret' AS lake",
        "lake.main.t",
        True,
        file_indexes=[f.file_index for f in files],
        direct=[f.direct for f in files],
        deletes=[f.delete for f in files],
        renames=[f.renames for f in files],
        inlined_deletes=[f.inlined for f in files],
    )


@given(files=st.lists(_files, max_size=40))
def test_lake_access_answers_the_same_for_every_file_once_pickled(files: list[_File]) -> None:
    lake = _lake(files)
    back = pickle.loads(pickle.dumps(lake))
    assert back == lake
    assert back.file_indexes.dtype == np.int64
    assert back.direct.dtype == bool
    assert back.file_indexes.tolist() == [f.file_index for f in files]
    assert back.with_deleted_rows().tolist() == [back.deleted_rows(f) for f in range(len(files))]
    for file, known in enumerate(files):
        assert bool(back.direct[file]) == known.direct
        assert back.deletes[file] == known.delete
        assert back.inlined_deletes[file] == known.inlined
        assert back.stored_names(file) == dict(known.renames)
        assert back.deleted_rows(file) == (known.delete is not None or bool(known.inlined))
    assert list(back.deletes) == [f.delete for f in files]
    assert list(back.renames) == [f.renames for f in files]


def test_sparse_files_hold_only_the_files_that_have_one() -> None:
    sparse = SparseFiles.of([None, "a", None, None, "b"], None)
    assert sparse.files.tolist() == [1, 4]
    assert list(sparse.values) == ["a", "b"]
    assert (len(sparse), sparse[4], sparse[-1], sparse[0], sparse[1:3]) == (5, "b", "b", None, ["a", None])
    assert sparse.mask().tolist() == [False, True, False, False, True]
    assert repr(sparse) == "SparseFiles(2 of 5 files)"
    with pytest.raises(IndexError, match="expected a file number below 5, found 5"):
        sparse[5]


def test_lake_access_keeps_the_attach_statement_out_of_its_repr() -> None:
    lake = _lake([_File(0, True, None, (), ())])
    assert "secret" not in repr(lake)
    assert "attach" not in repr(lake)


def test_lake_access_wants_one_value_per_file() -> None:
    with pytest.raises(ValueError, match=r"expected one value per planned file, found \[1, 2\] values"):
        LakeAccess.of(
            "",
            "t",
            False,
            file_indexes=[0, 1],
            direct=[True],
            deletes=[None, None],
            renames=[(), ()],
            inlined_deletes=[(), ()],
        )


def test_a_million_file_lake_access_pickles_small() -> None:
    files = 1_000_000
    deletes: list[str | None] = [None] * files
    deletes[7] = "s3://b/t/d.parquet"
    lake = LakeAccess.of(
        "",
        "lake.main.t",
        False,
        file_indexes=range(files),
        direct=[True] * files,
        deletes=deletes,
        renames=[()] * files,
        inlined_deletes=[()] * files,
    )
    # file_index steps of one byte, direct as bits; the sparse parts hold one file
    assert len(pickle.dumps(lake)) < files * 1.25
    assert pickle.loads(pickle.dumps(lake)).deletes[7] == "s3://b/t/d.parquet"
