"""Export: commit the date's surviving records to the Delta Lake table ``datasets/{name}``, one version per run.

The commit replaces only partition ``dt=D``, adds ``split`` from a hash of ``doc_id``, and carries the run's
metadata (dag_id, run_id, dt, config hash, code version, MLflow run id, row counts). The Parquet files are
streamed with pyarrow, one batch at a time, then committed in one Delta transaction: memory stays flat however
large the day (``write_deltalake`` buffers about 1 KB per row before writing).
"""

from __future__ import annotations

import logging
import posixpath
import time
import uuid

import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from deltalake import CommitProperties, DeltaTable
from deltalake import Schema as DeltaSchema
from deltalake.exceptions import TableNotFoundError
from deltalake.transaction import AddAction, create_table_with_add_actions

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.records import EXPORT_SCHEMA, conform, split_for, with_column
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir

log = logging.getLogger(__name__)

STAGE = "export"
INPUT_STAGE = "dedup_exact"
METADATA_PREFIX = "dctp."
PARTITION = "dt"
ROWS_PER_FILE = 500_000


def dataset_dir(name: str) -> str:
    return f"datasets/{name}"


def export_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, run_id: str,
               input_stage: str = INPUT_STAGE, metadata: dict[str, str | int] | None = None) -> StageResult:
    """Commit date ``dt`` to the Delta table as one new version; return counts and the version number."""
    cfg = config.export
    in_dir = staging_dir(dag_id, dt, input_stage)
    table_dir = dataset_dir(cfg.dataset_name)
    uri = storage.uri(table_dir)
    options = storage.delta_storage_options()
    result = StageResult(STAGE, uri)
    token = uuid.uuid4().hex[:16]
    custom = {
        f"{METADATA_PREFIX}dag_id": dag_id,
        f"{METADATA_PREFIX}run_id": run_id,
        f"{METADATA_PREFIX}dt": dt,
        f"{METADATA_PREFIX}config_hash": config.config_hash(),
        f"{METADATA_PREFIX}code_version": dctp_tasks.__version__,
        f"{METADATA_PREFIX}exported": str(storage.count_rows(in_dir)),
        f"{METADATA_PREFIX}commit_token": token,
        **{f"{METADATA_PREFIX}{k}": str(v) for k, v in (metadata or {}).items()},
    }
    with Timer() as timer:
        existing = _existing(uri, options)
        schema = _table_schema(storage.parquet_schema(in_dir), existing)
        files = _FileWriter(storage, table_dir, dt, schema, f"part-{token}")
        for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
            table = with_column(batch, pa.field("split", pa.string()),
                                split_for(batch.column("doc_id"), cfg.validation_fraction, cfg.test_fraction))
            files.write(conform(table, schema))
        actions = files.close()
        commit = CommitProperties(custom_metadata=custom)
        if existing is None:
            create_table_with_add_actions(uri, DeltaSchema.from_arrow(schema), actions, mode="append",
                                          partition_by=[PARTITION], storage_options=options, commit_properties=commit)
        else:
            existing.create_write_transaction(actions, "overwrite", schema, partition_by=[PARTITION],
                                              partition_filters=[(PARTITION, "=", dt)], commit_properties=commit)
        version = _committed_version(DeltaTable(uri, storage_options=options), token)
    result.total = result.kept = files.rows
    result.seconds = timer.seconds
    result.extra = {"table_version": version, "files": len(actions)}
    log.info("export dt=%s: %d rows in %d files committed as version %d of %s", dt, files.rows, len(actions),
             version, uri)
    return result


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


def _committed_version(table: DeltaTable, token: str) -> int:
    for commit in table.history(limit=50):
        if commit.get(f"{METADATA_PREFIX}commit_token") == token:
            return commit["version"]
    raise RuntimeError(f"commit {token} not found in the last 50 versions of {table.table_uri}")


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


def ingested_count(storage: Storage, name: str, dt: str) -> int:
    """Return the ingested row count recorded by the latest commit of partition ``dt`` (the ledger's total)."""
    history = [c for c in open_table(storage, name).history() if c.get(f"{METADATA_PREFIX}dt") == dt]
    if not history:
        raise ValueError(f"dt={dt} was never exported, so its ingested count is unknown: run the daily DAG first")
    return int(max(history, key=lambda c: c["version"])[f"{METADATA_PREFIX}ingested"])


def rows_for_dt(table: DeltaTable, dt: str) -> int:
    """Count the rows of partition ``dt`` in the table's loaded version."""
    return table.to_pyarrow_dataset().count_rows(filter=ds.field(PARTITION) == dt)
