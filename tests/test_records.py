from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from dctp_tasks.records import (
    CORE_SCHEMA,
    LINEAGE_TYPE,
    NORMALIZED_SCHEMA,
    append_step,
    conform,
    content_hashes,
    derive_doc_id,
    empty_lineage,
    split_for,
)
from tests.conftest import make_table


def step(name: str, version: str = "1", params: str = "h") -> dict:
    return {"name": name, "version": version, "params_hash": params}


LINEAGES = [
    {"parents": ["p/1"], "steps": []},
    {"parents": [], "steps": [step("ingest")]},
    {"parents": None, "steps": [step("ingest"), step("normalize")]},
]


def test_append_step_adds_one_step_after_zero_one_and_two_existing():
    lineage = pa.array(LINEAGES, LINEAGE_TYPE)

    out = append_step(lineage, "dedup", "0.1", "abc")

    new = step("dedup", "0.1", "abc")
    assert out.to_pylist() == [
        {"parents": ["p/1"], "steps": [new]},
        {"parents": [], "steps": [step("ingest"), new]},
        {"parents": None, "steps": [step("ingest"), step("normalize"), new]},
    ]
    assert out.type == LINEAGE_TYPE


@pytest.mark.parametrize(("offset", "length"), [(1, 2), (2, 1), (0, 1), (1, 0)])
def test_append_step_on_a_sliced_array_sees_only_the_slice(offset, length):
    lineage = pa.array(LINEAGES, LINEAGE_TYPE)

    out = append_step(lineage.slice(offset, length), "x", "v", "p")

    expected = [{"parents": row["parents"], "steps": row["steps"] + [step("x", "v", "p")]}
                for row in LINEAGES[offset:offset + length]]
    assert out.to_pylist() == expected


def test_append_step_on_a_chunked_array_and_twice_in_a_row():
    lineage = pa.chunked_array([pa.array(LINEAGES[:1], LINEAGE_TYPE), pa.array(LINEAGES[1:], LINEAGE_TYPE)])

    out = append_step(append_step(lineage, "a", "1", "x"), "b", "1", "y")

    assert [[s["name"] for s in row["steps"]] for row in out.to_pylist()] == [
        ["a", "b"], ["ingest", "a", "b"], ["ingest", "normalize", "a", "b"]]


def test_append_step_on_empty_lineage_of_a_filtered_table():
    table = make_table(["a", "b", "c", "d"])
    filtered = table.filter(pa.array([False, True, False, True]))

    out = append_step(filtered.column("lineage"), "ingest", "0.1", "h")

    assert out.to_pylist() == [{"parents": [], "steps": [step("ingest", "0.1")]}] * 2
    assert append_step(empty_lineage(0), "ingest", "0.1", "h").to_pylist() == []


def test_split_for_is_deterministic_and_stable_per_id():
    ids = pa.array([f"web/{i}" for i in range(20_000)])

    first = split_for(ids, 0.05, 0.05).to_pylist()
    again = split_for(ids, 0.05, 0.05).to_pylist()
    # The same id gets the same split whatever else is in the batch (stable across versions).
    alone = split_for(ids.slice(12_345, 10), 0.05, 0.05).to_pylist()

    assert first == again
    assert alone == first[12_345:12_355]


@pytest.mark.parametrize(("validation", "test"), [(0.05, 0.05), (0.1, 0.2), (0.0, 0.0)])
def test_split_for_fractions_are_approximately_right(validation, test):
    n = 20_000
    labels = split_for(pa.array([f"src/{i}" for i in range(n)]), validation, test).to_pylist()

    counts = {name: labels.count(name) for name in ("train", "validation", "test")}
    assert sum(counts.values()) == n
    # Binomial standard deviation at n=20k is < 0.4 %; allow 1 % absolute.
    assert counts["validation"] / n == pytest.approx(validation, abs=0.01)
    assert counts["test"] / n == pytest.approx(test, abs=0.01)


def test_derive_doc_id_uses_the_source_id_when_present():
    assert derive_doc_id("forum", "c-17", "some text") == "forum/c-17"


@pytest.mark.parametrize("source_id", [None, ""])
def test_derive_doc_id_hashes_the_raw_text_without_an_id(source_id):
    expected = hashlib.sha1(b"some text").hexdigest()

    assert derive_doc_id("web", source_id, "some text") == f"web/sha1:{expected}"
    assert derive_doc_id("web", source_id, "other text") != f"web/sha1:{expected}"


def test_content_hashes_equal_for_equal_texts_only():
    hashes = content_hashes(pa.chunked_array([["same", "other"], ["same", "Same"]])).to_pylist()

    assert hashes[0] == hashes[2] == hashlib.blake2b(b"same", digest_size=16).hexdigest()
    assert len({hashes[0], hashes[1], hashes[3]}) == 3
    assert all(len(h) == 32 for h in hashes)


def test_conform_adds_missing_columns_as_nulls_and_keeps_extras():
    table = make_table(["a"]).append_column("extra", pa.array([7]))

    out = conform(table, NORMALIZED_SCHEMA)

    assert out.column_names == NORMALIZED_SCHEMA.names + ["extra"]
    assert out.column("lang").to_pylist() == [None]
    assert out.column("extra").to_pylist() == [7]
    assert out.schema.field("created_at").type == CORE_SCHEMA.field("created_at").type
