"""Export: commit the date's surviving records to the Delta Lake table ``datasets/{name}``, one version per run.

The commit replaces only partition ``dt=D``, adds ``split`` from a hash of ``doc_id``, keeps only the allowed
``meta`` keys (PII redacted), and carries the run's metadata (dag_id, run_id, dt, config hash, code version, MLflow
run id, row counts) and the version of the date's ledger it balances against. The Parquet files are streamed with
pyarrow, one batch at a time, then committed in one Delta transaction: memory stays flat however large the day.

Writers of one table never overwrite each other: every writer's files have their own names, and Delta's log admits
one commit per version. A commit that loses the race to another writer (a re-run and a rescore of the same date)
is retried against the new table state, up to ``COMMIT_ATTEMPTS`` times; the last commit of a date wins.
"""

from __future__ import annotations

import logging
import posixpath
import random
import time
import uuid
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable, Transaction
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

import dctp_tasks
from dctp_tasks.config import ExportConfig, PipelineConfig
from dctp_tasks.export.ledger import collect_ledgers, ledger_for_run, read_ledger, write_ledger
from dctp_tasks.export.validate import ValidationFailed, render_html, validate_dataset
from dctp_tasks.ledger import check_ledger, ledger_report
from dctp_tasks.pii import redact_pii
from dctp_tasks.records import EXPORT_SCHEMA, conform, split_for, with_column
from dctp_tasks.staging import stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, check_name

log = logging.getLogger(__name__)

STAGE = "export"
METADATA_PREFIX = "dctp."
PARTITION = "dt"
ROWS_PER_FILE = 500_000
COMMIT_ATTEMPTS = 8
"""Commits tried when other writers keep winning the race for the next version (with a growing random wait)."""
DATES_KEY = f"{METADATA_PREFIX}dates"
"""Commit metadata of a commit that changed several dates (a retraction): JSON ``{dt: that date's metadata}``."""


@dataclass(frozen=True)
class Staged:
    """One stage's staged output of one run: ``stage`` of ``dag_id``, at ``version`` (``None``: the current one)."""

    dag_id: str
    stage: str
    version: str | None = None


def dataset_dir(name: str) -> str:
    return f"datasets/{check_name(name, 'export.dataset_name')}"


def export_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, run_id: str, rows: Staged,
               ledger: list[Staged], ingested: int, synthesized: int = 0, amend: str | None = None,
               metadata: dict[str, str | int] | None = None) -> StageResult:
    """Commit ``rows`` as partition ``dt`` of the Delta table, one new version; return counts and the version.

    The date's ledger is the rows the ``ledger`` stages dropped. With ``amend`` (a commit token of ``dt``), it is
    that commit's ledger with those stages' rows replaced (a re-decision changes one stage's drops, not the
    others'), and the commit happens only while ``amend`` is still the date's latest: a re-decision never
    overwrites a newer export of the date. The ledger must balance (``ingested`` + ``synthesized``, the rows the
    synthetic stage generated, = rows + drops) before anything is committed; it is written first and named by the
    commit, so every version balances against its own ledger.
    """
    cfg = config.export
    in_dir = stage_rows(storage, rows.dag_id, dt, rows.stage, rows.version)
    table_dir = dataset_dir(cfg.dataset_name)
    uri = storage.uri(table_dir)
    options = storage.delta_storage_options()
    token = uuid.uuid4().hex[:16]
    with Timer() as timer:
        base = _amended_commit(storage, cfg.dataset_name, dt, amend) if amend else None
        rejects = ledger_for_run(storage, dt, ledger, base=read_ledger(
            storage, dt, base.get(f"{METADATA_PREFIX}ledger_version")) if base else None)
        exported = storage.count_rows(in_dir)
        check_ledger(ledger_report(rejects, dt, ingested, exported, synthesized))  # before committing anything
        ledger_version = write_ledger(storage, dt, rejects)
        custom = {
            f"{METADATA_PREFIX}dag_id": dag_id,
            f"{METADATA_PREFIX}run_id": run_id,
            f"{METADATA_PREFIX}dt": dt,
            f"{METADATA_PREFIX}config_hash": config.config_hash(),
            f"{METADATA_PREFIX}code_version": dctp_tasks.__version__,
            f"{METADATA_PREFIX}exported": str(exported),
            f"{METADATA_PREFIX}ingested": str(ingested),
            f"{METADATA_PREFIX}synthesized": str(synthesized),
            f"{METADATA_PREFIX}ledger_version": ledger_version,
            f"{METADATA_PREFIX}commit_token": token,
            **{f"{METADATA_PREFIX}{k}": str(v) for k, v in (metadata or {}).items()},
        }
        upstream = storage.parquet_schema(in_dir)
        schema = _table_schema(upstream, _existing(uri, options))
        files = _FileWriter(storage, table_dir, dt, schema, f"part-{token}")
        meta = MetaFilter(cfg)
        for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
            table = with_column(batch, pa.field("split", pa.string()),
                                split_for(batch.column("doc_id"), cfg.validation_fraction, cfg.test_fraction))
            files.write(conform(meta.apply(table), schema))
        actions = files.close()
        validation = _validate(storage, config, dt, schema, actions)
        version, attempts = _commit(storage, cfg.dataset_name, upstream, actions, dt, custom, token, amend)
    try:
        collect_ledgers(storage, cfg.dataset_name, dt)
    except OSError as exc:  # best effort: the version is committed; a later export collects what is left
        log.warning("could not collect old ledgers of dt=%s: %s", dt, exc)
    result = StageResult(STAGE, uri, total=files.rows, kept=files.rows)
    result.seconds = timer.seconds
    result.extra = {"table_version": version, "files": len(actions), "commit_attempts": attempts,
                    "ledger_version": ledger_version, "meta_keys_dropped": meta.dropped, **validation}
    log.info("export dt=%s: %d rows in %d files committed as version %d of %s (attempt %d)", dt, files.rows,
             len(actions), version, uri, attempts)
    return result


