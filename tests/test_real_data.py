"""Real data: BoolQ validation passages as a landing source; its repeated passages are exact duplicates."""

from __future__ import annotations

import csv
import shutil
from collections import Counter

import pyarrow.compute as pc

from dctp_tasks.config import load_config
from dctp_tasks.dedup.exact import dedup_exact_day
from dctp_tasks.export import Staged, committed_ledger, export_day, open_table, rows_for_dt
from dctp_tasks.ingest import ingest_day
from dctp_tasks.ledger import check_ledger, ledger_report
from dctp_tasks.normalize import normalize_day
from dctp_tasks.storage import Storage

DT = "2026-02-01"


def test_boolq_repeated_passages_are_exact_duplicates(shared_data, tmp_path):
    source_csv = shared_data / "boolq_wikipedia" / "boolq_validation.csv"
    landing = tmp_path / "landing" / "boolq" / f"dt={DT}"
    landing.mkdir(parents=True)
    shutil.copy(source_csv, landing / "boolq_validation.csv")  # a tmp copy, never into the repository

    # Independent count, straight from the CSV: every repeat of a passage beyond its first is a duplicate.
    with source_csv.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    repeats = Counter(row["passage"].strip() for row in rows)
    expected_duplicates = sum(count - 1 for count in repeats.values())
    assert expected_duplicates == len(rows) - len(repeats) > 300

    config = load_config(overrides={
        "ingest.sources": {"boolq": {"fields": {"doc_id": "idx", "text": "passage"}, "defaults": {"domain": "wiki"}}},
    })
    storage = Storage(tmp_path.as_uri())
    ingested = ingest_day(storage, config, "real", DT)
    normalize_day(storage, config, "real", DT)
    deduped = dedup_exact_day(storage, config, "real", DT)
    stages = [Staged("real", stage) for stage in ("ingest", "normalize", "dedup_exact")]
    export_day(storage, config, "real", DT, run_id="real-data", rows=stages[-1], ledger=stages,
               ingested=ingested.total)

    assert ingested.total == len(rows) and ingested.kept == len(rows)
    assert deduped.dropped_by_reason == {"exact_duplicate": expected_duplicates}
    _, rejects = committed_ledger(storage, "curated", DT)
    dups = rejects.filter(pc.equal(rejects.column("reason"), "exact_duplicate"))
    # each duplicate points at the surviving copy: the smallest doc_id among identical passages (no timestamps)
    by_passage: dict[str, list[str]] = {}
    for row in rows:
        by_passage.setdefault(row["passage"].strip(), []).append(f"boolq/{row['idx']}")
    survivor_of = {doc: min(docs) for docs in by_passage.values() for doc in docs}
    for doc_id, duplicate_of in zip(dups.column("doc_id").to_pylist(), dups.column("duplicate_of").to_pylist()):
        assert duplicate_of == survivor_of[doc_id] != doc_id

    exported = rows_for_dt(open_table(storage, "curated"), DT)
    assert exported == len(repeats)
    check_ledger(ledger_report(rejects, DT, ingested.total, exported))
