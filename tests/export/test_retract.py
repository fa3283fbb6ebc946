"""Retraction: documents the experts rejected leave the partitions they were exported to, in one Delta commit that
rewrites only the files holding them, and every touched date's ledger accounts for them as ``retracted``."""

from __future__ import annotations

import json
import threading

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from dctp_tasks.cli import main
from dctp_tasks.config import load_config
from dctp_tasks.export import (
    METADATA_PREFIX,
    Staged,
    committed_ledger,
    export_day,
    ingested_count,
    latest_commit,
    open_table,
    rejects_dir,
    rescore_basis,
    rows_for_dt,
)
from dctp_tasks.export import delta as delta_module
from dctp_tasks.export import retract as retract_module
from dctp_tasks.export.delta import commit_info
from dctp_tasks.export.retract import retract_documents
from dctp_tasks.ledger import REJECT_SCHEMA, RejectWriter, ledger_report
from dctp_tasks.publish import VERSION_PREFIX
from dctp_tasks.records import CORE_SCHEMA, DEDUPED_SCHEMA, content_hashes
from dctp_tasks.staging import REJECTS, ROWS, stage_output
from dctp_tasks.storage import S3Options, Storage
from tests.conftest import make_table

CONFIG = load_config(overrides={"batch_size": 4})
NAME = "curated"
TABLE_DIR = f"datasets/{NAME}"
DAG = "dag"
D1, D2, D3 = "2026-01-01", "2026-01-02", "2026-01-03"
SCORES = {"scores_dag_id": DAG, "scores_stage": "quality", "scores_version": "scores-v1", "mlflow_run_id": "m1"}
REJECTED = {"web/3": (D1, [11, 12]), "web/15": (D2, [21])}
IDS = {D1: [f"web/{i}" for i in range(10)], D2: [f"web/{i}" for i in range(10, 20)],
       D3: [f"web/{i}" for i in range(20, 25)]}
# What each date's stages dropped: a duplicate of a document the experts will reject, a filtered one, malformed lines
DROPS = {
    D1: {"ingest": [("web/quarantine:f.jsonl:1", "quarantined", "malformed_json", None),
                    ("web/quarantine:f.jsonl:2", "quarantined", "malformed_json", None)],
         "dedup_exact": [("web/d1", "duplicate", "exact_duplicate", "web/3"),
                         ("web/f1", "filtered", "too_short", None)]},
    D2: {"ingest": [], "dedup_exact": [("web/d2", "duplicate", "exact_duplicate", "web/11")]},
    D3: {"ingest": [], "dedup_exact": []},
}
LEDGER = [Staged(DAG, "ingest"), Staged(DAG, "dedup_exact")]


def docs(dt: str, ids: list[str], extra_column: bool = False) -> pa.Table:
    texts = [f"document {i} with enough words to be a document" for i in ids]
    table = make_table(texts, doc_id=ids, dt=[dt] * len(ids), source=["web"] * len(ids),
                       domain=["science" if int(i.split("/")[1]) % 2 else "health" for i in ids],
                       meta=[json.dumps({"url": f"https://example.org/{i}"}) for i in ids])
    table = table.append_column("lang", pa.array(["en"] * len(ids))).append_column(
        "lang_score", pa.array([0.9] * len(ids), pa.float32()))
    table = table.append_column("content_hash", content_hashes(table.column("text"))).cast(DEDUPED_SCHEMA)
    if extra_column:  # a later stage added a column: the table's schema merges it
        table = table.append_column("quality", pa.array([0.5] * len(ids)))
    return table


def publish(storage: Storage, dt: str, stage: str, table: pa.Table, drops: list[tuple]) -> None:
    """Publish ``table`` as ``stage``'s rows of ``dt`` and ``drops`` (doc_id, outcome, reason, duplicate_of)."""
    with stage_output(storage, DAG, dt, stage) as out, out.writer(ROWS, schema=table.schema) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, stage) as dropped:
        writer.write(table)
        for doc_id, outcome, reason, duplicate_of in drops:
            dropped.add(doc_id, outcome, reason, duplicate_of=duplicate_of, source="web")


def ingested(dt: str) -> int:
    return len(IDS[dt]) + sum(len(d) for d in DROPS[dt].values())


