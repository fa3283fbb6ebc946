"""Materialized views: a table version written as immutable, sharded training files plus ``manifest.json``.

``materialize`` reads one Delta version (filtered by ``where``, split and synthetic rows), shapes each row into a
training format (``dctp_tasks.export.formats``) and writes ``data/{split}-{index:05d}.{ext}`` under the output root,
a local folder or ``s3://…``, with the version's dataset card as ``README.md``. The manifest lists every file with
its rows, bytes and sha256, the options, the rows each format could not express, and the version's lineage (runs and
config hashes of each date).

Same version, same options: same bytes. Each finished shard is recorded under ``_progress/`` before the next is
started, so a run that was interrupted resumes where it stopped: shards already written are checked and kept, never
written twice. The manifest comes last; a folder without one is an unfinished view.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import dctp_tasks
from dctp_tasks.config import PipelineConfig
from dctp_tasks.export.card import build_card
from dctp_tasks.export.delta import dataset_dir, open_table
from dctp_tasks.export.formats import (
    FormatOptions,
    check_format,
    expressible,
    file_extension,
    json_lines,
    needed_columns,
)
from dctp_tasks.export.lineage import version_lineage
from dctp_tasks.export.where import parse_where
from dctp_tasks.stats import Timer
from dctp_tasks.storage import Storage, check_name

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CARD = "README.md"
"""The dataset card, where Hugging Face looks for it: its ``configs`` name the view's files per split."""
PROGRESS = "_progress"
DATA = "data"
SPLITS = ("train", "validation", "test")
DEFAULT_SHARD_ROWS = 100_000
ROW_GROUP_ROWS = 10_000
"""Rows per Parquet row group: a few MB of text, what streaming readers (``datasets``, DuckDB) fetch at once."""
PARQUET_CODECS = {"zstd": "zstd", "gzip": "gzip", "none": "none"}


@dataclass(frozen=True)
class ViewSpec:
    """What a view holds and how it is written; its hash names the view in the manifest and progress records."""

    format: str
    split: str | None = None
    where: str | None = None
    shard_rows: int = DEFAULT_SHARD_ROWS
    compression: str = "zstd"
    include_synthetic: bool = True
    sample: int | None = None
    """Materialize a weighted sample of this many rows (with replacement, by ``sampling_weight``)."""
    seed: int = 0
    options: FormatOptions = field(default_factory=FormatOptions)

    def __post_init__(self) -> None:
        check_format(self.format, self.compression)
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.shard_rows < 1:
            raise ValueError(f"shard rows must be at least 1, got {self.shard_rows}")
        if self.sample is not None and self.sample < 1:
            raise ValueError(f"sample size must be at least 1, got {self.sample}")


class ViewExists(ValueError):
    """The output already holds another view (or another view's unfinished shards): views are immutable."""


