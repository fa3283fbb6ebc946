from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pyarrow as pa
import pytest

from dctp_tasks.ledger import REJECT_SCHEMA, LedgerImbalance, RejectWriter, check_ledger, ledger_report
from dctp_tasks.staging import REJECTS, stage_output, staged_rejects
from dctp_tasks.storage import Storage

DT = "2026-03-01"
DAG = "dag"


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


@contextmanager
def writer(storage: Storage, stage: str, dt: str = DT, **kwargs) -> Iterator[RejectWriter]:
    """Publish a new version of ``stage``'s output for ``dt`` whose dropped rows the yielded writer takes."""
    with stage_output(storage, DAG, dt, stage) as out, \
            RejectWriter(storage, out.sub(REJECTS), dt, stage, **kwargs) as rejects:
        yield rejects


def write(storage: Storage, stage: str, rows: list[tuple[str, str, str]], dt: str = DT) -> RejectWriter:
    """Publish ``(doc_id, outcome, reason)`` rejects as ``stage``'s drops."""
    with writer(storage, stage, dt) as rejects:
        for doc_id, outcome, reason in rows:
            rejects.add(doc_id, outcome, reason, f"detail of {doc_id}")
    return rejects


def read_rejects(storage: Storage, dt: str) -> pa.Table:
    return staged_rejects(storage, DAG, dt)


def by_stage(storage: Storage, dt: str = DT) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for row in read_rejects(storage, dt).to_pylist():
        out.setdefault(row["stage"], []).append(row["doc_id"])
    return {stage: sorted(ids) for stage, ids in out.items()}


def test_reject_rows_carry_every_field(storage):
    with writer(storage, "dedup_exact") as rejects:
        rejects.add("w/2", "duplicate", "exact_duplicate", "same text", duplicate_of="w/1", source="w")
        rejects.add("w/q", "quarantined", "malformed_json", "bad", source="w", file="landing/w/a.jsonl", line=3)

    rows = read_rejects(storage, DT)

    assert rows.schema == REJECT_SCHEMA
    assert rows.to_pylist() == [
        {"doc_id": "w/2", "stage": "dedup_exact", "outcome": "duplicate", "reason": "exact_duplicate",
         "detail": "same text", "duplicate_of": "w/1", "source": "w", "file": None, "line": None, "dt": DT},
        {"doc_id": "w/q", "stage": "dedup_exact", "outcome": "quarantined", "reason": "malformed_json",
         "detail": "bad", "duplicate_of": None, "source": "w", "file": "landing/w/a.jsonl", "line": 3, "dt": DT},
    ]
    assert rejects.counts == {"exact_duplicate": 1, "malformed_json": 1}
    assert rejects.total == 2


def test_unknown_outcome_is_refused(storage):
    with writer(storage, "normalize") as rejects, pytest.raises(ValueError, match="'lost'"):
        rejects.add("w/1", "lost", "whatever")


def test_a_rerun_replaces_only_its_own_stages_drops(storage):
    write(storage, "ingest", [("w/q1", "quarantined", "malformed_json")])
    write(storage, "normalize", [("w/s1", "filtered", "too_short"), ("w/s2", "filtered", "too_short")])
    write(storage, "dedup_exact", [("w/d1", "duplicate", "exact_duplicate")])
    write(storage, "normalize", [("w/s3", "filtered", "too_long")], dt="2026-03-02")

    write(storage, "normalize", [("w/s9", "filtered", "too_long")])

    assert by_stage(storage) == {"ingest": ["w/q1"], "normalize": ["w/s9"], "dedup_exact": ["w/d1"]}
    assert by_stage(storage, "2026-03-02") == {"normalize": ["w/s3"]}


def test_rerun_with_nothing_to_reject_clears_the_stage(storage):
    write(storage, "ingest", [("w/q1", "quarantined", "malformed_json")])
    write(storage, "normalize", [("w/s1", "filtered", "too_short")])

    write(storage, "normalize", [])

    assert by_stage(storage) == {"ingest": ["w/q1"]}


def test_stage_whose_name_prefixes_another_keeps_the_others_files(storage):
    write(storage, "dedup_exact", [("w/d1", "duplicate", "exact_duplicate")])

    write(storage, "dedup", [("w/n1", "duplicate", "near_duplicate")])

    assert by_stage(storage) == {"dedup": ["w/n1"], "dedup_exact": ["w/d1"]}


def test_rows_flushed_in_several_writes_are_all_kept(storage):
    with writer(storage, "ingest", flush_rows=3) as rejects:
        for i in range(10):
            rejects.add(f"w/{i}", "quarantined", "malformed_json")

    assert sorted(read_rejects(storage, DT).column("doc_id").to_pylist()) == sorted(f"w/{i}" for i in range(10))