def export(storage: Storage, dt: str, run_id: str, extra_column: bool = False) -> int:
    """Stage ``dt``'s rows and drops as its ingest and dedup stages would, export them; return the version."""
    publish(storage, dt, "ingest", CORE_SCHEMA.empty_table(), DROPS[dt]["ingest"])
    publish(storage, dt, "dedup_exact", docs(dt, IDS[dt], extra_column), DROPS[dt]["dedup_exact"])
    result = export_day(storage, CONFIG, DAG, dt, run_id=run_id, rows=Staged(DAG, "dedup_exact"), ledger=LEDGER,
                        ingested=ingested(dt), metadata=SCORES)
    return result.extra["table_version"]


def retract(storage: Storage, rejected: dict = REJECTED, run_id: str = "retract-1", **kwargs) -> dict:
    return retract_documents(storage, CONFIG, rejected, dag_id="dctp_daily", run_id=run_id,
                             reason="expert_rejected", **kwargs)


def rows(storage: Storage, version: int | None = None) -> pa.Table:
    return open_table(storage, NAME, version).to_pyarrow_dataset().to_table().sort_by("doc_id")


def doc_ids(storage: Storage, dt: str | None = None, version: int | None = None) -> list[str]:
    table = rows(storage, version)
    if dt is not None:
        table = table.filter(pc.equal(table.column("dt"), dt))
    return table.column("doc_id").to_pylist()


def add_actions(storage: Storage, version: int | None = None) -> dict[str, dict]:
    """``path -> add action`` of a version."""
    actions = pa.table(open_table(storage, NAME, version).get_add_actions(flatten=True)).to_pylist()
    return {a["path"]: a for a in actions}


def file_ids(storage: Storage, path: str) -> list[str]:
    with storage.fs.open_input_file(storage.path(TABLE_DIR, path)) as handle:
        return pq.read_table(handle, columns=["doc_id"]).column("doc_id").to_pylist()


def balanced(storage: Storage, dt: str, version: int | None = None):
    """The ledger report of ``dt``'s latest commit (up to ``version``) against the rows that version holds."""
    _, ledger = committed_ledger(storage, NAME, dt, version)
    table = open_table(storage, NAME, version)
    commit = latest_commit(storage, NAME, dt, version)
    report = ledger_report(ledger, dt, int(commit[f"{METADATA_PREFIX}ingested"]), rows_for_dt(table, dt))
    assert report.balanced, report.render()
    return report


def ledger_versions(storage: Storage, dt: str) -> list[str]:
    return storage.list_dirs(rejects_dir(dt))


