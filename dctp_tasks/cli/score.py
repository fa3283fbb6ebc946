"""``dctp score INPUT --out OUTPUT``: run quality scorers on a local JSONL, CSV or Parquet file, outside the DAG.

The output holds the input's columns plus one column per score field, ``{scorer}.{field}`` (``toxicity.toxicity``,
``heuristics.word_count``), as Parquet or CSV by its extension. Scorers see the records the pipeline would give them:
``doc_id`` is the row number, ``text`` the ``--text-column``, and ``prompt``, ``response``, ``source``, ``domain``,
``lang`` and ``lang_score`` come from the input's columns of those names (null when absent).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from dctp_tasks.config import QualityConfig, load_config
from dctp_tasks.quality.base import Scorer, ScoringContext
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

#: Record fields scorers read besides ``doc_id`` and ``text``, taken from input columns of the same name.
PASSED_COLUMNS = {"prompt": pa.string(), "response": pa.string(), "source": pa.string(), "domain": pa.string(),
                  "lang": pa.string(), "lang_score": pa.float32()}
OUTPUT_FORMATS = (".parquet", ".csv")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``dctp score`` on the ``dctp`` command's subparsers."""
    score = sub.add_parser("score", help="score a local JSONL(.gz), CSV or Parquet file with the quality scorers; "
                                         "write its columns plus {scorer}.{field} columns")
    score.add_argument("input", help="local .jsonl, .jsonl.gz, .csv or .parquet file")
    score.add_argument("--out", required=True, help="output file: .parquet or .csv")
    score.add_argument("--scorers", default=None,
                       help="comma-separated scorer names, e.g. toxicity,perplexity (default: every scorer the config "
                            "enables)")
    score.add_argument("--text-column", default="text", help="the input column holding the text (default: text)")
    score.add_argument("--batch-size", type=int, default=None, help="rows per scorer batch (default: batch_size)")
    score.add_argument("--dt", default=None,
                       help="date whose history scorers read, e.g. relevance's centroids of earlier dates "
                            "(default: today, UTC)")


def score_file(storage: Storage, dataset: str, args: argparse.Namespace) -> dict:
    """Score ``args.input`` batch by batch and write ``args.out``; return counts, scorers, seconds and a summary."""
    start = time.perf_counter()
    source, out = Path(args.input), Path(args.out)
    if not out.name.endswith(OUTPUT_FORMATS):
        raise ValueError(f"--out {out}: the output format comes from its extension; use one of {OUTPUT_FORMATS}")
    table = read_input(source)
    if args.text_column not in table.column_names:
        raise ValueError(f"{source} has no text column {args.text_column!r} (--text-column); its columns are "
                         f"{table.column_names}")
    config = load_config()
    names = [n.strip() for n in args.scorers.split(",") if n.strip()] if args.scorers else None
    scorers = select_scorers(config.quality, names)
    if not scorers:
        raise ValueError("no scorer to run: the config enables none; name some with --scorers")
    batch_size = args.batch_size or config.batch_size
    if batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {batch_size}")
    context = ScoringContext(storage, args.dt or datetime.now(UTC).strftime("%Y-%m-%d"))
    for scorer in scorers:
        scorer.prepare(context)
    score_columns = [pa.field(f"{s.name}.{f.name}", f.dtype) for s in scorers for f in s.fields]
    kept = table.drop_columns([f.name for f in score_columns if f.name in table.column_names])
    schema = pa.schema(list(kept.schema) + score_columns)
    csv = out.name.endswith(".csv")
    if csv:
        schema = pa.schema([pa.field(f.name, pa.string()) if _nested(f.type) else f for f in schema])
    out.parent.mkdir(parents=True, exist_ok=True)
    with _open_writer(out, schema) as writer:
        if not table.num_rows:
            writer.write_table(schema.empty_table())
        for offset in range(0, table.num_rows, batch_size):
            records = scorer_batch(table.slice(offset, batch_size), args.text_column, offset)
            arrays = list(kept.slice(offset, batch_size).columns)
            for scorer in scorers:
                arrays += scorer.to_struct(scorer.score(records)).flatten()
            if csv:
                arrays = [_as_json(a) if _nested(a.type) else a for a in arrays]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
    seconds = round(time.perf_counter() - start, 2)
    embedded = [lookup.stats for lookup in context.extra.get("embeddings", {}).values()]
    summary = (f"scored {table.num_rows:,} rows with {', '.join(s.name for s in scorers)} in {seconds:.1f} s "
               f"-> {out}")
    return {"input": str(source), "output": str(out), "rows": table.num_rows, "scorers": [s.name for s in scorers],
            "columns": [f.name for f in score_columns], "seconds": seconds,
            "embeddings_encoded": sum(e["encoded"] for e in embedded), "summary": summary}


