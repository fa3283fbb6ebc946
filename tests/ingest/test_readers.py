"""A failed storage read propagates as the storage's own error; only bytes that were read and are bad quarantine."""

from __future__ import annotations

import gzip
import hashlib
import io
import zlib

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from fsspec.implementations.local import LocalFileSystem

from dctp_tasks.ingest import ingest_day
from dctp_tasks.ingest.readers import BadRow, RawRow, read_file, read_stream
from dctp_tasks.publish import is_published
from dctp_tasks.storage import Storage, staging_dir
from tests.ingest.test_ingest import DAG, DT, TEXT, csv_bytes, ingested, jsonl, land, lenient

ROWS = 20_000
CUT = 1_200_000
"""Bytes a cut file delivers: past the readers' first 1 MiB read, short of every test file's end."""


class FailingFile(io.RawIOBase):
    """A real file whose reads fail like a dropped S3 connection: the read that would pass byte ``fail_after``
    (counting every byte read so far) raises, and so does every read after it. ``None`` never fails."""

    def __init__(self, raw, fail_after: int | None) -> None:
        super().__init__()
        self.raw = raw
        self.fail_after = fail_after
        self.read_so_far = 0
        self.error = ConnectionResetError(104, "Connection reset by peer (injected)")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self.raw.seek(offset, whence)

    def tell(self) -> int:
        return self.raw.tell()

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.read_so_far += n
        if self.fail_after is not None and self.read_so_far > self.fail_after:
            raise self.error
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class FlakyLanding(pafs.FSSpecHandler):
    """A local filesystem whose landing files fail to open, or fail mid-read after ``fail_after`` bytes."""

    def __init__(self, *, fail_open: bool = False, fail_after: int | None = None) -> None:
        super().__init__(LocalFileSystem())
        self.fail_open = fail_open
        self.fail_after = fail_after
        self.errors: list[OSError] = []

    def _open(self, path: str) -> pa.NativeFile:
        if "/landing/" not in path:
            return pa.PythonFile(self.fs.open(path, mode="rb"), mode="r")
        if self.fail_open:
            self.errors.append(TimeoutError(f"connect timed out opening {path} (injected)"))
            raise self.errors[-1]
        flaky = FailingFile(self.fs.open(path, mode="rb"), self.fail_after)
        self.errors.append(flaky.error)
        return pa.PythonFile(flaky, mode="r")

    def open_input_stream(self, path: str) -> pa.NativeFile:
        return self._open(path)

    def open_input_file(self, path: str) -> pa.NativeFile:
        return self._open(path)


def _records() -> list[dict]:
    # hex digests keep the files several MiB even gzipped: a cut after the first 1 MiB read leaves rows read
    return [{"id": str(i), "text": f"{TEXT} {hashlib.blake2b(str(i).encode()).hexdigest()}"} for i in range(ROWS)]


def _file(fmt: str) -> tuple[str, bytes]:
    rows = _records()
    data = {
        "jsonl": lambda: jsonl(*rows),
        "csv": lambda: csv_bytes(["id", "text"], *[[r["id"], r["text"]] for r in rows]),
        # several row groups, so a cut after the first leaves rows read and rows unread
        "parquet": lambda: _parquet(pa.Table.from_pylist(rows), row_group_size=2_000),
    }[fmt.removesuffix(".gz")]()
    return f"a.{fmt}", gzip.compress(data) if fmt.endswith(".gz") else data


def _parquet(table: pa.Table, **kwargs) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="none", **kwargs)
    return sink.getvalue()


