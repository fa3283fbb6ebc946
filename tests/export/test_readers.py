"""Trainers' readers on what the pipeline writes: Hugging Face ``datasets`` loads materialized views and polars
reads the Delta table by version, from a local folder and from S3 (a moto server), with the version's rows."""

from __future__ import annotations

import pyarrow.compute as pc
import pytest

from dctp_tasks.export import open_table
from dctp_tasks.export.views import ViewSpec, data_files, materialize
from dctp_tasks.storage import Storage
from tests.export.test_export_cli import export_day
from tests.export.test_views import CONFIG, stage

datasets = pytest.importorskip("datasets")
pl = pytest.importorskip("polars")


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))


def build(storage: Storage) -> None:
    stage(storage, "2026-01-01", 120, 0, synthetic_every=5)
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-1")
    stage(storage, "2026-01-02", 80, 120)
    export_day(storage, CONFIG, "dag", "2026-01-02", run_id="run-2")


def check_readers(storage: Storage, out_root: str, storage_options: dict | None, tmp_path) -> None:
    version_1 = open_table(storage, "curated", 1).to_pyarrow_dataset().to_table()
    latest = open_table(storage, "curated").to_pyarrow_dataset().to_table()
    # polars reads the Delta table itself, at any version
    for version, expected in ((1, version_1), (2, latest)):
        frame = pl.read_delta(storage.uri("datasets/curated"), version=version,
                              storage_options=storage.delta_storage_options() or None)
        assert frame.height == expected.num_rows
        assert sorted(frame["doc_id"].to_list()) == sorted(expected.column("doc_id").to_pylist())

    parquet_out = Storage(f"{out_root}/parquet")
    manifest = materialize(storage, "curated", 1, parquet_out, ViewSpec("parquet", shard_rows=50))
    files = {split: [parquet_out.uri(p) for p in paths] for split, paths in data_files(manifest).items()}
    loaded = datasets.load_dataset("parquet", data_files=files, cache_dir=str(tmp_path / "cache"),
                                   storage_options=storage_options)
    assert {split: loaded[split].num_rows for split in loaded} == manifest["splits"]
    assert sum(manifest["splits"].values()) == version_1.num_rows
    by_id = {r["doc_id"]: r for r in version_1.to_pylist()}
    for split in loaded:
        for row in loaded[split]:
            assert row["text"] == by_id[row["doc_id"]]["text"] and row["split"] == split

    chat_out = Storage(f"{out_root}/chat")
    manifest = materialize(storage, "curated", 2, chat_out, ViewSpec("chat", shard_rows=30))
    files = {split: [chat_out.uri(p) for p in paths] for split, paths in data_files(manifest).items()}
    loaded = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"),
                                   storage_options=storage_options)
    pairs = latest.filter(pc.is_valid(latest.column("prompt")))
    assert sum(loaded[s].num_rows for s in loaded) == pairs.num_rows == manifest["rows"]
    expected = {(r["prompt"], r["response"]) for r in pairs.to_pylist()}
    got = {(r["messages"][0]["content"], r["messages"][1]["content"]) for s in loaded for r in loaded[s]}
    assert got == expected
    assert {m["role"] for s in loaded for r in loaded[s] for m in r["messages"]} == {"user", "assistant"}


def test_readers_on_a_local_table_and_views(tmp_path):
    storage = Storage((tmp_path / "root").as_uri())
    build(storage)
    check_readers(storage, (tmp_path / "views").as_uri(), None, tmp_path)


def test_readers_on_s3(s3_bucket, moto_server, tmp_path):
    storage = Storage(f"s3://{s3_bucket}/root")
    build(storage)
    options = {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": moto_server,
                                                                        "region_name": "us-east-1"}}
    check_readers(storage, f"s3://{s3_bucket}/views", options, tmp_path)
