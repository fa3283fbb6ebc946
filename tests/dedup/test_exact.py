from __future__ import annotations

from datetime import UTC, datetime

import pyarrow as pa
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.dedup.exact import STATE, STATE_SCHEMA, dedup_exact_day
from dctp_tasks.records import DEDUPED_SCHEMA, NORMALIZED_SCHEMA, content_hashes
from dctp_tasks.storage import Storage, state_dir
from tests.conftest import make_table, publish_stage, staged
from tests.conftest import rejects as staged_drops

DAG = "dag"
D1, D2, D3 = "2026-03-01", "2026-03-02", "2026-03-03"


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def ts(hour: int) -> datetime:
    return datetime(2026, 3, 1, hour, tzinfo=UTC)


def stage(storage: Storage, dt: str, rows: list[tuple[str, str] | tuple[str, str, datetime | None]]) -> None:
    """Write the date's ``normalize`` output: rows of ``(doc_id, text[, created_at])``."""
    n = len(rows)
    table = make_table([r[1] for r in rows], doc_id=[r[0] for r in rows],
                       created_at=[r[2] if len(r) > 2 else None for r in rows], dt=[dt] * n,
                       source=[r[0].split("/")[0] for r in rows])
    table = table.append_column("lang", pa.array(["en"] * n, pa.string()))
    table = table.append_column("lang_score", pa.array([0.9] * n, pa.float32()))
    publish_stage(storage, DAG, dt, "normalize", table.cast(NORMALIZED_SCHEMA))


def run(storage: Storage, dt: str, **overrides):
    return dedup_exact_day(storage, load_config(overrides=overrides or None), DAG, dt)


def kept_ids(storage: Storage, dt: str) -> list[str]:
    return sorted(staged(storage, DAG, dt, "dedup_exact").column("doc_id").to_pylist())


def dup_rows(storage: Storage, dt: str) -> list[tuple[str, str, str]]:
    rows = staged_drops(storage, DAG, dt).to_pylist()
    return sorted((r["doc_id"], r["duplicate_of"], r["detail"]) for r in rows)


def dup_pairs(storage: Storage, dt: str) -> dict[str, str]:
    return {doc_id: of for doc_id, of, _ in dup_rows(storage, dt)}


def hash_of(text: str) -> str:
    return content_hashes(pa.array([text]))[0].as_py()


# -- within a day -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("rows", "survivor"), [
    pytest.param([("w/a", "same", ts(10)), ("w/b", "same", ts(9)), ("w/c", "same", ts(11))], "w/b",
                 id="earliest_created_at"),
    pytest.param([("w/z", "same", ts(9)), ("w/m", "same", ts(9)), ("w/q", "same", ts(9))], "w/m",
                 id="tie_then_smallest_doc_id"),
    pytest.param([("w/a", "same", None), ("w/b", "same", ts(23)), ("w/0", "same", None)], "w/b",
                 id="undated_loses_to_dated"),
    pytest.param([("w/b", "same", None), ("w/a", "same", None)], "w/a", id="all_undated_smallest_doc_id"),
])
def test_within_a_day_the_earliest_row_survives(storage, rows, survivor):
    stage(storage, D1, rows + [("w/other", "a different text", ts(1))])

    result = run(storage, D1)

    assert kept_ids(storage, D1) == sorted([survivor, "w/other"])
    assert dup_pairs(storage, D1) == {r[0]: survivor for r in rows if r[0] != survivor}
    assert (result.total, result.kept, result.dropped) == (len(rows) + 1, 2, len(rows) - 1)
    assert result.dropped_by_reason == {"exact_duplicate": len(rows) - 1}


def test_duplicates_go_to_rejects_with_duplicate_of_and_detail(storage):
    stage(storage, D1, [("w/1", "hello world", ts(1)), ("w/2", "hello world", ts(2)), ("f/3", "hello world", ts(3))])

    run(storage, D1)

    rejects = staged_drops(storage, DAG, D1).to_pylist()
    detail = f"exact content_hash={hash_of('hello world')} (same day)"
    assert sorted((r["doc_id"], r["duplicate_of"], r["detail"], r["source"]) for r in rejects) == [
        ("f/3", "w/1", detail, "f"), ("w/2", "w/1", detail, "w")]
    assert {(r["stage"], r["outcome"], r["reason"], r["dt"]) for r in rejects} == {
        ("dedup_exact", "duplicate", "exact_duplicate", D1)}


def test_different_texts_are_all_kept_with_content_hash_and_lineage(storage):
    texts = ["one", "One", "one ", "two"]
    stage(storage, D1, [(f"w/{i}", t) for i, t in enumerate(texts)])

    result = run(storage, D1)

    table = staged(storage, DAG, D1, "dedup_exact")
    assert table.schema == DEDUPED_SCHEMA
    assert table.column("content_hash").to_pylist() == [hash_of(t) for t in texts]
    assert [[s["name"] for s in row["steps"]] for row in table.column("lineage").to_pylist()] == [["dedup_exact"]] * 4
    assert result.kept == 4 and result.dropped == 0


