"""One storage module, one code path: the same operations on a local root and on S3 (moto server on loopback)."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

from dctp_tasks.storage import S3Options, Storage

SCHEMA = pa.schema([("doc_id", pa.string()), ("n", pa.int64())])


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    if request.param == "file":
        return Storage(tmp_path.as_uri())
    endpoint = request.getfixturevalue("moto_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Storage(f"s3://{bucket}/root", S3Options(endpoint_url=endpoint, access_key="testing",
                                                    secret_key="testing"))


def test_paths_and_uris(storage):
    assert storage.uri("a", "b.parquet").startswith(f"{storage.scheme}://")
    assert storage.uri("a", "b.parquet").endswith("/a/b.parquet")
    assert storage.relative(storage.path("landing", "web", "x.jsonl")) == "landing/web/x.jsonl"


def test_bytes_round_trip_exactly_even_for_gz(storage):
    payload = gzip.compress(b'{"id": 1}\n')[:-4]  # a truncated gzip must stay truncated, byte for byte
    path = storage.path("landing", "web", "dt=2026-01-01", "part.jsonl.gz")
    storage.write_bytes(path, payload)
    assert storage.read_bytes(path) == payload
    assert storage.list_files("landing", "web") == [path]
    assert storage.list_dirs("landing") == ["web"]
    assert storage.exists("landing", "web")


def test_parquet_writer_streams_and_replaces_only_its_prefix(storage):
    with storage.writer("out", schema=SCHEMA, prefix="ingest") as writer:
        for start in range(0, 30, 10):
            writer.write(pa.table({"doc_id": [f"d{i}" for i in range(start, start + 10)],
                                   "n": list(range(start, start + 10))}, schema=SCHEMA))
    with storage.writer("out", schema=SCHEMA, prefix="normalize") as other:
        other.write(pa.table({"doc_id": ["x"], "n": [1]}, schema=SCHEMA))
    assert storage.count_rows("out") == 31
    with storage.writer("out", schema=SCHEMA, prefix="ingest") as writer:  # a re-run: replaces its own file
        writer.write(pa.table({"doc_id": ["y"], "n": [2]}, schema=SCHEMA))
    assert storage.count_rows("out") == 2
    batches = list(storage.iter_batches("out", batch_size=1))
    assert sorted(b.column("doc_id")[0].as_py() for b in batches) == ["x", "y"]


def test_empty_output_still_carries_the_schema(storage):
    with storage.writer("empty", schema=SCHEMA):
        pass
    assert storage.parquet_schema("empty") == SCHEMA
    assert storage.count_rows("empty") == 0


def test_take_rows_reads_only_the_row_groups_it_needs_across_files(storage):
    writer = storage.writer("rows", schema=SCHEMA, row_group_size=4, compression={"doc_id": "zstd", "n": "none"})
    writer.rows_per_file = 10
    with writer:
        for start in range(0, 25, 5):
            writer.write(pa.table({"doc_id": [f"d{i}" for i in range(start, start + 5)],
                                   "n": list(range(start, start + 5))}, schema=SCHEMA))
    assert len(storage.list_files("rows")) == 3  # 10 + 10 + 5 rows
    taken = storage.take_rows("rows", rows=np.array([0, 3, 4, 11, 19, 24]), columns=["n", "doc_id"])
    assert taken.column("n").to_pylist() == [0, 3, 4, 11, 19, 24]
    assert taken.column("doc_id").to_pylist() == ["d0", "d3", "d4", "d11", "d19", "d24"]
    assert storage.take_rows("rows", rows=np.array([], np.int64), columns=["n"]).num_rows == 0
    with pytest.raises(IndexError, match="has 25 rows; row 25"):
        storage.take_rows("rows", rows=np.array([2, 25]))


def test_delete_dir(storage):
    storage.write_bytes(storage.path("state", "x", "dt=1", "a"), b"1")
    storage.delete_dir("state", "x")
    assert storage.list_files("state") == []
    storage.delete_dir("state", "never-existed")  # no error


def test_delta_table_through_the_same_options(storage):
    uri = storage.uri("datasets", "t")
    options = storage.delta_storage_options()
    table = pa.table({"doc_id": ["a", "b"], "dt": ["2026-01-01", "2026-01-02"]})
    write_deltalake(uri, table, partition_by=["dt"], storage_options=options)
    write_deltalake(uri, pa.table({"doc_id": ["c"], "dt": ["2026-01-01"]}), partition_by=["dt"], mode="overwrite",
                    predicate="dt = '2026-01-01'", storage_options=options)
    loaded = DeltaTable(uri, storage_options=options)
    assert loaded.version() == 1
    assert sorted(loaded.to_pyarrow_dataset().to_table()["doc_id"].to_pylist()) == ["b", "c"]
    assert storage.list_files("datasets", "t", "_delta_log")


def test_bad_roots_are_named():
    with pytest.raises(ValueError, match="gcs://x"):
        Storage("gcs://x/y")
    with pytest.raises(ValueError, match="names no bucket"):
        Storage("s3:///prefix")


def test_the_default_data_root_and_feedback_store_follow_a_relative_airflow_home(tmp_path, monkeypatch):
    from dctp_tasks.feedback.db import default_url
    from dctp_tasks.storage import data_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DCTP_DATA_ROOT", raising=False)
    monkeypatch.setenv("AIRFLOW_HOME", "home")
    assert data_root() == (tmp_path / "home" / "dctp-data").as_uri()
    assert default_url() == f"sqlite:///{tmp_path / 'home' / 'dctp_feedback.db'}"


def test_s3_attempts_follow_aws_max_attempts(monkeypatch):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    assert S3Options.from_env().max_attempts == 5
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    assert S3Options.from_env().max_attempts == 2
    assert S3Options.from_connection("k", "s", {"endpoint_url": "http://x"}).max_attempts == 2
    for bad in ("0", "-1", "five"):
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", bad)
        with pytest.raises(ValueError, match="AWS_MAX_ATTEMPTS"):
            S3Options.from_env()
