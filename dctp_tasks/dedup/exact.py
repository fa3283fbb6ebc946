"""Exact dedup: identical normalized text within the day and against every earlier date's history.

Reads ``normalize``, writes ``dedup_exact`` (adds ``content_hash``) and this date's history partition
``state/exact_hashes/dt=D``. The survivor is the earliest: history first, then within the day the earliest
``created_at``, then the smallest ``doc_id``. Only dates before D are read, so dates can re-run in any order.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.publish import earlier_partitions, publish
from dctp_tasks.records import DEDUPED_SCHEMA, append_step, content_hashes, params_hash, with_column
from dctp_tasks.staging import REJECTS, ROWS, stage_output, stage_rows
from dctp_tasks.stats import StageResult, Timer
from dctp_tasks.storage import Storage, state_dir

log = logging.getLogger(__name__)

STAGE = "dedup_exact"
INPUT_STAGE = "normalize"
STATE = "exact_hashes"
STATE_SCHEMA = pa.schema([("content_hash", pa.string()), ("doc_id", pa.string()), ("dt", pa.string())])
_STEP_PARAMS = params_hash({"key": "blake2b-128(normalized text)", "survivor": "history, created_at, doc_id"})
_LATEST = pa.scalar(np.iinfo(np.int64).max, pa.int64())


def dedup_exact_day(storage: Storage, config: PipelineConfig, dag_id: str, dt: str, *,
                    input_stage: str = INPUT_STAGE, input_version: str | None = None) -> StageResult:
    """Drop exact duplicates of date ``dt``; return counts (``dropped_exact_duplicate``)."""
    in_dir = stage_rows(storage, dag_id, dt, input_stage, input_version)
    total = 0
    with Timer() as timer:
        keys = _day_keys(storage, in_dir, config.batch_size)
        history = _history_matches(storage, dt, keys.column("content_hash"), config.batch_size)
        survivors, verdicts = _classify(keys, history)
        with publish(storage, state_dir(STATE, dt)) as state, state.writer(schema=STATE_SCHEMA) as writer:
            writer.write(survivors.append_column("dt", pa.array([dt] * survivors.num_rows, pa.string())))
        hashes = keys.column("content_hash")
        del keys
        with stage_output(storage, dag_id, dt, STAGE) as out, out.writer(ROWS, schema=DEDUPED_SCHEMA) as writer, \
                RejectWriter(storage, out.sub(REJECTS), dt, STAGE) as rejects:
            offset = 0
            for batch in storage.iter_batches(in_dir, batch_size=config.batch_size):
                n = batch.num_rows
                is_dup, duplicate_of, detail = verdicts.rejects(offset, n)
                table = pa.Table.from_batches([batch]).append_column("content_hash", hashes.slice(offset, n))
                offset += n
                total += n
                mask = pa.array(is_dup)
                dups = table.filter(mask).select(["doc_id", "source"])
                dups = dups.append_column("duplicate_of", duplicate_of).append_column("detail", detail)
                dups = dups.sort_by("doc_id")
                rejects.add_table(dups.append_column("outcome", pa.array(["duplicate"] * dups.num_rows))
                                      .append_column("reason", pa.array(["exact_duplicate"] * dups.num_rows)))
                kept = table.filter(pc.invert(mask))
                kept = with_column(kept, DEDUPED_SCHEMA.field("lineage"),
                                   append_step(kept.column("lineage"), STAGE, dctp_tasks.__version__, _STEP_PARAMS))
                writer.write(kept)
    result = StageResult(STAGE, storage.uri(out.sub(ROWS)), total=total, kept=writer.rows, version=out.version)
    result.seconds = timer.seconds
    result.dropped_by_reason = Counter(rejects.counts)
    of_history = verdicts.of_history
    result.extra = {"duplicates_of_history": of_history, "state_rows": survivors.num_rows}
    log.info("dedup_exact dt=%s: %d in, %d kept, %d duplicates (%d of earlier dates)", dt, result.total,
             result.kept, result.dropped, of_history)
    return result


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
    for _, folder in earlier_partitions(storage, state_dir(STATE), dt):
        for batch in storage.iter_batches(folder, batch_size=batch_size * 10):
            hit = pc.is_in(batch.column("content_hash"), value_set=wanted)
            if pc.any(hit).as_py():
                found.append(pa.Table.from_batches([batch]).filter(hit))
    if not found:
        return STATE_SCHEMA.empty_table()
    matches = pa.concat_tables(found).sort_by([("content_hash", "ascending"), ("dt", "ascending"),
                                               ("doc_id", "ascending")])
    return matches.filter(_first_of_run(matches.column("content_hash")))


def _classify(keys: pa.Table, history: pa.Table) -> tuple[pa.Table, Verdicts]:
    """Return today's survivors (``content_hash, doc_id``) and every row's verdict, by index arithmetic only.

    Rows are ordered by (hash, created_at, doc_id): the first row of each run of equal hashes survives unless
    history already holds the hash; every other row points at its run's first row or at the history doc.
    """
    n = keys.num_rows
    perm = pc.sort_indices(keys, sort_keys=[("content_hash", "ascending"), ("order", "ascending"),
                                            ("doc_id", "ascending")]).to_numpy()
    hashes = keys.column("content_hash").take(perm)
    first = _first_of_run(hashes).to_numpy(zero_copy_only=False)
    leader = perm[np.maximum.accumulate(np.where(first, np.arange(n), 0))] if n else perm
    history_row = pc.fill_null(pc.index_in(hashes, value_set=history.column("content_hash")), -1)
    history_row = history_row.to_numpy(zero_copy_only=False)
    from_history = history_row >= 0
    # A re-delivered doc (same id as its history twin) is a duplicate too: only today's new leaders survive.
    survives = first & ~from_history
    duplicate = ~survives
    doc_ids = keys.column("doc_id")
    survivors = pa.table({"content_hash": hashes.filter(pa.array(survives)),
                          "doc_id": doc_ids.take(pa.array(perm[survives]))})
    day_winner = doc_ids.take(pa.array(leader[duplicate]))
    if history.num_rows:
        old = pa.array(np.maximum(history_row[duplicate], 0))
        old_winner, old_dt = history.column("doc_id").take(old), history.column("dt").take(old)
    else:
        old_winner = old_dt = pa.nulls(int(duplicate.sum()), pa.string())
    is_old = pa.array(from_history[duplicate])
    dup_hashes = hashes.filter(pa.array(duplicate))
    detail = pc.if_else(
        is_old,
        pc.binary_join_element_wise("exact content_hash=", dup_hashes, " (history dt=", old_dt, ")", ""),
        pc.binary_join_element_wise("exact content_hash=", dup_hashes, " (same day)", ""),
    )
    rows = perm[duplicate]  # file positions of the duplicates
    position = np.full(n, -1, dtype=np.int64)
    position[rows] = np.arange(len(rows))
    verdicts = Verdicts(position, pc.if_else(is_old, old_winner, day_winner), detail, int(from_history.sum()))
    return survivors, verdicts


@dataclass
class Verdicts:
    """Per file row: ``position`` in the duplicate arrays, or -1 for a survivor."""

    position: np.ndarray
    duplicate_of: pa.Array
    detail: pa.Array
    of_history: int

    def rejects(self, offset: int, count: int) -> tuple[np.ndarray, pa.Array, pa.Array]:
        """Return (is_duplicate mask, duplicate_of, detail) for file rows ``[offset, offset + count)``."""
        position = self.position[offset:offset + count]
        is_dup = position >= 0
        take = pa.array(position[is_dup])
        return is_dup, self.duplicate_of.take(take), self.detail.take(take)


def _first_of_run(sorted_values: pa.ChunkedArray) -> pa.Array:
    """Mark the first element of each run of equal values in a sorted array."""
    values = sorted_values.combine_chunks() if isinstance(sorted_values, pa.ChunkedArray) else sorted_values
    if len(values) == 0:
        return pa.array([], pa.bool_())
    changed = pc.not_equal(values.slice(1), values.slice(0, len(values) - 1))
    return pa.concat_arrays([pa.array([True]), changed.cast(pa.bool_())])