def test_small_batches_give_the_same_decision(storage, tmp_path):
    rows = [(f"w/{i:02d}", f"text {i % 7}", ts(i % 5) if i % 3 else None) for i in range(40)]
    other = Storage(f"file://{tmp_path / 'other'}")
    for target in (storage, other):
        stage(target, D1, rows)

    run(storage, D1)
    dedup_exact_day(other, load_config(overrides={"batch_size": 3}), DAG, D1)

    assert kept_ids(storage, D1) == kept_ids(other, D1)
    assert len(kept_ids(storage, D1)) == 7
    assert dup_rows(storage, D1) == dup_rows(other, D1)


def test_empty_day(storage):
    stage(storage, D1, [])

    result = run(storage, D1)

    assert (result.total, result.kept, result.dropped) == (0, 0, 0)
    assert storage.read_table(state_dir(STATE, D1)).num_rows == 0


# -- against history -------------------------------------------------------------------------------------------

THREE_DAYS = {
    D1: [("w/a1", "alpha", ts(1)), ("w/b1", "bravo", ts(2)), ("w/b1x", "bravo", ts(3))],
    D2: [("w/c2", "charlie", None), ("w/a2", "alpha", ts(0)), ("w/n2", "november", None)],
    D3: [("w/a3", "alpha", ts(0)), ("w/c3", "charlie", None), ("w/d3", "delta", None), ("w/d3x", "delta", None),
         ("w/b3", "bravo", None)],
}


def stage_three_days(storage: Storage) -> None:
    for dt, rows in THREE_DAYS.items():
        stage(storage, dt, rows)


def day_snapshot(storage: Storage, dt: str) -> tuple:
    state = sorted(storage.read_table(state_dir(STATE, dt)).to_pylist(), key=lambda r: r["doc_id"])
    return kept_ids(storage, dt), dup_rows(storage, dt), state


def snapshot(storage: Storage) -> dict[str, tuple]:
    return {dt: day_snapshot(storage, dt) for dt in THREE_DAYS}


def test_a_text_from_an_earlier_date_is_a_duplicate_of_the_first_doc(storage):
    stage_three_days(storage)

    results = [run(storage, dt) for dt in THREE_DAYS]

    assert dup_pairs(storage, D1) == {"w/b1x": "w/b1"}
    assert dup_pairs(storage, D2) == {"w/a2": "w/a1"}  # earlier created_at today does not beat history
    # Date 3 matches both earlier dates, and its own repeat of a new text.
    assert dup_pairs(storage, D3) == {"w/a3": "w/a1", "w/b3": "w/b1", "w/c3": "w/c2", "w/d3x": "w/d3"}
    assert kept_ids(storage, D3) == ["w/d3"]
    details = {doc_id: detail for doc_id, _, detail in dup_rows(storage, D3)}
    assert details["w/a3"] == f"exact content_hash={hash_of('alpha')} (history dt={D1})"
    assert details["w/c3"] == f"exact content_hash={hash_of('charlie')} (history dt={D2})"
    assert details["w/d3x"].endswith("(same day)")
    assert results[2].extra["duplicates_of_history"] == 3
    assert all(r.total == r.kept + r.dropped for r in results)


def test_rerunning_dates_in_reverse_order_changes_nothing(storage):
    stage_three_days(storage)
    for dt in (D1, D2, D3):
        run(storage, dt)
    forward = snapshot(storage)

    for dt in (D3, D2, D1):
        run(storage, dt)

    assert snapshot(storage) == forward


def test_a_date_never_reads_later_dates(storage):
    stage_three_days(storage)
    run(storage, D1)
    alone = day_snapshot(storage, D1)
    for dt in (D2, D3):
        run(storage, dt)

    run(storage, D1)

    assert day_snapshot(storage, D1) == alone


def test_a_redelivered_doc_is_a_duplicate_of_its_history_twin(storage):
    stage(storage, D1, [("w/a", "alpha"), ("w/b", "bravo")])
    # The same doc (same id, same text) arrives again the next day, next to a new one.
    stage(storage, D2, [("w/a", "alpha"), ("w/c", "charlie")])
    run(storage, D1)

    result = run(storage, D2)

    assert kept_ids(storage, D2) == ["w/c"]
    assert dup_rows(storage, D2) == [("w/a", "w/a", f"exact content_hash={hash_of('alpha')} (history dt={D1})")]
    assert result.dropped_by_reason == {"exact_duplicate": 1}


def test_state_partition_holds_only_that_days_survivors(storage):
    stage_three_days(storage)
    for dt in THREE_DAYS:
        run(storage, dt)

    states = {dt: storage.read_table(state_dir(STATE, dt)) for dt in THREE_DAYS}

    assert states[D3].schema == STATE_SCHEMA
    assert sorted((r["doc_id"], r["content_hash"], r["dt"]) for r in states[D3].to_pylist()) == [
        ("w/d3", hash_of("delta"), D3)]
    assert sorted(states[D2].column("doc_id").to_pylist()) == ["w/c2", "w/n2"]
    assert sorted(states[D1].column("doc_id").to_pylist()) == ["w/a1", "w/b1"]
    assert storage.list_dirs(state_dir(STATE)) == [f"dt={dt}" for dt in THREE_DAYS]