FORMATS = ["jsonl", "jsonl.gz", "csv", "csv.gz", "parquet"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_read_that_fails_mid_file_raises_the_storage_error_and_yields_no_bad_row(tmp_path, fmt):
    name, data = _file(fmt)
    assert len(data) > CUT
    path = tmp_path / name
    path.write_bytes(data)
    flaky = FailingFile(pafs.LocalFileSystem().open_input_file(str(path)), fail_after=CUT)

    events = []
    with pytest.raises(OSError) as raised:
        for event in read_stream(pa.PythonFile(flaky, mode="r"), name, batch_size=100):
            events.append(event)

    assert raised.value is flaky.error  # unchanged: the task's retry logic sees the storage's own error
    assert all(isinstance(e, RawRow) for e in events)
    assert 0 < len(events) < ROWS
    assert flaky.closed


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_same_file_read_whole_gives_every_row(tmp_path, fmt):
    name, data = _file(fmt)
    path = tmp_path / name
    path.write_bytes(data)
    whole = FailingFile(pafs.LocalFileSystem().open_input_file(str(path)), fail_after=None)

    events = list(read_stream(pa.PythonFile(whole, mode="r"), name, batch_size=100))

    assert [e.data["id"] for e in events] == [str(i) for i in range(ROWS)]


@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv", "parquet"])
def test_ingest_fails_on_a_landing_file_it_cannot_open_and_publishes_nothing(tmp_path, fmt):
    storage = Storage(f"file://{tmp_path}")
    land(storage, "web", *_file(fmt))
    storage.fs = pafs.PyFileSystem(handler := FlakyLanding(fail_open=True))

    with pytest.raises(TimeoutError) as raised:
        ingest_day(storage, lenient(), DAG, DT)

    assert raised.value is handler.errors[0]
    assert not is_published(storage, staging_dir(DAG, DT, "ingest"))  # no quarantine row, no partial day


@pytest.mark.parametrize("fmt", FORMATS)
def test_ingest_fails_on_a_read_cut_mid_file_then_a_rerun_reads_every_row(tmp_path, fmt):
    storage = Storage(f"file://{tmp_path}")
    name, data = _file(fmt)
    land(storage, "web", name, data)
    local = storage.fs
    storage.fs = pafs.PyFileSystem(handler := FlakyLanding(fail_after=CUT))

    with pytest.raises(ConnectionResetError) as raised:
        ingest_day(storage, lenient(), DAG, DT)

    assert raised.value is handler.errors[0]
    assert not is_published(storage, staging_dir(DAG, DT, "ingest"))
    storage.fs = local
    result = ingest_day(storage, lenient(), DAG, DT)
    assert (result.total, result.kept, result.dropped) == (ROWS, ROWS, 0)
    assert ingested(storage).column("doc_id").to_pylist() == [f"web/{i}" for i in range(ROWS)]


# -- bytes that were read whole and are bad still quarantine --------------------------------------------------------

@pytest.mark.parametrize("fmt", ["jsonl.gz", "csv.gz"])
def test_truncated_gzip_read_whole_is_quarantined_after_its_complete_rows(tmp_path, fmt):
    storage = Storage(f"file://{tmp_path}")
    name, data = _file(fmt)
    cut = data[: len(data) // 2]
    complete = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n") - (fmt == "csv.gz")  # minus a header
    path = storage.path(land(storage, "web", name, cut))

    events = list(read_file(storage, path, batch_size=100))

    *rows, last = events
    assert all(isinstance(e, RawRow) for e in rows) and 0 < len(rows) <= complete
    assert isinstance(last, BadRow) and last.reason == "truncated_file"


def test_parquet_with_a_corrupt_page_keeps_the_intact_row_groups_and_quarantines_the_rest(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    table = pa.Table.from_pylist(_records())
    data = bytearray(_parquet(table, row_group_size=1_000))
    meta = pq.ParquetFile(io.BytesIO(bytes(data))).metadata
    page = meta.row_group(2).column(1).data_page_offset  # the third row group's text page header
    data[page:page + 64] = b"\xff" * 64
    path = storage.path(land(storage, "web", "a.parquet", bytes(data)))

    events = list(read_file(storage, path, batch_size=100))

    *rows, last = events
    assert [e.data["id"] for e in rows] == [str(i) for i in range(2_000)]
    assert isinstance(last, BadRow) and (last.reason, last.line) == ("truncated_file", 2_001)
