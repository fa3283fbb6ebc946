"""One storage layer for ``file://`` and ``s3://`` data roots: paths, Parquet I/O and Delta options.

Every stage goes through ``Storage``; nothing else knows whether the root is local or S3. Every path it builds
stays under the root: names that come from config or a trigger form (a DAG id, a dataset name) are checked
against ``NAME_PATTERN`` and a resolved path outside the root is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Options:
    """Credentials and endpoint for an S3-compatible store (resolved from ``aws_default`` by the DAG)."""

    endpoint_url: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str = "us-east-1"
    max_attempts: int = 5
    """Attempts of each S3 request before a fault reaches the caller (the SDK's standard retry: backoff with jitter);
    ``AWS_MAX_ATTEMPTS``, as the AWS SDKs and CLI name it."""

    @classmethod
    def from_env(cls) -> S3Options:
        attempts = os.environ.get("AWS_MAX_ATTEMPTS") or "5"
        if not attempts.isdigit() or int(attempts) < 1:
            raise ValueError(f"AWS_MAX_ATTEMPTS must be a whole number of at least 1, got {attempts!r}")
        return cls(
            endpoint_url=os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"),
            access_key=os.environ.get("AWS_ACCESS_KEY_ID"),
            secret_key=os.environ.get("AWS_SECRET_ACCESS_KEY"),
            session_token=os.environ.get("AWS_SESSION_TOKEN"),
            region=os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1",
            max_attempts=int(attempts),
        )

    @classmethod
    def from_connection(cls, login: str | None, password: str | None, extra: dict) -> S3Options:
        """Return the options of an Airflow ``aws`` connection (login/password or extra keys), the environment
        filling what it leaves out; ``endpoint_url`` may sit in ``extra`` or in ``extra.service_config.s3``."""
        env = cls.from_env()
        return cls(
            endpoint_url=extra.get("endpoint_url") or (extra.get("service_config") or {}).get("s3", {}).get(
                "endpoint_url") or env.endpoint_url,
            access_key=login or extra.get("aws_access_key_id") or env.access_key,
            secret_key=password or extra.get("aws_secret_access_key") or env.secret_key,
            session_token=extra.get("aws_session_token") or env.session_token,
            region=extra.get("region_name") or env.region,
            max_attempts=env.max_attempts,
        )


POINTER = "_CURRENT.json"
"""The file naming a published folder's current version (see ``dctp_tasks.publish``)."""
VERSION_PREFIX = "v-"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
"""What a name that becomes one path segment may look like (DAG ids, stage, state and dataset names)."""
DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_DOWNLOAD_CHUNK = 8 << 20
#: What pyarrow says of Parquet bytes that are not a Parquet file's (as a damaged transfer leaves them).
_UNDECODABLE = re.compile(r"magic bytes|[Tt]hrift|[Uu]nexpected end|[Cc]orrupt|[Dd]ecompress|exceeds the file size|"
                          r"[Ii]nvalid (page|column|footer|metadata)")


def data_root() -> str:
    """Return ``$DCTP_DATA_ROOT``, else ``$AIRFLOW_HOME/dctp-data`` as a ``file://`` URI (the embedded default)."""
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return os.environ.get("DCTP_DATA_ROOT") or (home / "dctp-data").absolute().as_uri()


class DamagedTransfer(OSError):
    """Bytes read from the store are not the stored object's (a transfer cut or garbled): a retry reads them again."""


class UnsafePath(ValueError):
    """A name or path would leave the data root (``..``, a slash, an absolute path)."""


def check_name(value: str, what: str) -> str:
    """Return ``value`` if it is a safe single path segment, else raise ``UnsafePath`` naming ``what``."""
    if not isinstance(value, str) or not re.match(NAME_PATTERN, value) or ".." in value:
        raise UnsafePath(f"{what} {value!r} is not a valid name: use letters, digits, '_', '.', '-' "
                         f"(pattern {NAME_PATTERN}, no '..')")
    return value


def check_date(value: str, what: str = "dt") -> str:
    """Return ``value`` if it is a ``YYYY-MM-DD`` date, else raise ``UnsafePath``."""
    if not isinstance(value, str) or not re.match(DATE_PATTERN, value):
        raise UnsafePath(f"{what} {value!r} is not a date YYYY-MM-DD")
    return value


def staging_dir(dag_id: str, dt: str, stage: str) -> str:
    """Return the per-run intermediate folder of ``stage`` (relative to the root)."""
    return f"staging/{check_name(dag_id, 'DAG id')}/dt={check_date(dt)}/{check_name(stage, 'stage')}"


def state_dir(name: str, dt: str | None = None) -> str:
    """Return a cross-run index folder, or one date's partition of it."""
    check_name(name, "state name")
    return f"state/{name}" if dt is None else f"state/{name}/dt={check_date(dt)}"


class Storage:
    """A data root (``file:///abs/dir``, a plain path, or ``s3://bucket/prefix``) and its filesystem."""

    def __init__(self, root: str, s3: S3Options | None = None) -> None:
        self._s3_client = None  # boto3, made on first use (object checks of download_verified)
        parsed = urlparse(root)
        self.scheme = parsed.scheme or "file"
        if self.scheme == "file":
            base = os.path.abspath(parsed.path if parsed.scheme else root)
            self.fs: pafs.FileSystem = pafs.LocalFileSystem()
            self.base = base
            self.root = f"file://{base}"
            self.s3 = None
        elif self.scheme == "s3":
            if not parsed.netloc:
                raise ValueError(f"S3 data root {root!r} names no bucket")
            self.s3 = s3 or S3Options.from_env()
            self.base = f"{parsed.netloc}{parsed.path}".rstrip("/")
            self.root = f"s3://{self.base}"
            self.fs = _s3_filesystem(self.s3)
        else:
            raise ValueError(f"unsupported data root {root!r}: use file://… or s3://bucket/prefix")

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # paths -----------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Return the filesystem path of ``parts`` under the root; refuse one that resolves outside it."""
        joined = posixpath.join(self.base, *[p.strip("/") for p in parts if p])
        normal = posixpath.normpath(joined)
        if normal != self.base and not normal.startswith(self.base.rstrip("/") + "/"):
            raise UnsafePath(f"{'/'.join(parts)!r} resolves to {normal}, outside the data root {self.root}")
        return joined if normal == joined else normal

    def uri(self, *parts: str) -> str:
        """Return the full URI (``file://`` or ``s3://``) of ``parts`` under the root."""
        return f"{self.scheme}://{self.path(*parts)}" if self.scheme == "s3" else f"file://{self.path(*parts)}"

    def relative(self, path: str) -> str:
        return posixpath.relpath(path, self.base)

    # listing and files -----------------------------------------------------------------------
    def list_files(self, *parts: str, recursive: bool = True, published: bool = True) -> list[str]:
        """Return the sorted file paths under ``parts`` (empty when the folder does not exist).

        A published folder (one holding a ``_CURRENT.json`` pointer) lists as its current version's files only,
        so a reader never mixes versions; ``published=False`` lists everything there is.
        """
        path = self.path(*parts)
        files = self._listing(path, recursive)
        pointer = posixpath.join(path, POINTER)
        if published and pointer in files:
            if not recursive:
                return []
            # The version named by the pointer, listed again: versions never change once published, so this
            # listing is whole however often the pointer moves meanwhile.
            return self._listing(posixpath.join(path, VERSION_PREFIX + self.read_json(pointer)["version"]), True)
        return files

    def _listing(self, path: str, recursive: bool) -> list[str]:
        selector = pafs.FileSelector(path, allow_not_found=True, recursive=recursive)
        return sorted(info.path for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File)

    def read_json(self, path: str) -> dict:
        """Read a small JSON file the pipeline wrote; on S3, bytes that do not parse are a damaged transfer."""
        data = self.read_bytes(path)
        try:
            return json.loads(data)
        except ValueError as exc:
            if self.scheme == "s3":
                raise DamagedTransfer(f"s3://{path}: {exc}") from exc
            raise

    def list_dirs(self, *parts: str) -> list[str]:
        """Return the names of the folders directly under ``parts``."""
        selector = pafs.FileSelector(self.path(*parts), allow_not_found=True, recursive=False)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.Directory)

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def delete_dir(self, *parts: str) -> None:
        """Delete a folder and everything under it, if it exists."""
        path = self.path(*parts)
        if self.fs.get_file_info(path).type == pafs.FileType.Directory:
            self.fs.delete_dir(path)

    def delete_files(self, paths: list[str]) -> None:
        for path in paths:
            self.fs.delete_file(path)

    @contextmanager
    def _open_parquet(self, path: str) -> Iterator[pa.NativeFile]:
        """Open one of the pipeline's own Parquet files; on S3, undecodable bytes are a damaged transfer.

        The pipeline wrote the file whole (publishing is atomic), so when its bytes do not decode on S3 the read
        went wrong (see ``download_verified``), and ``DamagedTransfer`` gets the task retried rather than failed.
        """
        try:
            with self.fs.open_input_file(path) as handle:
                yield handle
        except pa.ArrowInvalid as exc:
            if self.scheme == "s3" and _UNDECODABLE.search(str(exc)):
                raise DamagedTransfer(f"s3://{path}: {exc}") from exc
            raise

    def download_verified(self, path: str) -> pa.NativeFile:
        """Return a local, seekable copy of the object ``path`` whose bytes were checked against the store's record.

        An S3 response cut while its headers arrive is not always an error to the client: pyarrow (25) then returns
        the expected number of bytes of whatever was in its buffer, and botocore an empty body. So the copy's size is
        compared with the object's, and its MD5 with the ETag: an object uploaded in one request has its MD5 as ETag,
        one uploaded in N parts the MD5 of its parts' MD5s with ``-N`` (the parts' sizes are asked for). Objects
        encrypted with KMS or customer keys have other ETags: only their size is checked. A mismatch raises
        ``DamagedTransfer`` (an ``OSError``: the task is retried). A local root returns the file itself.
        """
        if self.scheme != "s3":
            return self.fs.open_input_file(path)
        head = self._head(path)
        size = int(head["ContentLength"])
        copy = tempfile.TemporaryFile(prefix="dctp-download-")
        digest, received = hashlib.md5(usedforsecurity=False), 0
        try:
            with self.fs.open_input_stream(path, compression=None) as source:
                while chunk := source.read(_DOWNLOAD_CHUNK):
                    copy.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
            if received != size:
                raise DamagedTransfer(f"s3://{path}: read {received} bytes of {size}: the download was cut")
            expected = self._etag_of(path, head, copy, digest)
            etag = str(head.get("ETag", "")).strip('"')
            if expected is not None and expected != etag:
                raise DamagedTransfer(f"s3://{path}: the bytes read do not match the stored object (ETag {etag}, read "
                                      f"{expected}): the download was damaged in transit")
        except BaseException:
            copy.close()
            raise
        copy.seek(0)
        return pa.PythonFile(copy, mode="r")

    def _etag_of(self, path: str, head: dict, copy, whole) -> str | None:
        """Return the ETag S3 would give ``copy``'s bytes (``whole``: their MD5) as ``head``'s object, or ``None``
        when it cannot tell."""
        etag = str(head.get("ETag", "")).strip('"')
        if str(head.get("ServerSideEncryption", "")).startswith("aws:kms") or head.get("SSECustomerAlgorithm"):
            return None  # their ETags are not digests of the content
        if re.fullmatch(r"[0-9a-f]{32}", etag):
            return whole.hexdigest()
        parts = re.fullmatch(r"[0-9a-f]{32}-(\d+)", etag)
        if not parts:
            return None
        count = int(parts.group(1))
        if count == 1:
            digests = [whole]
        else:  # the copy read again part by part, at the sizes the store reports for them
            sizes = [int(self._head(path, part)["ContentLength"]) for part in range(1, count + 1)]
            if sum(sizes) != int(head["ContentLength"]):
                return None  # a store that ignores PartNumber: the parts' digests cannot be rebuilt
            copy.seek(0)
            digests = []
            for size in sizes:
                digest, left = hashlib.md5(usedforsecurity=False), size
                while left > 0 and (chunk := copy.read(min(_DOWNLOAD_CHUNK, left))):
                    digest.update(chunk)
                    left -= len(chunk)
                digests.append(digest)
        return f"{hashlib.md5(b''.join(d.digest() for d in digests), usedforsecurity=False).hexdigest()}-{count}"

    def _head(self, path: str, part: int | None = None) -> dict:
        """Return S3's HEAD of the object ``path`` (of its upload part ``part``); errors as ``OSError`` kinds."""
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

        bucket, _, key = path.partition("/")
        try:
            return self._boto3().head_object(Bucket=bucket, Key=key, **({"PartNumber": part} if part else {}))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in {"404", "NoSuchKey", "NotFound"}:
                raise FileNotFoundError(f"s3://{path} does not exist") from exc
            if code in {"403", "AccessDenied"}:
                raise PermissionError(f"s3://{path}: AccessDenied") from exc
            raise OSError(f"s3://{path}: HEAD failed: {exc}") from exc
        except NoCredentialsError as exc:
            raise PermissionError(f"s3://{path}: no S3 credentials: {exc}") from exc
        except BotoCoreError as exc:  # the connection failed: transient
            raise OSError(f"s3://{path}: HEAD failed: {exc}") from exc

    def _boto3(self):
        if self._s3_client is None:
            import boto3

            self._s3_client = boto3.client(
                "s3", endpoint_url=self.s3.endpoint_url, region_name=self.s3.region,
                aws_access_key_id=self.s3.access_key, aws_secret_access_key=self.s3.secret_key,
                aws_session_token=self.s3.session_token)
        return self._s3_client

    # pyarrow would (de)compress by file extension; we handle .gz ourselves, byte for byte.
    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path, compression=None) as stream:
            return stream.read()

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a small file whole: readers see the old content or the new, never a part of it.

        An S3 PUT replaces an object atomically; on a local disk the bytes go to a temporary file that is then
        renamed over the target (``rename`` is atomic on POSIX).
        """
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        target = path if self.scheme == "s3" else f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(target, compression=None) as stream:
                stream.write(data)
            if target != path:
                self.fs.move(target, path)
        except BaseException:
            if target != path and self.fs.get_file_info(target).type == pafs.FileType.File:
                self.fs.delete_file(target)
            raise

    # parquet ---------------------------------------------------------------------------------
    def writer(self, *parts: str, schema: pa.Schema, prefix: str = "part", compression: str | dict = "zstd",
               row_group_size: int | None = None) -> PartWriter:
        """Return a writer that replaces the Parquet dataset at ``parts`` (its old files are deleted).

        ``compression`` may name a codec per column (``{"hash": "none"}``): random hashes only cost CPU to squeeze.
        """
        return PartWriter(self, self.path(*parts), schema, prefix, compression=compression,
                          row_group_size=row_group_size)

    def iter_batches(self, *parts: str, batch_size: int, columns: list[str] | None = None,
                     overlapping: tuple[str, int, int] | None = None) -> Iterator[pa.RecordBatch]:
        """Yield the dataset's rows in file order, ``batch_size`` at a time (bounded memory).

        ``overlapping=(column, lowest, highest)`` skips the row groups whose min/max of ``column`` lie outside.
        """
        for path in self.list_files(*parts):
            if path.endswith(".parquet"):
                with self._open_parquet(path) as handle:
                    parquet = pq.ParquetFile(handle)
                    # One row group per call: with pre_buffer (on by default) a single call caches the whole file.
                    for group in range(parquet.num_row_groups):
                        if overlapping and not _overlaps(parquet.metadata.row_group(group), *overlapping):
                            continue
                        yield from parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns)

    def batch_starts(self, *parts: str, batch_size: int) -> np.ndarray:
        """Return the row numbers at which ``iter_batches`` starts a batch, and the dataset's row count last.

        Read from the footers: a batch never spans two row groups.
        """
        starts, first = [0], 0
        for path in self.list_files(*parts):
            if path.endswith(".parquet"):
                with self._open_parquet(path) as handle:
                    metadata = pq.ParquetFile(handle).metadata
                for group in range(metadata.num_row_groups):
                    size = metadata.row_group(group).num_rows
                    starts.extend(range(first + batch_size, first + size, batch_size))
                    first += size
                    starts.append(first)
        return np.unique(np.array(starts, dtype=np.int64))

    def iter_range(self, *parts: str, start: int, stop: int, batch_size: int,
                   columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """Yield the dataset's rows ``start`` to ``stop`` (counted across files in file order), ``batch_size`` at a
        time; only the row groups holding them are read."""
        first = 0
        for path in self.list_files(*parts):
            if first >= stop:
                return
            if not path.endswith(".parquet"):
                continue
            with self._open_parquet(path) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    size = parquet.metadata.row_group(group).num_rows
                    lo, hi = max(start, first), min(stop, first + size)
                    offset = first
                    first += size
                    if hi <= lo:
                        continue
                    for batch in parquet.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns):
                        cut_lo, cut_hi = max(lo - offset, 0), min(hi - offset, batch.num_rows)
                        offset += batch.num_rows
                        if cut_hi > cut_lo:
                            yield batch.slice(cut_lo, cut_hi - cut_lo)
                        if offset >= hi:
                            break

    def read_table(self, *parts: str, columns: list[str] | None = None, prefix: str | None = None) -> pa.Table:
        """Read a whole (small) Parquet dataset; use ``iter_batches`` for per-day data.

        ``prefix``: read only the files a ``PartWriter`` of that prefix wrote (``{prefix}-NNNNN.parquet``).
        """
        tables = []
        for path in self.list_files(*parts):
            if path.endswith(".parquet") and (prefix is None or posixpath.basename(path).startswith(prefix + "-")):
                with self._open_parquet(path) as handle:
                    tables.append(pq.read_table(handle, columns=columns))
        if not tables:
            raise FileNotFoundError(f"no Parquet files under {self.uri(*parts)}")
        return pa.concat_tables(tables, promote_options="default")

    def take_rows(self, *parts: str, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Return the dataset's rows numbered ``rows`` (sorted, unique; counted across files in file order).

        Only the row groups holding a wanted row are read.
        """
        pieces, first = [], 0
        for path in self.list_files(*parts):
            if not path.endswith(".parquet"):
                continue
            with self._open_parquet(path) as handle:
                parquet = pq.ParquetFile(handle)
                for group in range(parquet.num_row_groups):
                    size = parquet.metadata.row_group(group).num_rows
                    lo, hi = np.searchsorted(rows, [first, first + size])
                    if hi > lo:
                        table = parquet.read_row_group(group, columns=columns)
                        pieces.append(table.take(pa.array(rows[lo:hi] - first)))
                    first += size
        if len(rows) and (not pieces or rows[-1] >= first):
            raise IndexError(f"{self.uri(*parts)} has {first} rows; row {int(rows[-1])} was asked for")
        if pieces:
            return pa.concat_tables(pieces)
        empty = self.parquet_schema(*parts).empty_table()
        return empty.select(columns) if columns else empty

    def count_rows(self, *parts: str) -> int:
        """Count a Parquet dataset's rows from the file footers, without reading data."""
        total = 0
        for path in self.list_files(*parts):
            if path.endswith(".parquet"):
                with self._open_parquet(path) as handle:
                    total += pq.ParquetFile(handle).metadata.num_rows
        return total

    def parquet_schema(self, *parts: str) -> pa.Schema:
        files = [p for p in self.list_files(*parts) if p.endswith(".parquet")]
        if not files:
            raise FileNotFoundError(f"no Parquet files under {self.uri(*parts)}")
        with self._open_parquet(files[0]) as handle:
            return pq.read_schema(handle)

    def parquet_footer(self, path: str) -> dict:
        """Return one Parquet file's footer (row groups, sizes, statistics) as a dict."""
        with self._open_parquet(path) as handle:
            return pq.ParquetFile(handle).metadata.to_dict()

    # delta -----------------------------------------------------------------------------------
    def delta_storage_options(self) -> dict[str, str]:
        """Return the ``storage_options`` deltalake needs to reach this root."""
        if self.scheme != "s3":
            return {}
        options = {"AWS_REGION": self.s3.region}
        if self.s3.access_key:
            options["AWS_ACCESS_KEY_ID"] = self.s3.access_key
            options["AWS_SECRET_ACCESS_KEY"] = self.s3.secret_key or ""
        if self.s3.session_token:
            options["AWS_SESSION_TOKEN"] = self.s3.session_token
        if self.s3.endpoint_url:
            options["AWS_ENDPOINT_URL"] = self.s3.endpoint_url
            if self.s3.endpoint_url.startswith("http://"):
                options["AWS_ALLOW_HTTP"] = "true"
        # S3 has conditional writes (If-None-Match), so concurrent commits cannot overwrite each other.
        options["conditional_put"] = "etag"
        return options


