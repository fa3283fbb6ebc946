"""Export: commit the date's surviving records to the Delta Lake table ``datasets/{name}``, one version per run.

The commit replaces only partition ``dt=D`` (predicate overwrite), adds ``split`` from a hash of ``doc_id``,
and carries the run's metadata (dag_id, run_id, dt, config hash, code version, MLflow run id, row counts).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.records import EXPORT_SCHEMA, conform, split_for, with_column
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir

log = logging.getLogger(__name__)

STAGE = "export"
INPUT_STAGE = "dedup_exact"
METADATA_PREFIX = "dctp."


def dataset_dir(name: str) -> str:
    return f"datasets/{name}"


def export_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *, run_id: str,
               input_stage: str = INPUT_STAGE, metadata: dict[str, str | int] | None = None) -> StageResult:
    """Commit date ``dt`` to the Delta table as one new version; return counts and the version number."""
    cfg = config.export
    in_dir = staging_dir(dag_id, dt, input_stage)
    uri = storage.uri(dataset_dir(cfg.dataset_name))
    result = StageResult(STAGE, uri)
    schema = _output_schema(storage, in_dir)
    counter = {"rows": 0}

    def batches() -> Iterator[pa.RecordBatch]:
        for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
            table = with_column(batch, pa.field("split", pa.string()),
                                split_for(batch.column("doc_id"), cfg.validation_fraction, cfg.test_fraction))
            counter["rows"] += table.num_rows
            yield from conform(table, schema).to_batches()

    custom = {
        f"{METADATA_PREFIX}dag_id": dag_id,
        f"{METADATA_PREFIX}run_id": run_id,
        f"{METADATA_PREFIX}dt": dt,
        f"{METADATA_PREFIX}config_hash": config.config_hash(),
        f"{METADATA_PREFIX}code_version": dctp_tasks.__version__,
        f"{METADATA_PREFIX}exported": str(storage.count_rows(in_dir)),
        **{f"{METADATA_PREFIX}{k}": str(v) for k, v in (metadata or {}).items()},
    }
    with Timer() as timer:
        reader = pa.RecordBatchReader.from_batches(schema, batches())
        write_deltalake(
            uri, reader, partition_by=["dt"], mode="overwrite", predicate=f"dt = '{dt}'", schema_mode="merge",
            storage_options=storage.delta_storage_options(),
            writer_properties=WriterProperties(compression="ZSTD"),
            commit_properties=CommitProperties(custom_metadata=custom),
        )
        version = DeltaTable(uri, storage_options=storage.delta_storage_options()).version()
    result.total = result.kept = counter["rows"]
    result.seconds = timer.seconds
    result.extra = {"version": version}
    log.info("export dt=%s: %d rows committed as version %d of %s", dt, result.kept, version, uri)
    return result


def _output_schema(storage: Storage, in_dir: str) -> pa.Schema:
    """The export schema plus any columns later stages added upstream (the table's schema merges)."""
    upstream = storage.parquet_schema(in_dir)
    extra = [f for f in upstream if f.name not in EXPORT_SCHEMA.names]
    return pa.schema(list(EXPORT_SCHEMA) + extra)


def open_table(storage: Storage, name: str, version: int | None = None) -> DeltaTable:
    return DeltaTable(storage.uri(dataset_dir(name)), version=version, storage_options=storage.delta_storage_options())


def rows_for_dt(table: DeltaTable, dt: str) -> int:
    """Count the rows of partition ``dt`` in the table's loaded version."""
    return table.to_pyarrow_dataset().count_rows(filter=ds.field("dt") == dt)
