"""Ingest: every landing file (and configured PostgreSQL table) of one date into records; bad rows quarantined.

Reads ``landing/{source}/dt=D/*`` and tables rows in the run's data interval; publishes the staged ``ingest`` rows
and the quarantined rows together. Fails after publishing them when too much was quarantined.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime

import pyarrow as pa

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.ingest.mapping import Mapper, RowError
from dctp_tasks.ingest.readers import BadRow, Event, null_timestamp_rows, read_file, read_postgres
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.records import CORE_SCHEMA, append_step, empty_lineage, params_hash
from dctp_tasks.staging import REJECTS, ROWS, stage_output
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

STAGE = "ingest"

#: ``conn_id -> DB-API connection`` for PostgreSQL sources (the DAG passes the postgres hook's).
ConnectionFactory = Callable[[str], object]


class QuarantineRatioExceeded(ValueError):
    """More of the day's input was malformed than ``ingest.max_quarantine_ratio`` allows."""


def ingest_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
               interval: tuple[datetime, datetime] | None = None,
               connect: ConnectionFactory | None = None) -> StageResult:
    """Ingest every source of date ``dt``; return counts. ``interval`` bounds PostgreSQL sources."""
    per_file: dict[str, Counter[str]] = {}
    step = params_hash(config.ingest.model_dump(mode="json"))
    seen_ids: set[int] = set()
    unplaced: Counter[str] = Counter()
    with Timer() as timer, stage_output(storage, dag_id, dt, STAGE) as out, \
            out.writer(ROWS, schema=CORE_SCHEMA) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, STAGE) as rejects:
        builder = _BatchBuilder(dt, step)
        for source, file, events in _sources(storage, config, dt, interval, connect, unplaced):
            mapper = Mapper.for_source(source, config.ingest.source(source))
            counts = per_file.setdefault(file, Counter())
            for event in events:
                counts["rows"] += 1
                if isinstance(event, BadRow):
                    doc_id = f"{source}/quarantine:{file}:{event.line}"
                    rejects.add(doc_id, "quarantined", event.reason, event.detail, source=source, file=file,
                                line=event.line)
                    counts["quarantined"] += 1
                    continue
                try:
                    record = mapper.map(event.data, file, event.line)
                except RowError as err:
                    rejects.add(err.doc_id or f"{source}/quarantine:{file}:{event.line}", "quarantined",
                                err.reason, err.detail, source=source, file=file, line=event.line)
                    counts["quarantined"] += 1
                    continue
                key = int.from_bytes(hashlib.blake2b(record["doc_id"].encode(), digest_size=8).digest(), "big")
                if key in seen_ids:
                    rejects.add(record["doc_id"], "quarantined", "duplicate_id",
                                "doc_id already read earlier in this date's input", source=source, file=file,
                                line=event.line)
                    counts["quarantined"] += 1
                    continue
                seen_ids.add(key)
                builder.add(record)
                if builder.size >= config.batch_size:
                    writer.write(builder.flush())
        writer.write(builder.flush())
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), version=out.version)
    result.seconds = timer.seconds
    result.total = sum(c["rows"] for c in per_file.values())
    result.kept = writer.rows
    result.dropped_by_reason = Counter(rejects.counts)
    # Rows of a table source that no date reads (NULL timestamp): counted here so they show in the run's metrics.
    result.extra = {"files": len(per_file), "quarantined": rejects.total,
                    "null_timestamp_rows": sum(unplaced.values())}
    log.info("ingest dt=%s: %d rows from %d files, %d kept, %d quarantined", dt, result.total, len(per_file),
             result.kept, rejects.total)
    _check_quarantine_ratio(config.ingest.max_quarantine_ratio, result.total, rejects.total, per_file)
    return result


def _sources(storage: Storage, config: PipelineConfig, dt: str, interval: tuple[datetime, datetime] | None,
             connect: ConnectionFactory | None, unplaced: Counter[str]) -> Iterator[tuple[str, str, Iterator[Event]]]:
    wanted = set(config.ingest.include_sources)
    for source in storage.list_dirs("landing"):
        if (wanted and source not in wanted) or not config.ingest.source(source).enabled:
            continue
        for path in storage.list_files("landing", source, f"dt={dt}"):
            yield source, storage.relative(path), read_file(storage, path, config.batch_size)
    for source, source_config in sorted(config.ingest.sources.items()):
        pg = source_config.postgres
        if pg is None or not source_config.enabled or (wanted and source not in wanted):
            continue
        if connect is None or interval is None:
            raise ValueError(f"source {source!r} reads PostgreSQL but no connection factory or interval was given")
        connection = connect(pg.conn_id)
        try:
            unplaced[source] = null_timestamp_rows(connection, pg)
            yield source, f"postgresql:{pg.schema_name}.{pg.table}", read_postgres(
                connection, pg.schema_name, pg.table, pg.timestamp_column, interval[0], interval[1], config.batch_size,
                ingested_at_column=pg.ingested_at_column,
            )
        finally:
            connection.close()


class _BatchBuilder:
    """Collect mapped records column-wise and emit them as ``CORE_SCHEMA`` tables."""

    _COLUMNS = ("doc_id", "text", "prompt", "response", "source", "domain", "created_at", "meta")

    def __init__(self, dt: str, params: str) -> None:
        self.dt = dt
        self.params = params
        self._reset()

    def _reset(self) -> None:
        self.columns: dict[str, list] = {name: [] for name in self._COLUMNS}

    @property
    def size(self) -> int:
        return len(self.columns["doc_id"])

    def add(self, record: dict) -> None:
        for name in self._COLUMNS:
            self.columns[name].append(record[name])

    def flush(self) -> pa.Table:
        n = self.size
        arrays = {name: pa.array(values, CORE_SCHEMA.field(name).type) for name, values in self.columns.items()}
        arrays["dt"] = pa.array([self.dt] * n, pa.string())
        arrays["synthetic"] = pa.array([False] * n, pa.bool_())
        arrays["sampling_weight"] = pa.array([1.0] * n, pa.float64())
        arrays["lineage"] = append_step(empty_lineage(n), STAGE, dctp_tasks.__version__, self.params)
        self._reset()
        return pa.table([arrays[f.name] for f in CORE_SCHEMA], schema=CORE_SCHEMA)


def _check_quarantine_ratio(limit: float, total: int, quarantined: int, per_file: dict[str, Counter[str]]) -> None:
    if total == 0 or quarantined / total <= limit:
        return
    worst, counts = max(per_file.items(), key=lambda kv: (kv[1]["quarantined"], kv[0]))
    raise QuarantineRatioExceeded(
        f"{quarantined} of {total} rows ({quarantined / total:.1%}) were quarantined, above the limit of "
        f"{limit:.1%} (ingest.max_quarantine_ratio); worst file: {worst} with {counts['quarantined']} of "
        f"{counts['rows']} rows quarantined. The rejects are written: run `dctp ledger DATE` to see them."
    )