@pytest.fixture
def storage(tmp_path, monkeypatch):
    """D1 and D2 exported, each in several files (4 rows a file)."""
    monkeypatch.setattr(delta_module, "ROWS_PER_FILE", 4)
    storage = Storage(tmp_path.as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    assert export(storage, D1, "run-1") == 1
    assert export(storage, D2, "run-2") == 2
    return storage


def test_one_commit_removes_the_rejected_documents_of_both_dates(storage):
    before_rows, before_files = rows(storage), add_actions(storage)
    assert len(before_files) == 6  # 3 files a date
    holders = {p for p, a in before_files.items() if {"web/3", "web/15"} & set(file_ids(storage, p))}

    done = retract(storage)

    assert done == {"table_version": 3, "retracted": {D1: 1, D2: 1}, "files_rewritten": 2}
    assert open_table(storage, NAME).version() == 3
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3"})
    assert doc_ids(storage, D2) == sorted(set(IDS[D2]) - {"web/15"})
    # time travel: the previous version still has them
    assert doc_ids(storage, version=2) == sorted(IDS[D1] + IDS[D2])
    # every other row is unchanged, every column of it
    kept = before_rows.filter(pc.invert(pc.is_in(before_rows.column("doc_id"), value_set=pa.array(list(REJECTED)))))
    after = rows(storage)
    assert after.schema == before_rows.schema
    assert after.to_pylist() == kept.to_pylist()
    # only the two files holding them were rewritten; the others keep their paths
    after_files = add_actions(storage)
    assert len(holders) == 2
    assert set(before_files) - set(after_files) == holders
    new = set(after_files) - set(before_files)
    assert len(new) == 2 and all("-retract-" in p for p in new)
    assert sorted(after_files[p]["num_records"] for p in new) == [3, 3]
    assert sorted(after_files[p]["partition.dt"] for p in new) == [D1, D2]
    for path in set(before_files) - holders:
        assert after_files[path]["size_bytes"] == before_files[path]["size_bytes"]


def test_the_commit_names_reason_run_judgements_and_each_dates_ledger(storage):
    version = retract(storage)["table_version"]
    info = commit_info(storage, TABLE_DIR, version)
    meta = {k.removeprefix(METADATA_PREFIX): v for k, v in info.items() if k.startswith(METADATA_PREFIX)}
    assert (meta["operation"], meta["reason"], meta["run_id"], meta["dag_id"]) == (
        "retract", "expert_rejected", "retract-1", "dctp_daily")
    assert json.loads(meta["judgements"]) == {"web/3": [11, 12], "web/15": [21]}
    dates = json.loads(meta["dates"])
    assert set(dates) == {D1, D2}
    for dt, base in ((D1, 1), (D2, 2)):
        assert {k: v for k, v in dates[dt].items() if k != "ledger_version"} == {
            "ingested": ingested(dt), "synthesized": 0, "exported": len(IDS[dt]) - 1, "retracted": 1,
            "base_version": base,
            "scores_dag_id": DAG, "scores_stage": "quality", "scores_version": "scores-v1", "mlflow_run_id": "m1"}
        assert VERSION_PREFIX + dates[dt]["ledger_version"] in ledger_versions(storage, dt)


def test_each_dates_new_ledger_has_the_retracted_row_and_balances(storage):
    version = retract(storage)["table_version"]
    for dt, doc, judgements in ((D1, "web/3", "#11,#12"), (D2, "web/15", "#21")):
        commit, ledger = committed_ledger(storage, NAME, dt)
        assert commit["version"] == version
        assert commit[f"{METADATA_PREFIX}ledger_version"] == json.loads(
            commit[f"{METADATA_PREFIX}dates"])[dt]["ledger_version"]
        assert ingested_count(storage, NAME, dt) == ingested(dt)
        retracted = ledger.filter(pc.equal(ledger.column("outcome"), "retracted")).to_pylist()
        assert len(retracted) == 1
        row = retracted[0]
        assert (row["doc_id"], row["stage"], row["reason"], row["source"], row["dt"]) == (
            doc, "retract", "expert_rejected", "web", dt)
        assert f"judgements {judgements}" in row["detail"] and "by run retract-1" in row["detail"]
        report = balanced(storage, dt)
        assert report.ingested == report.exported + sum(report.by_outcome.values())
        assert report.by_outcome["retracted"] == 1 and report.exported == len(IDS[dt]) - 1
        # the rows of the other outcomes are all still there
        assert ledger.num_rows == 1 + sum(len(d) for d in DROPS[dt].values()) and ledger.schema == REJECT_SCHEMA
        # and the previous version still balances against its own ledger, without the retraction
        previous = balanced(storage, dt, version - 1)
        assert previous.by_outcome["retracted"] == 0 and previous.exported == len(IDS[dt])
    report = balanced(storage, D1)
    assert (report.by_outcome["duplicate"], report.by_outcome["filtered"], report.by_outcome["quarantined"]) == (
        1, 1, 2)


def test_a_duplicate_of_a_rejected_document_stays_a_duplicate(storage):
    retract(storage)
    _, ledger = committed_ledger(storage, NAME, D1)
    duplicate = ledger.filter(pc.equal(ledger.column("doc_id"), "web/d1")).to_pylist()
    assert [(r["outcome"], r["duplicate_of"]) for r in duplicate] == [("duplicate", "web/3")]
    assert "web/d1" not in doc_ids(storage) and "web/3" not in doc_ids(storage)


@pytest.mark.parametrize("rejected, skip_dt", [
    ({"web/999": (D1, [1]), "web/998": (D2, [2])}, None),  # judged, but not in the table
    ({"web/3": (D3, [1])}, None),  # a date never exported
    ({"web/3": (D1, [1])}, D1),  # only in the partition the caller rebuilt itself
    ({}, None),
])
def test_nothing_to_retract_commits_nothing(storage, rejected, skip_dt):
    ledgers = {dt: ledger_versions(storage, dt) for dt in (D1, D2)}
    assert retract(storage, rejected, skip_dt=skip_dt) == {"table_version": None, "retracted": {}}
    assert open_table(storage, NAME).version() == 2
    assert doc_ids(storage) == sorted(IDS[D1] + IDS[D2])
    assert {dt: ledger_versions(storage, dt) for dt in (D1, D2)} == ledgers  # no ledger written for nothing


def test_skip_dt_leaves_that_partition_alone_and_retracts_the_others(storage):
    done = retract(storage, skip_dt=D1)
    assert done["retracted"] == {D2: 1}
    assert "web/3" in doc_ids(storage, D1) and "web/15" not in doc_ids(storage, D2)
    assert latest_commit(storage, NAME, D1)["version"] == 1  # D1's latest commit is still its export
    assert json.loads(commit_info(storage, TABLE_DIR, done["table_version"])[f"{METADATA_PREFIX}judgements"]) == {
        "web/15": [21]}


def test_no_table_yet_commits_nothing(tmp_path):
    storage = Storage(tmp_path.as_uri())
    assert retract(storage) == {"table_version": None, "retracted": {}}
    assert not storage.exists(TABLE_DIR) and not storage.exists("rejects")


def test_retracting_again_is_a_no_op_and_a_new_rejection_adds_to_the_ledger(storage):
    first = retract(storage)["table_version"]
    commit = latest_commit(storage, NAME, D1)
    assert retract(storage, run_id="retract-2") == {"table_version": None, "retracted": {}}
    assert open_table(storage, NAME).version() == first
    assert latest_commit(storage, NAME, D1) == commit

    # the same rejections plus a new one of D1: only the new one is removed, the ledger keeps both
    done = retract(storage, {**REJECTED, "web/5": (D1, [31])}, run_id="retract-3")
    assert done == {"table_version": first + 1, "retracted": {D1: 1}, "files_rewritten": 1}
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3", "web/5"})
    _, ledger = committed_ledger(storage, NAME, D1)
    retracted = ledger.filter(pc.equal(ledger.column("outcome"), "retracted"))
    assert sorted(retracted.column("doc_id").to_pylist()) == ["web/3", "web/5"]
    assert balanced(storage, D1).by_outcome["retracted"] == 2
    assert latest_commit(storage, NAME, D2)["version"] == first  # D2 was not touched by the second one


def test_rescore_basis_after_a_retraction(storage):
    version = retract(storage)["table_version"]
    basis = rescore_basis(storage, NAME, D1)
    assert (basis["version"], basis["ingested"]) == (version, ingested(D1))
    assert basis["scores"] == {"dag_id": DAG, "stage": "quality", "version": "scores-v1"}
    assert basis["commit_token"] == commit_info(storage, TABLE_DIR, version)[f"{METADATA_PREFIX}commit_token"]


def test_a_daily_rerun_after_a_retraction_commits_and_balances(storage):
    retracted_at = retract(storage)["table_version"]
    # the re-run's merge_feedback drops the rejected document itself
    survivors = [i for i in IDS[D1] if i != "web/3"]
    publish(storage, D1, "merge_feedback", docs(D1, survivors), [("web/3", "filtered", "expert_rejected", None)])
    stages = [*LEDGER, Staged(DAG, "merge_feedback")]
    result = export_day(storage, CONFIG, DAG, D1, run_id="rerun", rows=Staged(DAG, "merge_feedback"),
                        ledger=stages, ingested=ingested(D1), metadata=SCORES)
    assert result.extra["table_version"] == retracted_at + 1
    commit = latest_commit(storage, NAME, D1)
    assert (commit["version"], commit[f"{METADATA_PREFIX}run_id"]) == (retracted_at + 1, "rerun")
    report = balanced(storage, D1)
    assert (report.exported, report.by_outcome["retracted"], report.by_reason["filtered.expert_rejected"]) == (
        9, 0, 1)
    assert doc_ids(storage, D1) == sorted(survivors)
    assert doc_ids(storage, D2) == sorted(set(IDS[D2]) - {"web/15"})  # the retraction of D2 stays
    assert latest_commit(storage, NAME, D2)["version"] == retracted_at


def test_a_rerun_with_the_original_rows_brings_the_document_back_and_balances(storage):
    retract(storage)
    version = export(storage, D1, "rerun")
    assert latest_commit(storage, NAME, D1)["version"] == version
    assert doc_ids(storage, D1) == sorted(IDS[D1])
    assert balanced(storage, D1).by_outcome["retracted"] == 0


def test_a_rescore_amending_the_retraction_commits_and_balances(storage):
    retract(storage)
    basis = rescore_basis(storage, NAME, D1)
    survivors = [i for i in IDS[D1] if i != "web/3"]
    publish(storage, D1, "merge_feedback", docs(D1, survivors), [("web/3", "filtered", "expert_rejected", None)])
    decided = Staged(DAG, "merge_feedback")
    result = export_day(storage, CONFIG, "dctp_rescore", D1, run_id="rescore", rows=decided, ledger=[decided],
                        ingested=basis["ingested"], amend=basis["commit_token"], metadata=SCORES)
    assert result.extra["table_version"] == basis["version"] + 1
    _, ledger = committed_ledger(storage, NAME, D1)
    # the retracted row made way for merge_feedback's own drop of the document; the other stages' rows stay
    assert ledger.filter(pc.equal(ledger.column("doc_id"), "web/3")).column("outcome").to_pylist() == ["filtered"]
    report = balanced(storage, D1)
    assert (report.by_outcome["quarantined"], report.by_outcome["duplicate"], report.by_outcome["filtered"]) == (
        2, 1, 2)


def _race(storage: Storage, monkeypatch, other) -> tuple[dict, list]:
    """Run a retraction and ``other`` together: the retraction reads the table, ``other`` commits, then the
    retraction commits from the state it read (and must retry or rebase)."""
    meet, committed = threading.Barrier(2, timeout=30), threading.Event()
    date_ledger, calls = retract_module._date_ledger, []

    def held(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 1:
            meet.wait()  # the retraction has read the table
            assert committed.wait(30)
        return date_ledger(*args, **kwargs)

    monkeypatch.setattr(retract_module, "_date_ledger", held)
    results: dict = {}
    errors: list = []

    def run(name, fn):
        try:
            results[name] = fn()
        except BaseException as exc:  # reported by the test
            errors.append(exc)
            meet.abort()
            committed.set()

    def writer():
        meet.wait()
        try:
            return other()
        finally:
            committed.set()

    threads = [threading.Thread(target=run, args=("retract", lambda: retract(storage, {"web/3": (D1, [11])}))),
               threading.Thread(target=run, args=("other", writer))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    return results, calls


def test_a_retraction_and_an_export_of_another_date_at_once_both_land(storage, monkeypatch):
    publish(storage, D3, "ingest", CORE_SCHEMA.empty_table(), [])
    publish(storage, D3, "dedup_exact", docs(D3, IDS[D3]), [])
    results, calls = _race(storage, monkeypatch, lambda: export_day(
        storage, CONFIG, DAG, D3, run_id="run-3", rows=Staged(DAG, "dedup_exact"), ledger=LEDGER,
        ingested=len(IDS[D3]), metadata=SCORES).extra["table_version"])
    assert (results["other"], results["retract"]["table_version"]) == (3, 4)  # in the order they committed
    assert set(calls) == {D1}  # Delta rebased it onto the export (no conflict) or it retried: either lands
    assert open_table(storage, NAME).version() == 4
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3"})
    assert doc_ids(storage, D2) == sorted(IDS[D2])
    assert doc_ids(storage, D3) == sorted(IDS[D3])
    assert latest_commit(storage, NAME, D1)["version"] == 4 and latest_commit(storage, NAME, D3)["version"] == 3
    for dt in (D1, D2, D3):
        balanced(storage, dt)
    assert balanced(storage, D1).by_outcome["retracted"] == 1


def test_a_retraction_racing_a_reexport_of_its_date_retries_on_the_new_rows(storage, monkeypatch):
    results, calls = _race(storage, monkeypatch, lambda: export(storage, D1, "rerun"))
    assert results["other"] == 3 and results["retract"]["table_version"] == 4
    assert calls == [D1, D1]  # lost the race once, decided again on the re-export's rows
    # never both the old and the new files of the date: each document once
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3"})
    report = balanced(storage, D1)
    assert report.by_outcome["retracted"] == 1
    assert json.loads(commit_info(storage, TABLE_DIR, 4)[f"{METADATA_PREFIX}dates"])[D1]["base_version"] == 3


def test_a_file_written_before_a_column_was_added_is_rewritten_with_it(tmp_path, monkeypatch):
    storage = Storage(tmp_path.as_uri())
    export(storage, D1, "run-1")
    export(storage, D2, "run-2", extra_column=True)  # the table gains ``quality`` after D1 was written
    assert retract(storage)["retracted"] == {D1: 1, D2: 1}
    table = rows(storage)
    quality = dict(zip(table.column("doc_id").to_pylist(), table.column("quality").to_pylist(), strict=True))
    assert {quality[i] for i in IDS[D1] if i != "web/3"} == {None}
    assert {quality[i] for i in IDS[D2] if i != "web/15"} == {0.5}
    assert len(quality) == 18


def test_a_document_is_retracted_only_from_the_date_it_was_judged_in(storage):
    # web/3 came again on D3 (changed); the experts rejected its D1 version
    publish(storage, D3, "ingest", CORE_SCHEMA.empty_table(), [])
    publish(storage, D3, "dedup_exact", docs(D3, ["web/3", "web/20"]), [])
    export_day(storage, CONFIG, DAG, D3, run_id="run-3", rows=Staged(DAG, "dedup_exact"), ledger=LEDGER,
               ingested=2, metadata=SCORES)
    done = retract(storage, {"web/3": (D1, [11]), "web/20": (D3, [41])})
    assert done["retracted"] == {D1: 1, D3: 1}
    assert "web/3" not in doc_ids(storage, D1)
    assert doc_ids(storage, D3) == ["web/3"]
    for dt in (D1, D3):
        assert balanced(storage, dt).by_outcome["retracted"] == 1


def test_cli_ledger_shows_the_retraction(storage, capsys):
    version = retract(storage)["table_version"]
    assert main(["--json", "ledger", D1]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["version"], out["ingested"], out["exported"], out["retracted"], out["balanced"]) == (
        version, ingested(D1), 9, 1, True)
    assert main(["ledger", D1]) == 0
    text = capsys.readouterr().out
    assert "retracted 1" in text and "[balanced]" in text and f"(export version {version})" in text
    assert "retracted.expert_rejected" in text
    example = next(line for line in text.splitlines() if "doc_id=web/3," in line)
    assert "judgements #11,#12" in example and "retracted by run retract-1 at 20" in example


def test_retraction_on_s3(moto_server, s3_bucket, monkeypatch):
    monkeypatch.setattr(delta_module, "ROWS_PER_FILE", 4)
    storage = Storage(f"s3://{s3_bucket}/root", S3Options(endpoint_url=moto_server, access_key="testing",
                                                         secret_key="testing"))
    export(storage, D1, "run-1")
    before = add_actions(storage)
    done = retract(storage, {"web/3": (D1, [11])})
    assert done == {"table_version": 2, "retracted": {D1: 1}, "files_rewritten": 1}
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3"})
    assert "web/3" in doc_ids(storage, D1, version=1)
    assert len(set(before) & set(add_actions(storage))) == 2
    assert balanced(storage, D1).by_outcome["retracted"] == 1



@pytest.fixture(params=["sqlite", "postgresql"])
def lock_engine(request, tmp_path):
    """The feedback store's engine the table's writer lock lives in, on both engines."""
    from dctp_tasks.feedback import db

    if request.param == "sqlite":
        engine = db.create_feedback_engine(f"sqlite:///{tmp_path}/feedback.db")
    else:
        engine = db.create_feedback_engine(db.connection_url(request.getfixturevalue("pg_database")))
    yield engine
    engine.dispose()


def test_the_writer_lock_serialises_an_apply_and_a_daily_export(storage, lock_engine):
    """dctp_feedback_apply's retraction and a daily export of another date start together, each under the table's
    writer lock (from separate engines, as two workers would): one commits entirely before the other begins, both
    land in order, nothing is lost or doubled."""
    from dctp_tasks.feedback import db

    second = db.create_feedback_engine(lock_engine.url)
    start = threading.Barrier(2)
    spans: dict[str, tuple[float, float]] = {}
    results: dict[str, object] = {}

    def run(name: str, engine, work) -> None:
        import time

        start.wait(timeout=30)
        try:
            with db.table_lock(engine, NAME):
                began = time.monotonic()
                results[name] = work()
                spans[name] = (began, time.monotonic())
        except Exception as exc:  # reported below
            results[name] = exc

    before = open_table(storage, NAME).version()
    threads = [threading.Thread(target=run, args=("apply", lock_engine, lambda: retract(storage))),
               threading.Thread(target=run, args=("daily", second, lambda: export(storage, D3, "daily-3")))]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    finally:
        second.dispose()
    assert not [r for r in results.values() if isinstance(r, Exception)], results
    (a0, a1), (b0, b1) = spans["apply"], spans["daily"]
    assert a1 <= b0 or b1 <= a0, "the two writers held the table at the same time"
    assert open_table(storage, NAME).version() == before + 2
    assert sorted({results["apply"]["table_version"], results["daily"]}) == [before + 1, before + 2]
    assert doc_ids(storage, D1) == sorted(set(IDS[D1]) - {"web/3"})
    assert doc_ids(storage, D2) == sorted(set(IDS[D2]) - {"web/15"})
    assert doc_ids(storage, D3) == sorted(IDS[D3])
    for dt in (D1, D2, D3):
        commit, ledger = committed_ledger(storage, NAME, dt)
        assert ledger_report(ledger, dt, ingested_count(storage, NAME, dt), rows_for_dt(open_table(storage, NAME),
                                                                                      dt)).balanced


def test_cli_versions_marks_the_retraction_with_its_dates_and_rows(storage, capsys):
    version = retract(storage)["table_version"]
    assert main(["--json", "versions"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["version"] == version)
    assert (row["operation"], row["dt"], row["rows"], row["run_id"]) == ("retract", f"{D1},{D2}", "-2", "retract-1")
    assert main(["versions"]) == 0
    assert "(retraction)" in capsys.readouterr().out


def test_a_date_whose_ledger_is_gone_is_left_as_it_is_and_the_others_are_retracted(storage):
    commit, _ = committed_ledger(storage, NAME, D2)
    storage.delete_dir(rejects_dir(D2), VERSION_PREFIX + commit[f"{METADATA_PREFIX}ledger_version"])
    assert retract(storage)["retracted"] == {D1: 1}
    assert "web/3" not in doc_ids(storage, D1) and "web/15" in doc_ids(storage, D2)


def test_a_failed_commit_leaves_no_rewritten_file_or_ledger_behind(storage, monkeypatch):
    def files() -> set[str]:
        return set(storage.list_files(TABLE_DIR)) | {p for dt in (D1, D2) for p in storage.list_files(rejects_dir(dt))}

    before, version = files(), open_table(storage, NAME).version()
    monkeypatch.setattr(retract_module, "_commit", lambda *a, **k: (_ for _ in ()).throw(OSError("S3 went away")))
    with pytest.raises(OSError, match="went away"):
        retract(storage)
    assert files() == before and open_table(storage, NAME).version() == version


def test_a_writer_waiting_too_long_for_the_lock_gives_up_with_a_retryable_error(lock_engine):
    from dctp_tasks.errors import is_transient
    from dctp_tasks.feedback import db

    other = db.create_feedback_engine(lock_engine.url)
    try:
        with db.table_lock(lock_engine, NAME):
            with pytest.raises(TimeoutError, match="lock of Delta table 'curated'") as caught:
                with db.table_lock(other, NAME, wait=1.0):
                    pass
        assert is_transient(caught.value)
        with db.table_lock(other, NAME, wait=1.0):  # released: the next writer gets it at once
            pass
    finally:
        other.dispose()