def read_input(path: Path) -> pa.Table:
    """Read a local JSON Lines (optionally gzipped), CSV or Parquet file."""
    if not path.is_file():
        raise FileNotFoundError(f"input {path} does not exist")
    name = path.name.lower()
    if name.endswith(".parquet"):
        return pq.read_table(path)
    if name.endswith((".csv", ".csv.gz")):
        # Free-text columns hold quoted newlines.
        return pacsv.read_csv(path, parse_options=pacsv.ParseOptions(newlines_in_values=True))
    if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz", ".ndjson")):
        import pyarrow.json as pajson

        return pajson.read_json(path)
    raise ValueError(f"input {path}: unknown format; use .jsonl, .jsonl.gz, .csv or .parquet")


def select_scorers(quality: QualityConfig, names: list[str] | None) -> list[Scorer]:
    """Return the named scorers, in that order, with the config's settings (None: every enabled scorer).

    A named scorer runs even when the config disables it; unknown names fail with the valid ones.
    """
    from dctp_tasks.quality.registry import BUILTIN, CLASSIFIER_PREFIX, build_scorers

    if names is None:
        return build_scorers(quality)
    names = list(dict.fromkeys(names))
    valid = [*BUILTIN, *(CLASSIFIER_PREFIX + c for c in quality.classifiers)]
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"--scorers: unknown scorer {', '.join(unknown)}; valid scorers are {', '.join(valid)}")

    def settings(value: dict | None) -> dict:
        return {k: v for k, v in (value or {}).items() if k != "enabled"}

    trained = [n.removeprefix(CLASSIFIER_PREFIX) for n in names if n not in BUILTIN]
    chosen = QualityConfig(scorers={n: settings(quality.scorers.get(n)) for n in names if n in BUILTIN},
                           classifiers={n: settings(quality.classifiers[n]) for n in trained})
    by_name = {s.name: s for s in build_scorers(chosen)}
    return [by_name[n] for n in names]


def scorer_batch(table: pa.Table, text_column: str, offset: int) -> pa.RecordBatch:
    """Return the record batch scorers read: row-number ``doc_id``, ``text`` and the passed columns or nulls.

    Row numbers never collide with the pipeline's ``{source}/{id}`` doc ids, so no stored embedding is mistaken
    for a row's.
    """
    n = table.num_rows
    text = table.column(text_column)
    text = pc.fill_null(text if text.type == pa.string() else pc.cast(text, pa.string()), "")
    arrays = {"doc_id": pa.array([str(offset + i) for i in range(n)], pa.string()), "text": text}
    for name, dtype in PASSED_COLUMNS.items():
        if name in table.column_names:
            try:
                arrays[name] = pc.cast(table.column(name), dtype)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"input column {name!r} ({table.column(name).type}) is not {dtype}: {exc}") from exc
        else:
            arrays[name] = pa.nulls(n, dtype)
    return pa.table(arrays).combine_chunks().to_batches()[0]


def _nested(dtype: pa.DataType) -> bool:
    return pa.types.is_nested(dtype)


def _as_json(array: pa.Array | pa.ChunkedArray) -> pa.Array:
    """CSV has no nested values: write lists and structs as JSON text."""
    return pa.array([None if v is None else json.dumps(v, default=str) for v in array.to_pylist()], pa.string())


@contextmanager
def _open_writer(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter | pacsv.CSVWriter]:
    """Yield a writer of ``schema`` tables to ``path``: CSV for ``.csv``, else Parquet; closed on exit."""
    writer = pacsv.CSVWriter(str(path), schema) if path.name.endswith(".csv") else \
        pq.ParquetWriter(str(path), schema, compression="zstd")
    try:
        yield writer
    finally:
        writer.close()
