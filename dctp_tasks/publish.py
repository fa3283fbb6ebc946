"""Atomic publish: a partition is written as a new version beside the old one, then a small pointer is switched.

A published folder ``P`` (a stage's staged output, a date's history partition, a trained model) holds::

    P/_CURRENT.json          {"version": "20260101T000000Z-3f9a…", "published_at": …, …}
    P/v-20260101T000000Z-3f9a…/…   the files of that version

Readers resolve the pointer once and read only that version's files, so they see the old partition or the new
one, never a half-written one; two writers of the same partition each write their own version and the last
pointer switch wins. The pointer is one small object: ``os.replace`` makes its switch atomic on a local disk,
and an S3 PUT replaces an object atomically. A superseded version is kept for ``KEEP_SUPERSEDED`` after it was
superseded (the pointer records when), so a reader that resolved the old pointer finishes reading it; a later
publish of the same folder deletes it then.
"""

from __future__ import annotations

import json
import logging
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import pyarrow as pa

from dctp_tasks.storage import POINTER, VERSION_PREFIX, PartWriter, Storage

log = logging.getLogger(__name__)

KEEP_SUPERSEDED = timedelta(hours=24)
"""How long a superseded or abandoned version stays readable: longer than any task runs (the longest
``execution_timeout`` is 4 hours), so a reader that resolved the old pointer is never cut off."""
_TOKEN_TIME = "%Y%m%dT%H%M%S%fZ"


def new_token() -> str:
    """Return a version token that sorts by creation time and is unique across writers."""
    return f"{datetime.now(UTC).strftime(_TOKEN_TIME)}-{uuid.uuid4().hex[:8]}"


