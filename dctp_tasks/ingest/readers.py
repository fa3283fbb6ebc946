"""Turn one landing file (JSONL, JSONL.gz, CSV, Parquet) or a PostgreSQL query into raw rows or errors.

A reader yields ``RawRow(line, data)`` for each row it could parse and ``BadRow(line, reason, detail)``
for each it could not; it never raises for bad input, so one broken file cannot stop a day. It does raise when
the storage fails (a file that cannot be opened or read to its end), so the task is retried instead.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from dctp_tasks.config import PostgresSourceConfig
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)

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
    """Yield the rows of the landing file ``path`` and, for what cannot be a row, ``BadRow``s naming why.

    Bad content (a malformed line, a truncated gzip stream, a corrupt Parquet file) becomes ``BadRow``s. An error
    of the storage itself (opening, reading, seeking or sizing the file: an S3 5xx, a connection reset) is raised
    unchanged, so the task is retried; the rows yielded before it are then not a complete file.
    """
    fmt = file_format(path)
    if fmt is None:
        yield BadRow(0, "unsupported_format", f"no reader for {path.rsplit('/', 1)[-1]!r}; "
                                                f"expected one of {', '.join(SUPPORTED_SUFFIXES)}")
        return
    if storage.scheme == "s3":
        stream = storage.download_verified(path)  # S3 may hand back damaged bytes without an error: check them
    elif fmt == "parquet":
        stream = storage.fs.open_input_file(path)
    else:
        stream = storage.fs.open_input_stream(path, compression=None)
    yield from read_stream(stream, path, batch_size)


def read_stream(stream: pa.NativeFile, name: str, batch_size: int) -> Iterator[Event]:
    """Yield the events of one open file (``read_file``'s work after opening); closes ``stream``.

    ``name`` picks the format by its suffix. An error raised by ``stream`` is re-raised as it was, and no event
    is yielded after it: whatever the format reader made of the failed read is not the file's fault.
    """
    fmt = file_format(name)
    if fmt is None:
        raise ValueError(f"no reader for {name!r}; expected one of {', '.join(SUPPORTED_SUFFIXES)}")
    reader = {"jsonl": _read_jsonl, "csv": _read_csv, "parquet": _read_parquet}[fmt]
    with _GuardedStream(stream) as guard:
        # Parquet reads whole column chunks at known offsets; the text formats read forwards, and a 1 MiB buffer
        # turns their small reads (8 KiB for CSV) into few large ones, which matters on S3 (one GET per read).
        source = guard if fmt == "parquet" else io.BufferedReader(guard, buffer_size=_CHUNK)
        events = reader(source, name.lower().endswith(".gz"), batch_size)
        try:
            for event in events:
                if guard.failure is not None:
                    break
                yield event
        except _StorageFailed:
            pass  # the original error is raised below
        finally:
            events.close()
        if guard.failure is not None:
            raise guard.failure


class _StorageFailed(Exception):
    """The storage stream under a reader failed. Not an ``OSError``, so no format reader mistakes it for bad data."""


_T = TypeVar("_T")


class _GuardedStream(io.RawIOBase):
    """A read-only view of a storage stream that remembers the first error the stream raised.

    gzip, zlib and pyarrow's Parquet reader raise ``OSError`` for corrupt data, which is also what pyarrow raises
    for a failed S3 read; keeping the storage's own error here, raised onwards as ``_StorageFailed``, is what lets
    ``read_stream`` tell the two apart. After a failure every call fails again.
    """

    def __init__(self, stream: pa.NativeFile) -> None:
        super().__init__()
        self._stream = stream
        self.failure: Exception | None = None

    def _call(self, method: Callable[..., _T], *args: Any) -> _T:
        if self.failure is not None:
            raise _StorageFailed(str(self.failure)) from self.failure
        try:
            return method(*args)
        except Exception as exc:
            self.failure = exc
            raise _StorageFailed(str(exc)) from exc

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._stream.seekable()

    def _require_seekable(self) -> None:
        # A capability answer, not a storage failure: BufferedReader asks tell() and ignores the refusal.
        if not self._stream.seekable():
            raise io.UnsupportedOperation("the storage stream is not seekable")

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._require_seekable()
        return self._call(self._stream.seek, offset, whence)

    def tell(self) -> int:
        self._require_seekable()
        return self._call(self._stream.tell)

    def size(self) -> int:
        return self._call(self._stream.size)

    def read(self, size: int = -1) -> bytes:
        return self._call(self._stream.read, None if size is None or size < 0 else size)

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer) -> int:
        return self._call(self._stream.readinto, buffer)

    def read_buffer(self, size: int) -> pa.Buffer:
        """Read without a copy; pyarrow's Parquet reader uses this when a Python file has it."""
        return self._call(self._stream.read_buffer, size)

    def close(self) -> None:
        if not self.closed:
            try:
                self._stream.close()
            finally:
                super().close()


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


# What a cut or corrupt gzip stream raises (BadGzipFile is an OSError; a failed storage read is not caught here).
_TRUNCATION_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


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
        # One row group per call: with pre_buffer (on by default) a single call would cache the whole file.
        for group in range(parquet.num_row_groups):
            for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group]):
                for data in batch.to_pylist():
                    row += 1
                    yield RawRow(row, data)
    except (pa.ArrowException, OSError) as exc:
        yield BadRow(row + 1, "truncated_file", f"Parquet data ends early after row {row}: {exc}")


