"""The one Arrow schema every stage reads and writes, and vectorised helpers over it.

Stages add columns (``lang``, ``content_hash``, ``split`` …); none removes one. Dropped rows leave
the record stream for the ledger (``dctp_tasks.ledger``).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

STEP_TYPE = pa.struct([("name", pa.string()), ("version", pa.string()), ("params_hash", pa.string())])
LINEAGE_TYPE = pa.struct([("parents", pa.list_(pa.string())), ("steps", pa.list_(STEP_TYPE))])

#: Columns ingest produces; every later stage keeps them.
CORE_SCHEMA = pa.schema(
    [
        ("doc_id", pa.string()),
        ("text", pa.string()),
        ("prompt", pa.string()),
        ("response", pa.string()),
        ("source", pa.string()),
        ("domain", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("meta", pa.string()),
        ("dt", pa.string()),
        ("synthetic", pa.bool_()),
        ("sampling_weight", pa.float64()),
        ("lineage", LINEAGE_TYPE),
    ]
)

#: The ``source`` of every generated row: no real source's credibility or weight ever counts one.
SYNTHETIC_SOURCE = "synthetic"

#: Columns added by the spine's stages, in order.
NORMALIZED_FIELDS = [pa.field("lang", pa.string()), pa.field("lang_score", pa.float32())]
DEDUP_FIELDS = [pa.field("content_hash", pa.string())]
EXPORT_FIELDS = [pa.field("split", pa.string())]

NORMALIZED_SCHEMA = pa.schema(list(CORE_SCHEMA) + NORMALIZED_FIELDS)
DEDUPED_SCHEMA = pa.schema(list(NORMALIZED_SCHEMA) + DEDUP_FIELDS)
EXPORT_SCHEMA = pa.schema(list(DEDUPED_SCHEMA) + EXPORT_FIELDS)


def sha1_hex(data: bytes) -> str:
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()


def derive_doc_id(source: str, source_id: str | None, raw_text: str) -> str:
    """Return ``{source}/{id}`` when the input has an id, else ``{source}/sha1:{hash of raw text}``."""
    if source_id is not None and source_id != "":
        return f"{source}/{source_id}"
    return f"{source}/sha1:{sha1_hex(raw_text.encode('utf-8', 'surrogatepass'))}"


def content_hashes(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Return the 128-bit BLAKE2b hex digest of each text (exact-duplicate key)."""
    values = texts.to_pylist()
    return pa.array(
        [hashlib.blake2b(v.encode("utf-8"), digest_size=16).hexdigest() for v in values], type=pa.string()
    )


def split_for(doc_ids: pa.Array | pa.ChunkedArray, validation_fraction: float, test_fraction: float) -> pa.Array:
    """Assign ``train``/``validation``/``test`` from a hash of ``doc_id``: stable across versions and runs."""
    buckets = np.fromiter(
        (int.from_bytes(hashlib.sha1(d.encode(), usedforsecurity=False).digest()[:8], "big") % 10_000
         for d in doc_ids.to_pylist()),
        dtype=np.int64,
        count=len(doc_ids),
    )
    val_cut = int(round(validation_fraction * 10_000))
    test_cut = val_cut + int(round(test_fraction * 10_000))
    labels = np.where(buckets < val_cut, "validation", np.where(buckets < test_cut, "test", "train"))
    return pa.array(labels, type=pa.string())


def params_hash(params: dict) -> str:
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def empty_lineage(n: int) -> pa.Array:
    """Return ``n`` lineage structs with no parents and no steps."""
    offsets = pa.array(np.zeros(n + 1, dtype=np.int32))
    parents = pa.ListArray.from_arrays(offsets, pa.array([], pa.string()))
    steps = pa.ListArray.from_arrays(offsets, pa.array([], STEP_TYPE))
    return pa.StructArray.from_arrays([parents, steps], fields=list(LINEAGE_TYPE))


def append_step(lineage: pa.Array | pa.ChunkedArray, name: str, version: str, params: str) -> pa.Array:
    """Append one processing step to every row's lineage, without a Python loop over rows."""
    if isinstance(lineage, pa.ChunkedArray):
        lineage = lineage.combine_chunks()
    n = len(lineage)
    steps = lineage.field("steps")
    parents = lineage.field("parents")
    if steps.offset:  # a sliced array: rebase so offsets index the values we take
        steps = pa.concat_arrays([steps])
    offsets = steps.offsets.to_numpy().astype(np.int64)
    old_values = steps.values
    new_offsets = offsets + np.arange(n + 1, dtype=np.int64)
    total = int(new_offsets[-1])
    # Each row's old steps keep their order; the new step lands in the last slot of the row.
    take = np.empty(total, dtype=np.int64)
    is_new = np.zeros(total, dtype=bool)
    is_new[new_offsets[1:] - 1] = True
    take[~is_new] = np.arange(offsets[0], offsets[-1], dtype=np.int64)
    take[is_new] = len(old_values)
    step = pa.array([{"name": name, "version": version, "params_hash": params}], STEP_TYPE)
    values = pa.concat_arrays([old_values, step]).take(pa.array(take))
    new_steps = pa.ListArray.from_arrays(pa.array(new_offsets.astype(np.int32)), values)
    return pa.StructArray.from_arrays([parents, new_steps], fields=list(LINEAGE_TYPE))


def with_column(table: pa.Table | pa.RecordBatch, field: pa.Field, values: pa.Array) -> pa.Table:
    """Set ``field`` to ``values``, replacing the column if it exists."""
    if isinstance(table, pa.RecordBatch):
        table = pa.Table.from_batches([table])
    index = table.schema.get_field_index(field.name)
    if index >= 0:
        return table.set_column(index, field, values)
    return table.append_column(field, values)


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Order and cast ``table`` to ``schema``, keeping extra columns stages added after it."""
    extra = [name for name in table.column_names if name not in schema.names]
    columns = [table.column(f.name).cast(f.type) if f.name in table.column_names
               else pa.nulls(len(table), f.type) for f in schema]
    fields = list(schema) + [table.schema.field(name) for name in extra]
    return pa.Table.from_arrays(columns + [table.column(name) for name in extra], schema=pa.schema(fields))


def text_lengths(texts: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return pc.utf8_length(texts).to_numpy(zero_copy_only=False)
