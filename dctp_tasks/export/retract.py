"""Retract: remove documents the experts rejected from the partitions they were exported to, in one Delta commit.

Only the files holding a rejected document are rewritten (without it) and swapped in one transaction, whose
metadata names the reason, the run and the judgements. Every date it touches gets a new ledger version with the
removed rows as ``retracted``, so ``ingested = exported + duplicates + filtered + quarantined + retracted`` still
holds for that date, and a reader of any later version finds the date's ledger through this commit.
"""

from __future__ import annotations

import json
import logging
import posixpath
import random
import time
import uuid

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import CommitProperties, Transaction
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.transaction import RemoveAction

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.export.delta import (
    COMMIT_ATTEMPTS,
    DATES_KEY,
    METADATA_PREFIX,
    PARTITION,
    _committed_version,
    _existing,
    _FileWriter,
    _lost_race,
    dataset_dir,
    synthesized_count,
)
from dctp_tasks.export.ledger import RETRACT_STAGE, committed_ledger, rejects_dir, write_ledger
from dctp_tasks.ledger import REJECT_SCHEMA, check_ledger, judgement_ids, ledger_report
from dctp_tasks.publish import VERSION_PREFIX
from dctp_tasks.records import conform
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

MAX_DOCUMENTS_IN_METADATA = 10_000
"""Documents whose judgement ids the commit metadata lists (each retracted row's ledger detail names its first 20;
the feedback store has them all)."""


def retract_documents(storage: Storage, config: PipelineConfig, rejected: dict[str, tuple[str, list[int]]], *,
                      dag_id: str, run_id: str, reason: str, skip_dt: str | None = None,
                      metadata: dict[str, str] | None = None) -> dict:
    """Remove the ``rejected`` documents (``doc_id -> (dt, judgement ids)``) still in the Delta table, except
    those of partition ``skip_dt``; return the new ``table_version`` (``None`` when nothing was in the table) and
    the rows retracted per date. Retried when another writer commits first."""
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        try:
            return _retract(storage, config, rejected, dag_id, run_id, reason, skip_dt, metadata or {})
        except (CommitFailedError, DeltaError) as exc:
            if not _lost_race(exc) or attempt == COMMIT_ATTEMPTS:
                raise
            wait = random.uniform(0.1, 0.5) * attempt
            log.info("retract: another writer committed first (%s); retrying in %.1f s", exc, wait)
            time.sleep(wait)
    raise AssertionError("unreachable")


def _retract(storage: Storage, config: PipelineConfig, rejected: dict[str, tuple[str, list[int]]], dag_id: str,
             run_id: str, reason: str, skip_dt: str | None, metadata: dict[str, str]) -> dict:
    name = config.export.dataset_name
    table_dir = dataset_dir(name)
    table = _existing(storage.uri(table_dir), storage.delta_storage_options())
    dates = sorted({day for day, _ in rejected.values()} - {skip_dt})
    if table is None or not dates:
        return {"table_version": None, "retracted": {}}
    ledgers, bad = _still_exported(storage, name, table.version(), dates, rejected, reason)
    dates = sorted(bad)
    if not dates:
        return {"table_version": None, "retracted": {}}
    files = pa.table(table.get_add_actions(flatten=True))
    files = files.filter(pc.is_in(files.column(f"partition.{PARTITION}"), value_set=pa.array(dates, pa.string())))
    schema = pa.schema(table.schema().to_arrow())
    token = uuid.uuid4().hex[:16]
    now_ms = int(time.time() * 1000)
    writers: dict[str, _FileWriter] = {}
    removes: list[RemoveAction] = []
    gone: dict[str, pa.Table] = {}
    root = storage.path(table_dir)
    for row in files.to_pylist():
        path = posixpath.join(root, row["path"])
        day = row[f"partition.{PARTITION}"]
        ids = pq.read_table(storage.fs.open_input_file(path), columns=["doc_id"]).column("doc_id")
        hit = pc.is_in(ids, value_set=bad[day])
        if not pc.any(hit).as_py():
            continue
        whole = pq.read_table(storage.fs.open_input_file(path))
        writer = writers.setdefault(day, _FileWriter(storage, table_dir, day, schema, f"part-{token}-retract"))
        kept = whole.filter(pc.invert(hit))
        # conform: a file written before a later export added a column lacks it (nulls, as readers see it)
        writer.write(conform(kept.append_column(PARTITION, pa.array([day] * kept.num_rows, pa.string())), schema))
        removed = whole.filter(hit).select(["doc_id", "source"])
        gone[day] = pa.concat_tables([t for t in (gone.get(day), removed) if t is not None])
        removes.append(RemoveAction(row["path"], True, now_ms, row["size_bytes"], {PARTITION: day}))
    adds = [a for w in writers.values() for a in w.close()]
    if not removes:
        return {"table_version": None, "retracted": {}}
    per_date: dict[str, dict] = {}
    try:
        for day, removed in sorted(gone.items()):
            per_date[day] = _date_ledger(storage, day, ledgers[day], removed, rejected, run_id, reason, files)
        version = _commit(storage, config, table, table_dir, token, adds, removes, per_date, gone, rejected, dag_id,
                          run_id, reason, metadata)
    except BaseException:
        _discard(storage, root, adds, per_date)  # this attempt's files: a retry writes its own
        raise
    retracted = {day: t.num_rows for day, t in sorted(gone.items())}
    log.info("retract: %d documents removed from %s (%s) as version %d", sum(retracted.values()), name,
             ", ".join(f"dt={d}: {n}" for d, n in retracted.items()), version)
    return {"table_version": version, "retracted": retracted, "files_rewritten": len(removes)}