def sql_module(connection):
    # The postgres provider hands out psycopg2 or psycopg (3) connections; each needs its own sql module.
    if type(connection).__module__.startswith("psycopg2"):
        from psycopg2 import sql
    else:
        from psycopg import sql
    return sql


def read_postgres(connection, schema: str, table: str, timestamp_column: str, start: datetime, end: datetime,
                  batch_size: int, *, ingested_at_column: str | None = None) -> Iterator[Event]:
    """Yield the rows of ``schema.table`` whose ``timestamp_column`` lies in ``[start, end)``, in a stable order.

    With ``ingested_at_column`` (a column the table fills at insert time) the rows whose ingestion time lies in
    the interval are yielded instead, whatever their ``timestamp_column`` says: a row inserted after its day ran,
    or one with a NULL timestamp, is then read by the run of the day it arrived.
    ``connection`` is a psycopg2 or psycopg connection; a server-side cursor keeps memory bounded.
    """
    sql = sql_module(connection)
    query = sql.SQL("SELECT * FROM {}.{} WHERE {ts} >= %s AND {ts} < %s ORDER BY {ts}, 1").format(
        sql.Identifier(schema), sql.Identifier(table), ts=sql.Identifier(ingested_at_column or timestamp_column)
    )
    with connection.cursor(name=f"dctp_ingest_{table}") as cursor:
        cursor.itersize = batch_size
        cursor.execute(query, (start, end))
        columns: list[str] | None = None
        for line, values in enumerate(cursor, start=1):
            if columns is None:
                columns = [d[0] for d in cursor.description]
            yield RawRow(line, dict(zip(columns, values, strict=True)))


def table_has_rows(connection, pg: PostgresSourceConfig, start: datetime, end: datetime) -> bool:
    """Return whether ``pg``'s table has a row a run of ``[start, end)`` would read (one indexed ``LIMIT 1``)."""
    sql = sql_module(connection)
    query = sql.SQL("SELECT 1 FROM {}.{} WHERE {ts} >= %s AND {ts} < %s LIMIT 1").format(
        sql.Identifier(pg.schema_name), sql.Identifier(pg.table),
        ts=sql.Identifier(pg.ingested_at_column or pg.timestamp_column)
    )
    with connection.cursor() as cursor:
        cursor.execute(query, (start, end))
        return cursor.fetchone() is not None


def null_timestamp_rows(connection, pg: PostgresSourceConfig) -> int:
    """Count the rows of ``pg``'s table that no run reads because the column that places them in a day is NULL.

    That column is ``ingested_at_column`` when set, else ``timestamp_column``. Logs a warning naming the count
    and the fix when there are any. One ``COUNT(*)``; an index on the column answers it without a table scan.
    """
    sql = sql_module(connection)
    column = pg.ingested_at_column or pg.timestamp_column
    query = sql.SQL("SELECT count(*) FROM {}.{} WHERE {} IS NULL").format(
        sql.Identifier(pg.schema_name), sql.Identifier(pg.table), sql.Identifier(column)
    )
    with connection.cursor() as cursor:
        cursor.execute(query)
        count = int(cursor.fetchone()[0])
    if count and pg.ingested_at_column is None:
        log.warning("%d rows of %s.%s have a NULL %s, so no run ingests them; set ingested_at_column (a column "
                    "the table fills at insert time) on this source to ingest them on the day they arrive",
                    count, pg.schema_name, pg.table, column)
    elif count:
        log.warning("%d rows of %s.%s have a NULL %s (ingested_at_column), so no run ingests them; give the "
                    "column a default such as now() and NOT NULL", count, pg.schema_name, pg.table, column)
    return count