def _validate(storage: Storage, config: PipelineConfig, dt: str, schema: pa.Schema,
              actions: list[AddAction]) -> dict[str, str]:
    """Validate the version this commit would make (the table's other dates plus the new files); store the HTML
    report as ``reports/dt=D/validation.html``. A failed ``error`` check deletes the new files and raises
    ``ValidationFailed``: nothing is committed."""
    cfg = config.export
    if not cfg.validation.enabled:
        return {}
    table_dir = dataset_dir(cfg.dataset_name)
    existing = _existing(storage.uri(table_dir), storage.delta_storage_options())
    others = existing.file_uris(partition_filters=[(PARTITION, "!=", dt)]) if existing is not None else []
    paths = [uri.split("://", 1)[-1] for uri in others] + [storage.path(table_dir, a.path) for a in actions]
    dataset = ds.dataset(paths, schema=schema, format="parquet", filesystem=storage.fs,
                         partitioning=ds.partitioning(pa.schema([(PARTITION, pa.string())]), flavor="hive"),
                         partition_base_dir=storage.path(table_dir))
    report = validate_dataset(dataset, config)
    location = ("reports", f"dt={dt}", "validation.html")
    storage.write_bytes(storage.path(*location), render_html(
        report, title=f"Validation of {cfg.dataset_name} with dt={dt} from this run").encode())
    for check in report.checks:
        if not check.passed and check.severity != "off":
            log.warning("validation of dt=%s: %s (%s) failed: %s", dt, check.name, check.severity, check.detail)
    if not report.ok:
        storage.delete_files([storage.path(table_dir, a.path) for a in actions])
        raise ValidationFailed(report, where=storage.uri(*location))
    return {"validation": "/".join(location),
            "validation_warnings": ",".join(c.name for c in report.checks if not c.passed and c.severity == "warn")}


