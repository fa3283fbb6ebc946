"""Turn one landing file (JSONL, JSONL.gz, CSV, Parquet) or a PostgreSQL query into raw rows or errors.

A reader yields ``RawRow(line, data)`` for each row it could parse and ``BadRow(line, reason, detail)``
for each it could not; it never raises for bad input, so one broken file cannot stop a day.
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from dctp_tasks.storage import Storage

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz", ".csv", ".csv.gz",
                      ".parquet")
_SURROGATE = re.compile("[\udc80-\udcff]")
_CSV_FIELD_LIMIT = 2**31 - 1  # the largest csv.field_size_limit every platform's C long holds
_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class RawRow:
    line: int
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BadRow:
    line: int
    reason: str
    detail: str
    raw: bytes = b""


Event = RawRow | BadRow


def file_format(path: str) -> str | None:
    """Return ``jsonl``, ``csv`` or ``parquet`` from a file name, or ``None`` when unsupported."""
    name = path.lower()
    if name.endswith((".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".json", ".json.gz")):
        return "jsonl"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    return None


def read_file(storage: Storage, path: str, batch_size: int) -> Iterator[Event]:
    fmt = file_format(path)
    if fmt is None:
        yield BadRow(0, "unsupported_format", f"no reader for {path.rsplit('/', 1)[-1]!r}; "
                                                f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
        return
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    try:
        if fmt == "parquet":
            stream = storage.fs.open_input_file(path)
        else:
            stream = storage.fs.open_input_stream(path, compression=None)
    except OSError as exc:
        yield BadRow(0, "unreadable_file", f"cannot open: {exc}")
        return
    with stream:
        yield from reader(stream, path.lower().endswith(".gz"), batch_size)


def _decompressed(stream, gz: bool):
    return gzip.GzipFile(fileobj=stream, mode="rb") if gz else stream


def _lines(fileobj) -> Iterator[bytes]:
    """Yield complete lines without their terminator; a final unterminated line is yielded too."""
    # read1, not read: a truncated gzip member raises on the read that hits the cut, and a buffered
    # read() discards what it had already decompressed, losing the complete lines before the cut.
    read = getattr(fileobj, "read1", fileobj.read)
    pending = b""
    while True:
        chunk = read(_CHUNK)
        if not chunk:
            break
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        yield from parts
    if pending:
        yield pending


_TRUNCATION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error, OSError)


def _read_jsonl(stream, gz: bool, batch_size: int) -> Iterator[Event]:
    line_no = 0
    seen_content = False
    try:
        for raw in _lines(_decompressed(stream, gz)):
            line_no += 1
            raw = raw.rstrip(b"\r")
            if line_no == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM (Windows tools) is not part of the JSON
            if not raw.strip():
                continue  # blank lines are separators, not rows
            seen_content = True
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield BadRow(line_no, "undecodable_bytes",
                             f"invalid UTF-8 at byte {exc.start}: {raw[exc.start:exc.start + 4]!r}", raw)
                continue
            try:
                data = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                yield BadRow(line_no, "malformed_json", str(exc), raw)
                continue
            if not isinstance(data, dict):
                yield BadRow(line_no, "not_an_object", f"expected a JSON object, got {type(data).__name__}", raw)
                continue
            yield RawRow(line_no, data)
    except _TRUNCATION_ERRORS as exc:
        yield BadRow(line_no + 1, "truncated_file", f"compressed stream ends early after line {line_no}: {exc}")
        return
    if not seen_content:
        yield BadRow(0, "empty_file", "file has no rows")


def _read_csv(stream, gz: bool, batch_size: int) -> Iterator[Event]:
    # csv's default 128 KiB field limit is smaller than a long document; length is normalize's call.
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    # surrogateescape keeps undecodable bytes visible per row instead of failing the whole file
    text = io.TextIOWrapper(_decompressed(stream, gz), encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    rows = 0
    try:
        header = next(reader, None)
        if header is None:
            yield BadRow(0, "empty_file", "file is empty")
            return
        if any(_SURROGATE.search(h) for h in header):
            yield BadRow(1, "undecodable_bytes", "header is not valid UTF-8")
            return
        width = len(header)
        end_line = reader.line_num
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:  # one bad row; the reader goes on with the next line
                start_line, end_line = end_line + 1, reader.line_num
                rows += 1
                yield BadRow(start_line, "malformed_csv", str(exc))
                continue
            start_line, end_line = end_line + 1, reader.line_num
            if not values:
                continue
            rows += 1
            if len(values) != width:
                yield BadRow(start_line, "wrong_field_count", f"expected {width} fields, got {len(values)}",
                             ",".join(values).encode("utf-8", "surrogateescape"))
                continue
            if any(_SURROGATE.search(v) for v in values):
                yield BadRow(start_line, "undecodable_bytes", "row is not valid UTF-8",
                             ",".join(values).encode("utf-8", "surrogateescape"))
                continue
            yield RawRow(start_line, dict(zip(header, values, strict=True)))
    except csv.Error as exc:
        yield BadRow(reader.line_num, "malformed_csv", str(exc))
        return
    except _TRUNCATION_ERRORS as exc:
        yield BadRow(reader.line_num + 1, "truncated_file", f"compressed stream ends early: {exc}")
        return
    if rows == 0:
        yield BadRow(0, "empty_file", "CSV has a header but no rows")


def _read_parquet(stream, gz: bool, batch_size: int) -> Iterator[Event]:
    if stream.size() == 0:  # an empty upload is empty, like a 0-byte JSONL or CSV, not a corrupt file
        yield BadRow(0, "empty_file", "file is empty (0 bytes)")
        return
    try:
        parquet = pq.ParquetFile(stream)
    except (pa.ArrowException, OSError) as exc:
        yield BadRow(0, "unreadable_file", f"not a readable Parquet file: {exc}")
        return
    if parquet.metadata.num_rows == 0:
        yield BadRow(0, "empty_file", "Parquet file has no rows")
        return
    row = 0
    try:
        for batch in parquet.iter_batches(batch_size=batch_size):
            for data in batch.to_pylist():
                row += 1
                yield RawRow(row, data)
    except (pa.ArrowException, OSError) as exc:
        yield BadRow(row + 1, "truncated_file", f"Parquet data ends early after row {row}: {exc}")


def read_postgres(connection, schema: str, table: str, timestamp_column: str, start: datetime, end: datetime,
                  batch_size: int) -> Iterator[Event]:
    """Yield the rows of ``schema.table`` whose ``timestamp_column`` lies in ``[start, end)``, in a stable order.

    ``connection`` is a psycopg2 or psycopg connection; a server-side cursor keeps memory bounded.
    """
    # The postgres provider hands out psycopg2 or psycopg (3) connections; each needs its own sql module.
    if type(connection).__module__.startswith("psycopg2"):
        from psycopg2 import sql
    else:
        from psycopg import sql

    query = sql.SQL("SELECT * FROM {}.{} WHERE {ts} >= %s AND {ts} < %s ORDER BY {ts}, 1").format(
        sql.Identifier(schema), sql.Identifier(table), ts=sql.Identifier(timestamp_column)
    )
    with connection.cursor(name=f"dctp_ingest_{table}") as cursor:
        cursor.itersize = batch_size
        cursor.execute(query, (start, end))
        columns: list[str] | None = None
        for line, values in enumerate(cursor, start=1):
            if columns is None:
                columns = [d[0] for d in cursor.description]
            yield RawRow(line, dict(zip(columns, values, strict=True)))