def token_time(token: str) -> datetime | None:
    """Return when the version ``token`` was created (``None`` for a token this module did not make)."""
    try:
        return datetime.strptime(token.split("-", 1)[0], _TOKEN_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None


class NotPublished(FileNotFoundError):
    """Nothing was ever published at a folder (or the version asked for is gone)."""


def current(storage: Storage, folder: str) -> dict | None:
    """Return the pointer of ``folder`` (``version``, ``published_at`` and the writer's metadata), or ``None``."""
    path = storage.path(folder, POINTER)
    try:
        return storage.read_json(path)
    except FileNotFoundError:
        return None


def resolve(storage: Storage, folder: str, version: str | None = None) -> str:
    """Return the folder (relative to the root) holding ``version`` of ``folder``, or its current version.

    A folder written before versioned publishing (Parquet files, no pointer) resolves to itself.
    Raises ``NotPublished`` when there is nothing to read.
    """
    if version is None:
        pointer = current(storage, folder)
        if pointer is not None:
            version = pointer["version"]
        elif any(p.endswith(".parquet") for p in storage.list_files(folder, recursive=False, published=False)):
            return folder
        else:
            raise NotPublished(f"nothing published at {storage.uri(folder)}")
    path = posixpath.join(folder, VERSION_PREFIX + version)
    if not storage.exists(path):
        raise NotPublished(f"version {version} of {storage.uri(folder)} does not exist (deleted as superseded "
                           f"more than {KEEP_SUPERSEDED} ago?): re-run the task that wrote it")
    return path


def is_published(storage: Storage, folder: str) -> bool:
    """Return whether ``folder`` has something to read."""
    try:
        resolve(storage, folder)
    except NotPublished:
        return False
    return True


def versions(storage: Storage, folder: str) -> list[str]:
    """Return the version tokens present under ``folder``, oldest first."""
    return sorted(d[len(VERSION_PREFIX):] for d in storage.list_dirs(folder) if d.startswith(VERSION_PREFIX))


class Publication:
    """Write one new version of ``folder``; on a clean exit switch the pointer to it and collect old versions.

    ``writer(sub, schema=…)`` and ``write_bytes(name, data)`` put files inside the version; several sub-datasets
    (e.g. ``rows`` and ``rejects``) switch together. If the block raises, the pointer is untouched and the
    partial version is deleted.
    """

    def __init__(self, storage: Storage, folder: str, *, meta: dict | None = None, token: str | None = None,
                 keep: timedelta = KEEP_SUPERSEDED) -> None:
        self.storage = storage
        self.folder = folder
        self.version = token or new_token()
        self.path = posixpath.join(folder, VERSION_PREFIX + self.version)
        self.meta = dict(meta or {})
        self.keep = keep

    def __enter__(self) -> Publication:
        self.storage.fs.create_dir(self.storage.path(self.path), recursive=True)
        return self

    def sub(self, *parts: str) -> str:
        """Return the path (relative to the root) of ``parts`` inside the new version."""
        return posixpath.join(self.path, *parts) if parts else self.path

    def writer(self, *parts: str, schema: pa.Schema, **kwargs) -> PartWriter:
        """Return a Parquet writer for the sub-dataset ``parts`` of the new version."""
        return self.storage.writer(self.sub(*parts), schema=schema, **kwargs)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.storage.write_bytes(self.storage.path(self.sub(name)), data)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            try:
                self.storage.delete_dir(self.path)
            except OSError:  # the store may be what failed; the next publish collects the leftovers
                log.warning("could not delete the unfinished version %s", self.storage.uri(self.path))
            return
        switch(self.storage, self.folder, self.version, meta=self.meta, keep=self.keep)


def switch(storage: Storage, folder: str, version: str, *, meta: dict | None = None,
           keep: timedelta = KEEP_SUPERSEDED) -> None:
    """Make the already written ``version`` of ``folder`` current, then collect versions superseded long ago.

    ``Publication`` calls it on a clean exit; a version written by several tasks (the shards of a stage) is
    switched by the one that checked every part is there.
    """
    previous = current(storage, folder) or {}
    now = datetime.now(UTC).isoformat(timespec="seconds")
    present = set(versions(storage, folder))
    # When each earlier version stopped being current: what collect ages them by.
    superseded = {token: at for token, at in (previous.get("superseded") or {}).items() if token in present}
    if previous.get("version") and previous["version"] != version:
        superseded[previous["version"]] = now
    pointer = {"version": version, "published_at": now, **(meta or {}), "superseded": superseded}
    storage.write_bytes(storage.path(folder, POINTER), json.dumps(pointer, indent=1).encode())
    try:
        collect(storage, folder, keep=keep)
    except OSError as exc:  # best effort: the version is published; a later publish collects what is left
        log.warning("could not collect old versions of %s: %s", storage.uri(folder), exc)


def collect(storage: Storage, folder: str, *, keep: timedelta = KEEP_SUPERSEDED,
            protect: set[str] | None = None, now: datetime | None = None) -> list[str]:
    """Delete the versions of ``folder`` that are neither current nor in ``protect`` and were superseded (or, never
    current, written) more than ``keep`` ago.

    Returns the deleted tokens. Files of the layout before versioning (directly in ``folder``) go too once a
    version is current. Another writer collecting at the same time is no error.
    """
    pointer = current(storage, folder)
    if pointer is None:
        return []
    protected = {pointer["version"], *(protect or set())}
    superseded = pointer.get("superseded") or {}
    limit = (now or datetime.now(UTC)) - keep
    deleted = []
    for token in versions(storage, folder):
        since = datetime.fromisoformat(superseded[token]) if token in superseded else token_time(token)
        if token in protected or since is None or since > limit:
            continue
        try:
            storage.delete_dir(posixpath.join(folder, VERSION_PREFIX + token))
        except FileNotFoundError:  # collected by another writer meanwhile
            continue
        deleted.append(token)
    legacy = [p for p in storage.list_files(folder, recursive=False, published=False) if p.endswith(".parquet")]
    storage.delete_files(legacy)
    return deleted


@contextmanager
def publish(storage: Storage, folder: str, **kwargs) -> Iterator[Publication]:
    """Shorthand for ``with Publication(storage, folder, …) as publication``."""
    with Publication(storage, folder, **kwargs) as publication:
        yield publication


def earlier_partitions(storage: Storage, parent: str, dt: str, *, inclusive: bool = False) -> list[tuple[str, str]]:
    """Return ``(date, folder to read)`` of every published ``dt=YYYY-MM-DD`` partition under ``parent`` dated
    before ``dt`` (``inclusive``: up to and including ``dt``), oldest first.

    This is how a stage reads history: only dates before its own (so dates re-run in any order give the same
    result), and each date's current version only (never a version still being written).
    """
    out = []
    for name in sorted(storage.list_dirs(parent)):
        day = name.removeprefix("dt=")
        if name.startswith("dt=") and (day < dt or (inclusive and day == dt)):
            folder = posixpath.join(parent, name)
            try:
                out.append((day, resolve(storage, folder)))
            except NotPublished:  # a date whose first write is still running or failed: it has no history yet
                log.info("%s has no published version yet; not read", storage.uri(folder))
    return out