def _commit(storage: Storage, name: str, upstream: pa.Schema, actions: list[AddAction], dt: str,
            custom: dict[str, str], token: str, amend: str | None) -> tuple[int, int]:
    """Commit ``actions`` as the new content of partition ``dt``; retry when another writer got there first (but
    with ``amend``, only while that commit is still the date's latest).

    Each commit also records an application transaction for its date (``dctp.export.dt=D``). Without it, two
    writers that both found the date's partition empty would each commit a plain append, which Delta never checks
    for conflicts, and the date would hold both writers' rows; with it, the second commit fails and is retried.
    """
    table_dir = dataset_dir(name)
    uri, options = storage.uri(table_dir), storage.delta_storage_options()
    for attempt in range(1, COMMIT_ATTEMPTS + 1):
        if amend is not None:
            _amended_commit(storage, name, dt, amend)  # raises when another export of the date came in between
        commit = CommitProperties(custom_metadata=custom, app_transactions=[
            Transaction(f"dctp.export.dt={dt}", time.time_ns() // 1000)])
        try:
            existing = _existing(uri, options) or _create(uri, options, _table_schema(upstream, None))
            schema = _table_schema(upstream, existing)  # another writer may have added columns meanwhile
            existing.create_write_transaction(actions, "overwrite", schema, partition_by=[PARTITION],
                                              partition_filters=[(PARTITION, "=", dt)], commit_properties=commit)
        except (CommitFailedError, DeltaError) as exc:
            if not _lost_race(exc) or attempt == COMMIT_ATTEMPTS:
                raise
            wait = random.uniform(0.1, 0.5) * attempt
            log.info("export dt=%s: another writer committed first (%s); retrying in %.1f s", dt, exc, wait)
            time.sleep(wait)
            continue
        return _committed_version(storage, table_dir, token), attempt
    raise AssertionError("unreachable")


def _create(uri: str, options: dict[str, str], schema: pa.Schema) -> DeltaTable:
    """Create the table empty (version 0), so every date's rows arrive by a checked overwrite of their partition.

    Creating it together with the first date's rows is not safe: when two writers create it at once, deltalake
    lets the second creation land as version 1, holding both writers' rows for that date.
    """
    create_table_with_add_actions(uri, DeltaSchema.from_arrow(schema), [], mode="ignore", partition_by=[PARTITION],
                                  storage_options=options,
                                  commit_properties=CommitProperties(custom_metadata={
                                      f"{METADATA_PREFIX}operation": "create"}))
    return DeltaTable(uri, storage_options=options)


def _lost_race(exc: Exception) -> bool:
    """Return whether a failed commit lost to a concurrent writer (retry) rather than being wrong (fail)."""
    if isinstance(exc, CommitFailedError):
        return True
    text = str(exc).lower()
    return "already exists" in text or "version" in text and "exists" in text or "concurrent" in text


def _existing(uri: str, options: dict[str, str]) -> DeltaTable | None:
    try:
        table = DeltaTable(uri, storage_options=options)
    except TableNotFoundError:
        return None
    if table.metadata().partition_columns != [PARTITION]:
        raise ValueError(f"Delta table {uri} is partitioned by {table.metadata().partition_columns}, not ['dt']")
    return table


def _table_schema(upstream: pa.Schema, existing: DeltaTable | None) -> pa.Schema:
    """The export schema, then columns later stages added upstream, then columns only the table has (merged)."""
    fields = list(EXPORT_SCHEMA) + [f for f in upstream if f.name not in EXPORT_SCHEMA.names]
    if existing is not None:
        names = {f.name for f in fields}
        fields += [f for f in pa.schema(existing.schema().to_arrow()) if f.name not in names]
    return pa.schema(fields)


def _committed_version(storage: Storage, table_dir: str, token: str) -> int:
    """Return the version our commit (``token``) became, read from the log itself."""
    latest = DeltaTable(storage.uri(table_dir), storage_options=storage.delta_storage_options()).version()
    for version in range(latest, max(latest - 50, -1), -1):
        if (commit_info(storage, table_dir, version) or {}).get(f"{METADATA_PREFIX}commit_token") == token:
            return version
    raise RuntimeError(f"commit {token} not found in the last 50 versions of {storage.uri(table_dir)}")


def commit_info(storage: Storage, table_dir: str, version: int) -> dict | None:
    """Return the ``commitInfo`` of one version, read from its log file (``None`` once the log was cleaned up).

    Not ``DeltaTable.history()``: it numbers commits by counting down from the version it loaded, so a commit
    another writer adds while it lists the log shifts every number by one.
    """
    try:
        raw = storage.read_bytes(storage.path(table_dir, "_delta_log", f"{version:020d}.json"))
    except FileNotFoundError:
        return None
    for line in raw.splitlines():
        action = orjson.loads(line) if line.strip() else {}
        if "commitInfo" in action:
            return {**action["commitInfo"], "version": version}
    return {"version": version}


class _FileWriter:
    """Stream ``dt=D/part-*.parquet`` files into the table folder; return their Delta add actions."""

    def __init__(self, storage: Storage, table_dir: str, dt: str, schema: pa.Schema, prefix: str) -> None:
        self.storage = storage
        self.table_path = storage.path(table_dir)
        self.dt = dt
        self.schema = schema
        self.file_schema = pa.schema([f for f in schema if f.name != PARTITION])  # the path carries dt
        self.prefix = prefix
        self.rows = 0
        self.actions: list[AddAction] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._path = ""
        self._in_file = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        if self._writer is None:
            self._open()
        self._writer.write_table(table.drop_columns([PARTITION]))
        self._in_file += table.num_rows
        self.rows += table.num_rows
        if self._in_file >= ROWS_PER_FILE:
            self._finish()

    def close(self) -> list[AddAction]:
        self._finish()
        return self.actions

    def _open(self) -> None:
        relative = f"{PARTITION}={self.dt}/{self.prefix}-{len(self.actions):05d}.zstd.parquet"
        self._path = posixpath.join(self.table_path, relative)
        self.storage.fs.create_dir(posixpath.dirname(self._path), recursive=True)
        self._sink = self.storage.fs.open_output_stream(self._path, compression=None)
        self._writer = pq.ParquetWriter(self._sink, self.file_schema, compression="zstd")
        self._in_file = 0

    def _finish(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.close()
        self._writer = self._sink = None
        size = self.storage.fs.get_file_info(self._path).size
        self.actions.append(AddAction(
            path=posixpath.relpath(self._path, self.table_path), size=size, partition_values={PARTITION: self.dt},
            modification_time=int(time.time() * 1000), data_change=True,
            stats=orjson.dumps({"numRecords": self._in_file}).decode(),
        ))


def open_table(storage: Storage, name: str, version: int | None = None) -> DeltaTable:
    return DeltaTable(storage.uri(dataset_dir(name)), version=version, storage_options=storage.delta_storage_options())


def latest_commit(storage: Storage, name: str, dt: str, version: int | None = None) -> dict | None:
    """Return the metadata of the latest commit that wrote partition ``dt`` (at or before ``version``), or None.

    ``history()`` finds the candidates; each one's version is then confirmed from its own log file, since
    ``history()`` may number them off by one while another writer commits.
    """
    try:
        history = open_table(storage, name).history()
    except TableNotFoundError:
        return None
    table_dir = dataset_dir(name)
    token_key = f"{METADATA_PREFIX}commit_token"
    for candidate in sorted((c for c in history if for_date(c, dt) is not None),
                            key=lambda c: c["version"], reverse=True):
        claimed = candidate["version"]
        for shift in (0, -1, 1, -2, 2, -3, 3):
            info = commit_info(storage, table_dir, claimed + shift) if claimed + shift >= 0 else None
            if info is not None and info.get(token_key) == candidate.get(token_key):
                if version is None or info["version"] <= version:
                    return for_date(info, dt)
                break
        else:
            raise RuntimeError(f"commit {candidate.get(token_key)} of dt={dt} is not in the log near version "
                               f"{claimed} of {storage.uri(table_dir)}")
    return None


def for_date(commit: dict, dt: str) -> dict | None:
    """Return ``commit`` as partition ``dt`` sees it, or ``None`` when it did not change ``dt``: an export of the
    date as it is; a commit of several dates (a retraction) with the date's own ledger version, counts and
    scores in place of its ``dates`` map."""
    if commit.get(f"{METADATA_PREFIX}dt") == dt:
        return commit
    per_date = orjson.loads(commit[DATES_KEY]).get(dt) if commit.get(DATES_KEY) else None
    if per_date is None:
        return None
    return {**commit, f"{METADATA_PREFIX}dt": dt, **{f"{METADATA_PREFIX}{k}": str(v) for k, v in per_date.items()}}


def ingested_count(storage: Storage, name: str, dt: str) -> int:
    """Return the ingested row count recorded by the latest commit of partition ``dt`` (the ledger's total)."""
    commit = latest_commit(storage, name, dt)
    if commit is None:
        raise ValueError(f"dt={dt} was never exported, so its ingested count is unknown: run the daily DAG first")
    return int(commit[f"{METADATA_PREFIX}ingested"])


class StaleCommit(ValueError):
    """The date was exported again since the commit a re-decision amends: its scores and ledger are outdated."""


def _amended_commit(storage: Storage, name: str, dt: str, token: str) -> dict:
    """Return the date's latest commit if it is ``token``'s, else raise ``StaleCommit``."""
    commit = latest_commit(storage, name, dt)
    if commit is None or commit.get(f"{METADATA_PREFIX}commit_token") != token:
        raise StaleCommit(f"dt={dt} was exported again (version {commit and commit['version']}) after the commit "
                          f"{token} this re-decision started from: trigger it again to re-decide the new version")
    return commit


def rescore_basis(storage: Storage, name: str, dt: str) -> dict:
    """Return what re-deciding ``dt`` starts from: its latest commit (token, version, ingested and synthesized
    counts), the scores that commit's rows were decided from (``Staged`` fields) and the synthetic candidates it
    decided (``synthetic``: dag_id and version, both ``None`` when nothing was generated), so scores, ledger and
    counts belong together."""
    commit = latest_commit(storage, name, dt)
    if commit is None:
        raise ValueError(f"dt={dt} was never exported, so there is nothing to re-decide: run the daily DAG first")
    scores = {key: commit.get(f"{METADATA_PREFIX}scores_{key}") for key in ("dag_id", "stage", "version")}
    if not all(scores.values()):
        raise ValueError(f"the latest commit of dt={dt} (version {commit['version']}) does not record the scores it "
                         f"was decided from (written by an older version): re-run the daily DAG for dt={dt}")
    synthetic = {key: commit.get(f"{METADATA_PREFIX}synthetic_{key}") for key in ("dag_id", "version")}
    return {"commit_token": commit[f"{METADATA_PREFIX}commit_token"], "version": commit["version"],
            "ingested": int(commit[f"{METADATA_PREFIX}ingested"]), "scores": scores,
            "synthesized": synthesized_count(commit), "synthetic": synthetic}


def synthesized_count(commit: dict) -> int:
    """Return the generated rows a commit's ledger accounts for (0 for commits made before synthetic generation)."""
    return int(commit.get(f"{METADATA_PREFIX}synthesized") or 0)


class MetaFilter:
    """Keep only the ``export.meta_fields`` keys of each row's ``meta`` JSON, with PII redacted from their text.

    Unmapped input columns land in ``meta`` at ingest; a source's columns are not all fit to publish (an e-mail
    column, a user id), so only the allow-listed keys leave the pipeline.
    """

    def __init__(self, cfg: ExportConfig) -> None:
        self.allowed = set(cfg.meta_fields)
        self.redact = cfg.redact_meta
        self.dropped = 0

    def apply(self, table: pa.Table) -> pa.Table:
        if "meta" not in table.column_names or table.num_rows == 0:
            return table
        rows = [orjson.loads(m) if m else None for m in table.column("meta").to_pylist()]
        kept = []
        for row in rows:
            if not isinstance(row, dict):  # no keys to allow: nothing of it is published
                self.dropped += row is not None
                kept.append(None)
                continue
            selected = {k: v for k, v in row.items() if k in self.allowed}
            self.dropped += len(row) - len(selected)
            kept.append(selected)
        if self.redact:
            kept = self._redacted(kept)
        meta = pa.array([None if m is None else orjson.dumps(m, option=orjson.OPT_SORT_KEYS).decode() for m in kept],
                        pa.string())
        return with_column(table, table.schema.field("meta"), meta)

    @staticmethod
    def _redacted(rows: list) -> list:
        """Redact every string value of the kept keys in one vectorised pass."""
        places = [(i, k) for i, row in enumerate(rows) if isinstance(row, dict)
                  for k, v in row.items() if isinstance(v, str)]
        if not places:
            return rows
        redacted, _ = redact_pii(pa.array([rows[i][k] for i, k in places], pa.string()))
        for (i, k), value in zip(places, redacted.to_pylist(), strict=True):
            rows[i][k] = value
        return rows


def rows_for_dt(table: DeltaTable, dt: str) -> int:
    """Count the rows of partition ``dt`` in the table's loaded version."""
    return table.to_pyarrow_dataset().count_rows(filter=ds.field(PARTITION) == dt)

