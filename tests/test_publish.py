"""Atomic publish: a new version is written beside the old one and a pointer switches; readers never mix them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pyarrow as pa
import pytest

from dctp_tasks.publish import (
    KEEP_SUPERSEDED,
    NotPublished,
    collect,
    current,
    earlier_partitions,
    publish,
    resolve,
    versions,
)
from dctp_tasks.storage import Storage, UnsafePath, check_name, staging_dir, state_dir

SCHEMA = pa.schema([("n", pa.int64())])


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(tmp_path.as_uri())


def put(storage: Storage, folder: str, values: list[int], **kwargs) -> str:
    with publish(storage, folder, **kwargs) as out, out.writer(schema=SCHEMA) as writer:
        writer.write(pa.table({"n": values}, schema=SCHEMA))
    return out.version


def read(storage: Storage, folder: str) -> list[int]:
    return storage.read_table(folder).column("n").to_pylist()


def test_readers_see_the_current_version_only(storage):
    first = put(storage, "state/x/dt=2026-01-01", [1, 2])
    second = put(storage, "state/x/dt=2026-01-01", [3])

    assert current(storage, "state/x/dt=2026-01-01")["version"] == second != first
    assert read(storage, "state/x/dt=2026-01-01") == [3]  # Storage lists a published folder as its version
    assert resolve(storage, "state/x/dt=2026-01-01") == f"state/x/dt=2026-01-01/v-{second}"
    assert read(storage, resolve(storage, "state/x/dt=2026-01-01", first)) == [1, 2]  # the old one stays readable
    assert versions(storage, "state/x/dt=2026-01-01") == sorted([first, second])


def test_a_failed_write_leaves_the_old_version_current_and_nothing_behind(storage):
    kept = put(storage, "p", [1])
    with pytest.raises(RuntimeError, match="disk on fire"):
        with publish(storage, "p") as out, out.writer(schema=SCHEMA) as writer:
            writer.write(pa.table({"n": [9, 9]}, schema=SCHEMA))
            raise RuntimeError("disk on fire")

    assert current(storage, "p")["version"] == kept and read(storage, "p") == [1]
    assert versions(storage, "p") == [kept]


def test_superseded_versions_go_a_day_after_they_were_superseded(storage):
    old = put(storage, "p", [1])
    previous = put(storage, "p", [2])
    latest = put(storage, "p", [3])  # its publish kept `old`: younger than a day
    assert versions(storage, "p") == [old, previous, latest]

    later = datetime.now(UTC) + KEEP_SUPERSEDED + timedelta(minutes=1)
    assert collect(storage, "p", now=later, protect={previous}) == [old]
    assert versions(storage, "p") == [previous, latest]
    assert collect(storage, "p", now=later) == [previous]
    assert versions(storage, "p") == [latest] and read(storage, "p") == [3]


def test_a_folder_written_before_versioning_is_read_until_its_first_publish(storage):
    with storage.writer("legacy", schema=SCHEMA) as writer:
        writer.write(pa.table({"n": [7]}, schema=SCHEMA))
    assert resolve(storage, "legacy") == "legacy" and read(storage, "legacy") == [7]

    put(storage, "legacy", [8])

    assert read(storage, "legacy") == [8]
    assert not [p for p in storage.list_files("legacy", recursive=False, published=False) if p.endswith(".parquet")]


def test_nothing_published_says_so(storage):
    with pytest.raises(NotPublished, match="nothing published"):
        resolve(storage, "nowhere")
    put(storage, "p", [1])
    with pytest.raises(NotPublished, match="does not exist"):
        resolve(storage, "p", "20260101T000000000000Z-deadbeef")


def test_history_is_the_published_dates_before_d(storage):
    for day in ("2026-01-01", "2026-01-02", "2026-01-04"):
        put(storage, state_dir("x", day), [int(day[-1])])
    storage.fs.create_dir(storage.path(state_dir("x", "2026-01-03")))  # a first write still running: no pointer

    found = earlier_partitions(storage, state_dir("x"), "2026-01-04")

    assert [day for day, _ in found] == ["2026-01-01", "2026-01-02"]
    assert [read(storage, folder) for _, folder in found] == [[1], [2]]


def test_small_files_are_replaced_whole(storage):
    path = storage.path("reports", "r.md")
    storage.write_bytes(path, b"old")
    storage.write_bytes(path, b"new")
    assert storage.read_bytes(path) == b"new"
    assert storage.list_files("reports") == [path], "no temporary file is left behind"


@pytest.mark.parametrize("name", ["../../etc", "a/b", "/abs", "..", "", "x" * 200, "dag id"])
def test_names_that_would_leave_the_root_are_refused(storage, name):
    with pytest.raises(UnsafePath):
        check_name(name, "DAG id")
    with pytest.raises(UnsafePath):
        staging_dir(name, "2026-01-01", "ingest")


@pytest.mark.parametrize("parts", [("..", "etc"), ("state", "../../..", "x"), ("/etc/passwd",)])
def test_paths_outside_the_root_are_refused(storage, parts):
    if parts == ("/etc/passwd",):
        assert storage.path(*parts) == storage.path("etc/passwd")  # absolute parts are taken under the root
        return
    with pytest.raises(UnsafePath, match="outside the data root"):
        storage.path(*parts)
    with pytest.raises(UnsafePath):
        state_dir("x", "2026-01-01/../../..")


def test_an_old_version_superseded_just_now_stays_readable_for_a_day(storage):
    # current for a week (history of an early date), then re-published twice in a row: a reader that resolved
    # the week-old version a moment ago must still find it
    week_old = put(storage, "p", [1], token="20260101T000000000000Z-0000aaaa")
    put(storage, "p", [2])
    put(storage, "p", [3])

    assert week_old in versions(storage, "p")
    soon = datetime.now(UTC) + timedelta(hours=1)
    assert collect(storage, "p", now=soon) == [] and read(storage, resolve(storage, "p", week_old)) == [1]
    assert week_old in collect(storage, "p", now=datetime.now(UTC) + KEEP_SUPERSEDED + timedelta(minutes=5))