def _still_exported(storage: Storage, name: str, version: int, dates: list[str], rejected: dict,
                    reason: str) -> tuple[dict[str, tuple[dict, pa.Table]], dict[str, pa.Array]]:
    """Return each date's latest commit and ledger, and the rejected doc_ids the ledger does not yet count as gone
    for ``reason``: only those are looked for in the date's files. A document is looked for only in the partition
    it was judged in, never another date holding the same doc_id (a source that sent the record again, changed). A
    date whose ledger cannot be read (exported by an older version) is left out with a warning, not the others."""
    ledgers: dict[str, tuple[dict, pa.Table]] = {}
    bad: dict[str, pa.Array] = {}
    for day in dates:
        try:
            ledgers[day] = committed_ledger(storage, name, day, version)
        except FileNotFoundError as exc:
            log.warning("retract: dt=%s left as it is: %s", day, exc)
            continue
        ledger = ledgers[day][1]
        gone = ledger.filter(pc.equal(ledger.column("reason"), reason)).column("doc_id")
        wanted = pa.array(sorted(d for d, (dt, _) in rejected.items() if dt == day), pa.string())
        wanted = wanted.filter(pc.invert(pc.is_in(wanted, value_set=gone.combine_chunks())))
        if len(wanted):
            bad[day] = wanted
    return ledgers, bad


def _commit(storage: Storage, config: PipelineConfig, table, table_dir: str, token: str, adds: list, removes: list,
            per_date: dict, gone: dict[str, pa.Table], rejected: dict, dag_id: str, run_id: str, reason: str,
            metadata: dict[str, str]) -> int:
    custom = {f"{METADATA_PREFIX}operation": "retract", f"{METADATA_PREFIX}reason": reason,
              f"{METADATA_PREFIX}dag_id": dag_id, f"{METADATA_PREFIX}run_id": run_id,
              f"{METADATA_PREFIX}config_hash": config.config_hash(),
              f"{METADATA_PREFIX}code_version": dctp_tasks.__version__, f"{METADATA_PREFIX}commit_token": token,
              DATES_KEY: json.dumps(per_date, sort_keys=True),
              f"{METADATA_PREFIX}judgements": json.dumps(_judgements(gone, rejected), sort_keys=True),
              **{f"{METADATA_PREFIX}{k}": str(v) for k, v in metadata.items()}}
    commit = CommitProperties(custom_metadata=custom, app_transactions=[
        Transaction(f"dctp.export.dt={day}", time.time_ns() // 1000) for day in sorted(gone)])
    table.create_write_transaction(adds + removes, "append", pa.schema(table.schema().to_arrow()),
                                   partition_by=[PARTITION], commit_properties=commit)
    return _committed_version(storage, table_dir, token)


def _discard(storage: Storage, root: str, adds: list, per_date: dict[str, dict]) -> None:
    """Delete a failed attempt's rewritten files and ledger versions (best effort: the store may be what failed)."""
    try:
        storage.delete_files([posixpath.join(root, a.path) for a in adds])
        for day, meta in per_date.items():
            storage.delete_dir(rejects_dir(day), VERSION_PREFIX + meta["ledger_version"])
    except OSError as exc:
        log.warning("retract: could not delete a failed attempt's files: %s", exc)


def _date_ledger(storage: Storage, day: str, base: tuple[dict, pa.Table], removed: pa.Table, rejected: dict,
                 run_id: str, reason: str, files: pa.Table) -> dict:
    """Write ``day``'s ledger with the removed rows as ``retracted``; check it balances; return the date's commit
    metadata (its ledger version, counts, and the scores its rows were decided from)."""
    commit, ledger = base
    ingested = int(commit[f"{METADATA_PREFIX}ingested"])
    synthesized = synthesized_count(commit)
    in_date = files.filter(pc.equal(files.column(f"partition.{PARTITION}"), day))
    exported = int(pc.sum(in_date.column("num_records")).as_py() or 0) - removed.num_rows
    at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    details = [f"consensus bad by judgements {judgement_ids(rejected[d][1])}; retracted by run {run_id} at {at}"
               for d in removed.column("doc_id").to_pylist()]
    rows = pa.table({
        "doc_id": removed.column("doc_id"), "stage": pa.array([RETRACT_STAGE] * removed.num_rows, pa.string()),
        "outcome": pa.array(["retracted"] * removed.num_rows, pa.string()),
        "reason": pa.array([reason] * removed.num_rows, pa.string()), "detail": pa.array(details, pa.string()),
        "duplicate_of": pa.nulls(removed.num_rows, pa.string()), "source": removed.column("source"),
        "file": pa.nulls(removed.num_rows, pa.string()), "line": pa.nulls(removed.num_rows, pa.int64()),
        "dt": pa.array([day] * removed.num_rows, pa.string())}, schema=REJECT_SCHEMA)
    ledger = pa.concat_tables([ledger, rows])
    check_ledger(ledger_report(ledger, day, ingested, exported, synthesized))  # before anything is committed
    keep = ("scores_dag_id", "scores_stage", "scores_version", "mlflow_run_id", "synthetic_dag_id",
            "synthetic_version")
    return {"ledger_version": write_ledger(storage, day, ledger), "ingested": ingested, "synthesized": synthesized,
            "exported": exported,
            "retracted": removed.num_rows, "base_version": commit["version"],
            **{k: commit[f"{METADATA_PREFIX}{k}"] for k in keep if f"{METADATA_PREFIX}{k}" in commit}}


def _judgements(gone: dict[str, pa.Table], rejected: dict) -> dict[str, list[int]]:
    doc_ids = [d for t in gone.values() for d in t.column("doc_id").to_pylist()][:MAX_DOCUMENTS_IN_METADATA]
    return {d: rejected[d][1] for d in doc_ids}