class PartWriter:
    """Stream record batches into ``part-NNNNN.parquet`` files, rotating every ``rows_per_file`` rows."""

    def __init__(self, storage: Storage, path: str, schema: pa.Schema, prefix: str = "part",
                 rows_per_file: int = 1_000_000, compression: str | dict = "zstd",
                 row_group_size: int | None = None) -> None:
        self.storage = storage
        self.compression = compression
        self.row_group_size = row_group_size
        self.path = path
        self.schema = schema
        self.prefix = prefix
        self.rows_per_file = rows_per_file
        self.rows = 0
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._sink = None
        self._in_file = 0

    def __enter__(self) -> PartWriter:
        stale = [p for p in self.storage.list_files(self.storage.relative(self.path))
                 if posixpath.basename(p).startswith(self.prefix + "-")]
        self.storage.delete_files(stale)
        self.storage.fs.create_dir(self.path, recursive=True)
        return self

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if data.num_rows == 0:
            return
        if not data.schema.equals(self.schema):
            data = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
            data = data.select(self.schema.names).cast(self.schema)
        if self._writer is None or self._in_file >= self.rows_per_file:
            self._open()
        self._writer.write(data, row_group_size=self.row_group_size)
        self._in_file += data.num_rows
        self.rows += data.num_rows

    def _open(self) -> None:
        self._close_file()
        name = posixpath.join(self.path, f"{self.prefix}-{len(self.files):05d}.parquet")
        self._sink = self.storage.fs.open_output_stream(name, compression=None)
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)
        self.files.append(name)
        self._in_file = 0

    def _close_file(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = self._sink = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and not self.files:
            self._open()  # an empty day still leaves a file that carries the schema
        self._close_file()


def _overlaps(group: pq.RowGroupMetaData, column: str, lowest, highest) -> bool:
    """Return whether a row group may hold values of ``column`` in ``[lowest, highest]`` (True without stats)."""
    for i in range(group.num_columns):
        chunk = group.column(i)
        if chunk.path_in_schema == column:
            stats = chunk.statistics
            if stats is None or not stats.has_min_max:
                return True
            return stats.min <= highest and stats.max >= lowest
    return True


def _s3_filesystem(options: S3Options) -> pafs.S3FileSystem:
    kwargs: dict = {"region": options.region, "connect_timeout": 10, "request_timeout": 60,
                    "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=options.max_attempts)}
    if options.access_key:
        kwargs.update(access_key=options.access_key, secret_key=options.secret_key,
                      session_token=options.session_token)
    if options.endpoint_url:
        endpoint = urlparse(options.endpoint_url)
        kwargs.update(endpoint_override=endpoint.netloc or endpoint.path, scheme=endpoint.scheme or "https")
        kwargs["force_virtual_addressing"] = False
    return pafs.S3FileSystem(**kwargs)