def materialize(storage: Storage, name: str, version: int | None, out: Storage, spec: ViewSpec, *,
                config: PipelineConfig | None = None) -> dict:
    """Write version ``version`` (default the latest) of table ``name`` as the view ``spec`` under ``out``; return
    its manifest. A finished view of the same spec is returned as it is; a different one is refused."""
    batch_size = (config or PipelineConfig()).batch_size
    table = open_table(storage, name, version)
    version = table.version()
    dataset = _ordered(table.to_pyarrow_dataset())
    view = {"dataset": name, "table": storage.uri(dataset_dir(name)), "version": version,
            "code_version": dctp_tasks.__version__, **_spec_dict(spec)}
    view_id = hashlib.sha256(orjson.dumps(view, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]
    filter_ = _filter(spec, dataset.schema)  # a bad --where fails before anything is looked at or written
    finished = _finished(out, view_id)
    if finished is not None:
        log.info("view %s of %s version %d is already materialized at %s", view_id, name, version, out.root)
        return finished
    done = _progress(out, view_id)
    columns = needed_columns(spec.format, spec.options, dataset.schema)
    skipped: Counter[str] = Counter()
    with Timer() as timer:
        counts = _sample_counts(dataset, spec, filter_, columns, batch_size) if spec.sample else None
        writers: dict[str, _ShardWriter] = {}
        position, matched = 0, 0
        for batch in _scan(dataset, columns, filter_, batch_size):
            rows = pa.Table.from_batches([batch])
            matched += rows.num_rows
            rows, reasons = _expressible(rows, spec.format)
            skipped.update(reasons)
            if counts is not None:
                repeats = counts[position:position + rows.num_rows]
                position += rows.num_rows
                rows = rows.take(pa.array(np.repeat(np.arange(rows.num_rows), repeats)))
            for split, part in _by_split(rows):
                if split not in writers:
                    writers[split] = _ShardWriter(out, split, spec, dataset.schema if columns is None else None,
                                                  done, view_id)
                writers[split].write(part)
        files = [record for split in sorted(writers, key=_split_order) for record in writers[split].close()]
    manifest = {
        **view, "view_id": view_id,
        "rows": sum(f["rows"] for f in files),
        "splits": {s: sum(f["rows"] for f in files if f["split"] == s) for s in sorted(writers, key=_split_order)},
        "matched_rows": matched,
        "skipped": dict(sorted(skipped.items())),
        "files": [{k: v for k, v in f.items() if k != "view_id"} for f in files],
        "lineage": version_lineage(storage, name, version),
    }
    manifest["config_hashes"] = sorted({d["config_hash"] for d in manifest["lineage"].values()
                                        if d.get("config_hash")})
    out.write_bytes(out.path(CARD), build_card(storage, name, version, config or PipelineConfig(),
                                               data_files=data_files(manifest)).encode())
    out.write_bytes(out.path(MANIFEST), orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    out.delete_dir(PROGRESS)
    reused = sum(w.reused for w in writers.values())
    log.info("materialized %s version %d as %s: %d rows in %d files (%d kept from an interrupted run) in %.1f s",
             name, version, spec.format, manifest["rows"], len(files), reused, timer.seconds)
    return manifest


def read_manifest(out: Storage) -> dict:
    """Return the manifest of the view at ``out``; raise ``FileNotFoundError`` when none is finished there."""
    return orjson.loads(out.read_bytes(out.path(MANIFEST)))


def data_files(manifest: dict) -> dict[str, list[str]]:
    """Return ``{split: [file paths relative to the view]}``, the ``data_files`` readers and cards name."""
    files: dict[str, list[str]] = {}
    for record in manifest["files"]:
        files.setdefault(record["split"], []).append(record["path"])
    return files


def _spec_dict(spec: ViewSpec) -> dict:
    data = asdict(spec)
    data["options"] = asdict(spec.options)
    return data


def _ordered(dataset: ds.FileSystemDataset) -> ds.FileSystemDataset:
    """The same dataset with its files in path order, so every run reads the rows in the same order."""
    fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    return ds.FileSystemDataset(fragments, dataset.schema, dataset.format, filesystem=dataset.filesystem)


def _scan(dataset: ds.Dataset, columns: list[str] | None, filter_: pc.Expression | None,
          batch_size: int) -> Iterator[pa.RecordBatch]:
    # A little read-ahead keeps the disk busy; the default (16 batches of 4 files) would hold ~1 GB of text.
    return dataset.to_batches(columns=columns, filter=filter_, batch_size=batch_size, batch_readahead=2,
                              fragment_readahead=1)


def _filter(spec: ViewSpec, schema: pa.Schema) -> pc.Expression | None:
    parts = []
    if spec.where:
        parts.append(parse_where(spec.where, schema))
    if spec.split is not None:
        parts.append(pc.field("split") == spec.split)
    if not spec.include_synthetic and "synthetic" in schema.names:
        parts.append(pc.field("synthetic").is_null() | (pc.field("synthetic") == pc.scalar(False)))
    result = None
    for part in parts:
        result = part if result is None else result & part
    return result


def _expressible(rows: pa.Table, fmt: str) -> tuple[pa.Table, dict[str, int]]:
    """Return the rows ``fmt`` can write and the count of the others by reason (rows with no split included)."""
    reasons: dict[str, int] = {}
    mask, reason = expressible(rows, fmt)
    no_split = pc.is_null(rows.column("split"))
    reasons["no_split"] = pc.sum(no_split).as_py() or 0
    if reason is not None:
        reasons[reason] = pc.sum(pc.and_(pc.invert(mask), pc.invert(no_split))).as_py() or 0
    kept = pc.and_(mask, pc.invert(no_split))
    return rows.filter(kept), {k: v for k, v in reasons.items() if v}


def _sample_counts(dataset: ds.Dataset, spec: ViewSpec, filter_: pc.Expression | None, columns: list[str] | None,
                   batch_size: int) -> np.ndarray:
    """Return how often each writable row (in reading order) is drawn: ``spec.sample`` draws with replacement,
    each row's chance proportional to its ``sampling_weight`` (1.0 where unset)."""
    weights = []
    for batch in _scan(dataset, columns, filter_, batch_size):
        rows, _ = _expressible(pa.Table.from_batches([batch]), spec.format)
        column = rows.column("sampling_weight") if "sampling_weight" in rows.column_names else None
        weights.append(np.ones(rows.num_rows) if column is None else
                       column.fill_null(1.0).to_numpy().astype(np.float64))
    w = np.concatenate(weights) if weights else np.zeros(0)
    if w.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("cannot sample by sampling_weight: weights must be finite, non-negative and not all zero")
    drawn = np.random.default_rng(spec.seed).choice(w.size, size=spec.sample, replace=True, p=w / w.sum())
    return np.bincount(drawn, minlength=w.size)


def _by_split(rows: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    splits = rows.column("split")
    for split in sorted(pc.unique(splits).to_pylist(), key=_split_order):
        yield check_name(split, "split"), rows.filter(pc.equal(splits, split))


def _split_order(split: str) -> tuple[int, str]:
    return (SPLITS.index(split) if split in SPLITS else len(SPLITS), split)


def _finished(out: Storage, view_id: str) -> dict | None:
    try:
        manifest = read_manifest(out)
    except FileNotFoundError:
        return None
    if manifest.get("view_id") != view_id:
        raise ViewExists(f"{out.root} already holds view {manifest.get('view_id')} ({manifest.get('format')} of "
                         f"version {manifest.get('version')}); views are immutable: choose another output")
    return manifest


def _progress(out: Storage, view_id: str) -> dict[str, dict]:
    """Return the shards an interrupted run of this view finished, by path; refuse another view's leftovers."""
    done = {}
    for path in out.list_files(PROGRESS, published=False):
        record = out.read_json(path)
        if record.get("view_id") != view_id:
            raise ViewExists(f"{out.root} holds unfinished shards of another view ({record.get('view_id')}): "
                             f"delete {out.uri(PROGRESS)} and {out.uri(DATA)}, or choose another output")
        done[record["path"]] = record
    return done


class _ShardWriter:
    """Write one split's rows as shards of ``spec.shard_rows`` rows, skipping shards an earlier run finished."""

    def __init__(self, out: Storage, split: str, spec: ViewSpec, schema: pa.Schema | None, done: dict[str, dict],
                 view_id: str) -> None:
        self.out, self.split, self.spec, self.schema = out, split, spec, schema
        self.done, self.view_id = done, view_id
        self.records: list[dict] = []
        self.reused = 0
        self._start()

    def _start(self) -> None:
        index = len(self.records)
        extension = file_extension(self.spec.format, self.spec.compression)
        self.path = posixpath.join(DATA, f"{self.split}-{index:05d}.{extension}")
        self.rows = 0
        self.skip = self.path in self.done and self._intact(self.done[self.path])
        self.pending: list[pa.Table] = []
        self.buffer = pa.BufferOutputStream()
        self.stream = self.parquet = None
        if self.skip:
            return
        if self.spec.format == "parquet":
            self.parquet = pq.ParquetWriter(self.buffer, self.schema,
                                            compression=PARQUET_CODECS[self.spec.compression])
        elif self.spec.compression != "none":
            self.stream = pa.CompressedOutputStream(self.buffer, self.spec.compression)
        else:
            self.stream = self.buffer

    def _intact(self, record: dict) -> bool:
        info = self.out.fs.get_file_info(self.out.path(record["path"]))
        return info.size == record["bytes"]

    def write(self, rows: pa.Table) -> None:
        while rows.num_rows:
            take = min(rows.num_rows, self.spec.shard_rows - self.rows)
            self._append(rows.slice(0, take))
            rows = rows.slice(take)
            if self.rows == self.spec.shard_rows:
                self._finish()
                self._start()

    def close(self) -> list[dict]:
        if self.rows:
            self._finish()
        return self.records

    def _append(self, rows: pa.Table) -> None:
        self.rows += rows.num_rows
        if self.skip:
            return
        if self.parquet is not None:  # whole row groups of ROW_GROUP_ROWS, however the input was batched
            self.pending.append(rows)
            while sum(t.num_rows for t in self.pending) >= ROW_GROUP_ROWS:
                pending = pa.concat_tables(self.pending)
                self.parquet.write_table(pending.slice(0, ROW_GROUP_ROWS), row_group_size=ROW_GROUP_ROWS)
                self.pending = [pending.slice(ROW_GROUP_ROWS)]
        else:
            self.stream.write(json_lines(rows, self.spec.format, self.spec.options))

    def _finish(self) -> None:
        if self.skip:
            self.records.append(self.done[self.path])
            self.reused += 1
            return
        if self.parquet is not None:
            if self.pending:
                self.parquet.write_table(pa.concat_tables(self.pending), row_group_size=ROW_GROUP_ROWS)
            self.parquet.close()
        elif self.stream is not self.buffer:
            self.stream.close()
        data = self.buffer.getvalue().to_pybytes()
        record = {"path": self.path, "split": self.split, "rows": self.rows, "bytes": len(data),
                  "sha256": hashlib.sha256(data).hexdigest(), "view_id": self.view_id}
        self.out.write_bytes(self.out.path(self.path), data)
        # The record makes the shard final: written after the file, so a record always names a whole file.
        self.out.write_bytes(self.out.path(PROGRESS, posixpath.basename(self.path) + ".json"), orjson.dumps(record))
        self.records.append(record)
