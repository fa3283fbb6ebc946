"""Apply a dedup stage's per-row verdicts: survivors to the stage output, duplicates to the ledger, batch by batch.

``verdicts`` holds, in the input's file order, ``position`` (index into ``duplicate_of`` / ``detail`` for a
duplicate, -1 for a survivor) and those two Arrow arrays — a few integers per row, however large the day.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import dctp_tasks
from dctp_tasks.dedup.report import DuplicateRates
from dctp_tasks.ledger import RejectWriter
from dctp_tasks.publish import Publication
from dctp_tasks.records import append_step, with_column
from dctp_tasks.staging import REJECTS, ROWS
from dctp_tasks.storage import Storage


def survivor_rank(doc_ids: pa.Array, orders: np.ndarray, lengths: np.ndarray, survivor: str) -> np.ndarray:
    """Return each row's rank (0 = survives first): earliest ``orders`` then smallest ``doc_id``, or the longest
    text first when ``survivor`` is ``longest``."""
    keys = {"order": orders, "doc_id": doc_ids}
    sort_keys = [("order", "ascending"), ("doc_id", "ascending")]
    if survivor == "longest":
        keys = {"length": lengths, **keys}
        sort_keys.insert(0, ("length", "descending"))
    perm = pc.sort_indices(pa.table(keys), sort_keys=sort_keys).to_numpy()
    rank = np.empty(len(perm), dtype=np.int64)
    rank[perm] = np.arange(len(perm))
    return rank


def row_thresholds(domains: pa.Array, default: float, by_domain: dict[str, float]) -> np.ndarray:
    """Return each row's threshold: its domain's override, or ``default``."""
    thresholds = np.full(len(domains), default, dtype=np.float64)
    for name, value in by_domain.items():
        thresholds[pc.fill_null(pc.equal(domains, name), False).to_numpy(zero_copy_only=False)] = value
    return thresholds


@dataclass
class Applied:
    total: int
    kept: int
    dropped_by_reason: Counter[str]
    rates: DuplicateRates


def apply_verdicts(storage: Storage, dt: str, stage: str, reason: str, in_dir: str, out: Publication, *,
                   position: np.ndarray, duplicate_of: pa.Array, detail: pa.Array, step_params: str,
                   batch_size: int) -> Applied:
    """Write the survivors of ``in_dir`` to ``out``'s rows (lineage gets ``stage``) and the duplicates to its
    rejects."""
    rates = DuplicateRates()
    total = 0
    with out.writer(ROWS, schema=storage.parquet_schema(in_dir)) as writer, \
            RejectWriter(storage, out.sub(REJECTS), dt, stage) as rejects:
        for batch in storage.iter_batches(in_dir, batch_size=batch_size):
            rows = position[total:total + batch.num_rows]
            total += batch.num_rows
            is_dup = pa.array(rows >= 0)
            take = pa.array(rows[rows >= 0])
            table = pa.Table.from_batches([batch])
            rates.add(table, is_dup)
            dups = table.filter(is_dup)
            rejects.add_table(pa.table({
                "doc_id": dups.column("doc_id"), "source": dups.column("source"),
                "outcome": pa.array(["duplicate"] * len(take), pa.string()),
                "reason": pa.array([reason] * len(take), pa.string()),
                "duplicate_of": duplicate_of.take(take), "detail": detail.take(take),
            }).sort_by("doc_id"))
            kept = table.filter(pc.invert(is_dup))
            writer.write(with_column(kept, kept.schema.field("lineage"),
                                     append_step(kept.column("lineage"), stage, dctp_tasks.__version__, step_params)))
    return Applied(total, writer.rows, Counter(rejects.counts), rates)
