"""Exact dedup: identical normalized text within the day and against every earlier date's history.

Reads ``normalize``, writes ``dedup_exact`` (adds ``content_hash``) and this date's history partition
``state/exact_hashes/dt=D``. The survivor is the earliest: history first, then within the day the earliest
``created_at``, then the smallest ``doc_id``. Only dates before D are read, so dates can re-run in any order.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.records import DEDUPED_SCHEMA, append_step, content_hashes, params_hash, with_column
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, staging_dir, state_dir

log = logging.getLogger(__name__)

STAGE = "dedup_exact"
INPUT_STAGE = "normalize"
STATE = "exact_hashes"
STATE_SCHEMA = pa.schema([("content_hash", pa.string()), ("doc_id", pa.string()), ("dt", pa.string())])
_STEP_PARAMS = params_hash({"key": "blake2b-128(normalized text)", "survivor": "history, created_at, doc_id"})
_LATEST = pa.scalar(np.iinfo(np.int64).max, pa.int64())


def dedup_exact_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str,
                    input_stage: str = INPUT_STAGE) -> StageResult:
    """Drop exact duplicates of date ``dt``; return counts (``dropped_exact_duplicate``)."""
    in_dir = staging_dir(dag_id, dt, input_stage)
    out_dir = staging_dir(dag_id, dt, STAGE)
    result = StageResult(STAGE, storage.uri(out_dir))
    with Timer() as timer:
        keys = _day_keys(storage, in_dir, config.batch_size)
        history = _history_matches(storage, dt, keys.column("content_hash"), config.batch_size)
        survivors, duplicates = _decide(keys, history)
        with storage.writer(state_dir(STATE, dt), schema=STATE_SCHEMA) as state:
            state.write(survivors.append_column("dt", pa.array([dt] * survivors.num_rows, pa.string())))
        verdicts = _verdicts(keys, duplicates)  # per row, in file order: the pass below reads the same order
        with storage.writer(out_dir, schema=DEDUPED_SCHEMA) as writer, \
                RejectWriter(storage, dt, STAGE) as rejects:
            offset = 0
            for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
                rows = verdicts.slice(offset, batch.num_rows)
                offset += batch.num_rows
                result.total += batch.num_rows
                table = pa.Table.from_batches([batch]).append_column("content_hash", rows.column("content_hash"))
                is_dup = rows.column("is_dup")
                info = rows.filter(is_dup)
                dups = table.filter(is_dup).select(["doc_id", "source"]).append_column(
                    "duplicate_of", info.column("duplicate_of")).append_column("detail", info.column("detail"))
                dups = dups.sort_by("doc_id")
                rejects.add_table(dups.append_column("outcome", pa.array(["duplicate"] * dups.num_rows))
                                      .append_column("reason", pa.array(["exact_duplicate"] * dups.num_rows)))
                kept = table.filter(pc.invert(is_dup))
                kept = with_column(kept, DEDUPED_SCHEMA.field("lineage"),
                                   append_step(kept.column("lineage"), STAGE, dctp_tasks.__version__, _STEP_PARAMS))
                writer.write(kept)
    result.kept = writer.rows
    result.seconds = timer.seconds
    result.dropped_by_reason = Counter(rejects.counts)
    of_history = duplicates.num_rows - duplicates.column("of_dt").null_count
    result.extra = {"duplicates_of_history": of_history, "state_rows": survivors.num_rows}
    log.info("dedup_exact dt=%s: %d in, %d kept, %d duplicates (%d of earlier dates)", dt, result.total,
             result.kept, result.dropped, of_history)
    return result


def _verdicts(keys: pa.Table, duplicates: pa.Table) -> pa.Table:
    """Return ``content_hash, is_dup, duplicate_of, detail`` for every row of ``keys``, in the same order."""
    n = keys.num_rows
    dup_rows = keys.select(["doc_id"]).append_column("row", pa.array(np.arange(n, dtype=np.int64))).join(
        duplicates.select(["doc_id", "duplicate_of", "detail"]), "doc_id", join_type="inner")
    index = dup_rows.column("row").to_numpy()
    is_dup = np.zeros(n, dtype=bool)
    is_dup[index] = True
    # scatter each duplicate's winner and detail to its row; survivors get nulls
    position = np.full(n, -1, dtype=np.int64)
    position[index] = np.arange(len(index))
    take = pa.array(position, mask=position < 0)
    return pa.table({"content_hash": keys.column("content_hash"), "is_dup": is_dup,
                     "duplicate_of": dup_rows.column("duplicate_of").take(take),
                     "detail": dup_rows.column("detail").take(take)})


def _day_keys(storage: Storage, in_dir: str, batch_size: int) -> pa.Table:
    """Return ``content_hash, doc_id, order`` for every row of the day (no text: bounded memory)."""
    parts = []
    for batch in storage.iter_batches(in_dir, batch_size=batch_size, columns=["doc_id", "text", "created_at"]):
        created = pc.cast(batch.column("created_at"), pa.int64())
        parts.append(pa.table({
            "content_hash": content_hashes(batch.column("text")),
            "doc_id": batch.column("doc_id"),
            "order": pc.fill_null(created, _LATEST),  # rows without a timestamp lose to dated ones
        }))
    if not parts:
        return pa.table({"content_hash": pa.array([], pa.string()), "doc_id": pa.array([], pa.string()),
                         "order": pa.array([], pa.int64())})
    return pa.concat_tables(parts)


def _history_matches(storage: Storage, dt: str, hashes: pa.ChunkedArray, batch_size: int) -> pa.Table:
    """Scan the history of dates before ``dt``; return the earliest doc per hash seen today."""
    wanted = pc.unique(hashes)
    found = []
    for partition in storage.list_dirs(state_dir(STATE)):
        if not partition.startswith("dt=") or partition[3:] >= dt:
            continue
        for batch in storage.iter_batches(state_dir(STATE, partition[3:]), batch_size=batch_size * 10):
            hit = pc.is_in(batch.column("content_hash"), value_set=wanted)
            if pc.any(hit).as_py():
                found.append(pa.Table.from_batches([batch]).filter(hit))
    if not found:
        return STATE_SCHEMA.empty_table()
    matches = pa.concat_tables(found).sort_by([("content_hash", "ascending"), ("dt", "ascending"),
                                               ("doc_id", "ascending")])
    return matches.filter(_first_of_run(matches.column("content_hash")))


def _decide(keys: pa.Table, history: pa.Table) -> tuple[pa.Table, pa.Table]:
    """Return (today's survivors ``content_hash, doc_id``; duplicates ``doc_id, duplicate_of, detail``)."""
    ordered = keys.sort_by([("content_hash", "ascending"), ("order", "ascending"), ("doc_id", "ascending")])
    first = _first_of_run(ordered.column("content_hash"))
    leaders = ordered.filter(first).select(["content_hash", "doc_id"])
    in_history = pc.is_in(leaders.column("content_hash"), value_set=history.column("content_hash"))
    survivors = leaders.filter(pc.invert(in_history))
    # Every row's winner: the history doc when the hash is old, else the day's first row of its run.
    winners = pa.concat_tables([
        history.select(["content_hash", "doc_id", "dt"]).rename_columns(["content_hash", "duplicate_of", "of_dt"]),
        survivors.rename_columns(["content_hash", "duplicate_of"]).append_column(
            "of_dt", pa.nulls(survivors.num_rows, pa.string())),
    ])
    joined = ordered.select(["content_hash", "doc_id"]).join(winners, "content_hash")
    # A re-delivered doc (same id as its history twin) is a duplicate too: only today's leaders survive.
    is_survivor = pc.and_(pc.is_null(joined.column("of_dt")),
                          pc.equal(joined.column("doc_id"), joined.column("duplicate_of")))
    duplicates = joined.filter(pc.invert(is_survivor))
    detail = pc.if_else(
        pc.is_null(duplicates.column("of_dt")),
        pc.binary_join_element_wise("exact content_hash=", duplicates.column("content_hash"), " (same day)", ""),
        pc.binary_join_element_wise("exact content_hash=", duplicates.column("content_hash"), " (history dt=",
                                    pc.fill_null(duplicates.column("of_dt"), ""), ")", ""),
    )
    return survivors, pa.table({"doc_id": duplicates.column("doc_id"),
                                "duplicate_of": duplicates.column("duplicate_of"),
                                "detail": detail, "of_dt": duplicates.column("of_dt")})


def _first_of_run(sorted_values: pa.ChunkedArray) -> pa.Array:
    """Mark the first element of each run of equal values in a sorted array."""
    values = sorted_values.combine_chunks() if isinstance(sorted_values, pa.ChunkedArray) else sorted_values
    if len(values) == 0:
        return pa.array([], pa.bool_())
    changed = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
    return pa.concat_arrays([pa.array([True]), changed.cast(pa.bool_())])