def test_add_table_fills_stage_dt_and_missing_columns(storage):
    with writer(storage, "normalize") as rejects:
        rejects.add_table(pa.table({"doc_id": ["w/1", "w/2"], "outcome": ["filtered", "filtered"],
                                    "reason": ["too_short", "too_long"], "detail": ["chars=3<50", "chars=9>5"]}))

    rows = read_rejects(storage, DT).to_pylist()
    assert [(r["doc_id"], r["stage"], r["dt"], r["reason"], r["source"]) for r in rows] == [
        ("w/1", "normalize", DT, "too_short", None), ("w/2", "normalize", DT, "too_long", None)]
    assert rejects.counts == {"too_short": 1, "too_long": 1}


def test_read_rejects_of_a_date_without_any_is_empty(storage):
    assert read_rejects(storage, DT).num_rows == 0
    assert read_rejects(storage, DT).schema == REJECT_SCHEMA


def _three_outcomes(storage: Storage) -> None:
    write(storage, "ingest", [("w/q1", "quarantined", "malformed_json"), ("w/q2", "quarantined", "empty_file")])
    write(storage, "normalize", [("w/s1", "filtered", "too_short"), ("w/s2", "filtered", "too_short"),
                                 ("w/l1", "filtered", "too_long")])
    write(storage, "dedup_exact", [("w/d1", "duplicate", "exact_duplicate")])


def test_ledger_report_balances(storage):
    _three_outcomes(storage)

    report = check_ledger(ledger_report(read_rejects(storage, DT), DT, ingested=16, exported=10))

    assert report.balanced
    assert report.by_outcome == {"duplicate": 1, "filtered": 3, "quarantined": 2, "retracted": 0}
    assert report.by_reason == {"quarantined.malformed_json": 1, "quarantined.empty_file": 1,
                                "filtered.too_short": 2, "filtered.too_long": 1, "duplicate.exact_duplicate": 1}
    assert report.as_dict() == {
        "dt": DT, "ingested": 16, "synthesized": 0, "exported": 10, "duplicate": 1, "filtered": 3, "quarantined": 2,
        "retracted": 0, "balanced": True,
        "by_reason": {"duplicate.exact_duplicate": 1, "filtered.too_long": 1, "filtered.too_short": 2,
                      "quarantined.empty_file": 1, "quarantined.malformed_json": 1},
    }
    assert ("ingested 16 = exported 10 + duplicate 1 + filtered 3 + quarantined 2 + retracted 0  [balanced]"
            in report.render())


def test_generated_rows_are_accounted_beside_the_ingested_ones(storage):
    _three_outcomes(storage)
    write(storage, "generate_synthetic", [("synthetic/a", "filtered", "synthetic_copies_seed"),
                                          ("synthetic/b", "filtered", "synthetic_malformed")])
    # 16 ingested + 5 generated = 13 exported (10 real + 3 synthetic) + 8 dropped
    report = check_ledger(ledger_report(read_rejects(storage, DT), DT, ingested=16, exported=13, synthesized=5))
    assert report.as_dict()["synthesized"] == 5 and report.by_outcome["filtered"] == 5
    assert report.render().startswith(f"ledger dt={DT}: ingested 16 + synthesized 5 = exported 13")
    with pytest.raises(LedgerImbalance, match="synthesized 5"):
        check_ledger(ledger_report(read_rejects(storage, DT), DT, ingested=16, exported=12, synthesized=5))


@pytest.mark.parametrize(("ingested", "exported", "accounted"), [(17, 10, 16), (15, 10, 16), (16, 11, 17)])
def test_unbalanced_ledger_raises_with_the_numbers(storage, ingested, exported, accounted):
    _three_outcomes(storage)
    report = ledger_report(read_rejects(storage, DT), DT, ingested=ingested, exported=exported)

    assert not report.balanced
    assert f"UNBALANCED: accounted {accounted}" in report.render()
    with pytest.raises(LedgerImbalance) as err:
        check_ledger(report)
    message = str(err.value)
    assert f"dt={DT}" in message
    assert f"ingested {ingested}" in message
    assert f"exported {exported}" in message
    assert f"= {accounted}" in message
    assert "'filtered': 3" in message


def test_empty_day_balances_at_zero(storage):
    report = check_ledger(ledger_report(read_rejects(storage, DT), DT, ingested=0, exported=0))

    assert report.balanced and report.by_outcome == {"duplicate": 0, "filtered": 0, "quarantined": 0, "retracted": 0}
