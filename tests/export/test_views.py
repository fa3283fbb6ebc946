"""Materialized views: each format's exact shape, shards and manifest hashes, filters, weighted samples, identical
bytes on a re-run, resume after an interruption, and the ``dctp materialize`` command."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from dctp_tasks.cli import main
from dctp_tasks.config import load_config
from dctp_tasks.export import open_table
from dctp_tasks.export.formats import FormatOptions
from dctp_tasks.export.views import ROW_GROUP_ROWS, ViewExists, ViewSpec, materialize, read_manifest
from dctp_tasks.records import DEDUPED_SCHEMA, content_hashes
from dctp_tasks.storage import Storage
from tests.conftest import make_table, publish_stage
from tests.export.test_export_cli import export_day

CONFIG = load_config()
TRICKY = 'line one\nline "two"\ttab — ünïcödé 🤖 \u2028 sep \\ backslash'


def stage(storage: Storage, dt: str, n: int, start: int, *, synthetic_every: int = 0) -> None:
    """Stage ``n`` rows of ``dt``: even ids are prompt/response pairs, odd ids plain documents."""
    ids = [f"web/{i}" for i in range(start, start + n)]
    prompts = [f"question {i}?" if i % 2 == 0 else None for i in range(start, start + n)]
    responses = [(TRICKY if i == 0 else f"answer {i}.") if i % 2 == 0 else None for i in range(start, start + n)]
    texts = [f"{p}\n\n{r}" if p else f"plain document number {i} with words" for i, p, r in
             zip(range(start, start + n), prompts, responses, strict=True)]
    table = make_table(texts, doc_id=ids, dt=[dt] * n, prompt=prompts, response=responses,
                       source=["web" if i % 3 else "forum" for i in range(start, start + n)],
                       domain=["science" if i % 4 < 2 else "health" for i in range(start, start + n)],
                       synthetic=[bool(synthetic_every) and i % synthetic_every == 0 for i in range(start, start + n)],
                       sampling_weight=[1.0 + (i % 5) for i in range(start, start + n)])
    table = table.append_column("lang", pa.array(["en"] * n)).append_column(
        "lang_score", pa.array([0.9] * n, pa.float32()))
    table = table.append_column("content_hash", content_hashes(table.column("text")))
    table = table.append_column("quality", pa.array([(i % 10) / 10 for i in range(start, start + n)], pa.float32()))
    schema = pa.schema(list(DEDUPED_SCHEMA) + [pa.field("quality", pa.float32())])
    publish_stage(storage, "dag", dt, "dedup_exact", table.cast(schema))


@pytest.fixture
def table_root(tmp_path, monkeypatch):
    storage = Storage((tmp_path / "root").as_uri())
    monkeypatch.setenv("DCTP_DATA_ROOT", storage.root)
    stage(storage, "2026-01-01", 300, 0, synthetic_every=7)
    export_day(storage, CONFIG, "dag", "2026-01-01", run_id="run-1", metadata={"mlflow_run_id": "m1"})
    stage(storage, "2026-01-02", 200, 300)
    export_day(storage, CONFIG, "dag", "2026-01-02", run_id="run-2", metadata={"mlflow_run_id": "m2"})
    return storage


def version_rows(storage: Storage, version: int | None = None) -> pa.Table:
    return open_table(storage, "curated", version).to_pyarrow_dataset().to_table()


def lines_of(out: Storage, manifest: dict) -> list[dict]:
    records = []
    for f in manifest["files"]:
        raw = out.read_bytes(out.path(f["path"]))
        if f["path"].endswith(".gz"):
            raw = gzip.decompress(raw)
        elif f["path"].endswith(".zst"):
            raw = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)).read()
        assert raw.endswith(b"\n")
        records += [json.loads(line) for line in raw.decode().split("\n")[:-1]]
    return records


def view(tmp_path, name: str) -> Storage:
    return Storage((tmp_path / name).as_uri())


def test_chat_records_are_openai_messages_and_plain_documents_are_counted(table_root, tmp_path):
    out = view(tmp_path, "chat")
    spec = ViewSpec("chat", compression="none", options=FormatOptions(system_prompt="Be brief."))
    manifest = materialize(table_root, "curated", None, out, spec)
    rows = version_rows(table_root)
    pairs = rows.filter(pa.compute.is_valid(rows.column("prompt")))
    assert manifest["rows"] == pairs.num_rows == 250
    assert manifest["skipped"] == {"no_prompt_response": rows.num_rows - pairs.num_rows}
    assert manifest["matched_rows"] == rows.num_rows
    records = lines_of(out, manifest)
    assert len(records) == 250
    first = next(r for r in records if r["messages"][1]["content"] == "question 0?")
    assert first == {"messages": [{"role": "system", "content": "Be brief."},
                                  {"role": "user", "content": "question 0?"},
                                  {"role": "assistant", "content": TRICKY}]}
    raw = out.read_bytes(out.path(manifest["files"][0]["path"]))
    assert b"\\n" in raw and "🤖".encode() in raw and b"\\u2028" in raw  # one record per line, UTF-8 kept
    assert raw.count(b"\n") == manifest["files"][0]["rows"]


@pytest.mark.parametrize("weight, expected", [(1, [1] * 3), ("sampling_weight", [1.0, 3.0, 5.0])])
def test_chat_weight_on_the_assistant_turn(table_root, tmp_path, weight, expected):
    out = view(tmp_path, "weighted")
    manifest = materialize(table_root, "curated", None, out,
                           ViewSpec("chat", where="doc_id in ('web/0', 'web/2', 'web/4')",
                                    options=FormatOptions(assistant_weight=weight)))
    records = lines_of(out, manifest)
    assert [r["messages"][-1]["weight"] for r in records] == expected
    assert all("weight" not in m for r in records for m in r["messages"][:-1])


def test_sharegpt_alpaca_and_text_shapes(table_root, tmp_path):
    where = "doc_id in ('web/0', 'web/1')"
    share = lines_of(out := view(tmp_path, "s"), materialize(table_root, "curated", None, out, ViewSpec(
        "sharegpt", where=where, options=FormatOptions(system_prompt="sys"))))
    assert share == [{"conversations": [{"from": "system", "value": "sys"}, {"from": "human", "value": "question 0?"},
                                        {"from": "gpt", "value": TRICKY}]}]
    alpaca = lines_of(out := view(tmp_path, "a"), materialize(table_root, "curated", None, out, ViewSpec(
        "alpaca", where=where, compression="gzip", options=FormatOptions(with_weights=True))))
    assert alpaca == [{"instruction": "question 0?", "input": "", "output": TRICKY, "sampling_weight": 1.0}]
    manifest = materialize(table_root, "curated", None, out := view(tmp_path, "t"), ViewSpec("text", where=where))
    assert manifest["skipped"] == {}
    assert sorted(lines_of(out, manifest), key=lambda r: r["id"]) == [
        {"id": "web/0", "text": f"question 0?\n\n{TRICKY}"},
        {"id": "web/1", "text": "plain document number 1 with words"}]
    assert [f["path"] for f in manifest["files"]] == [f"data/{f['split']}-00000.jsonl.zst" for f in manifest["files"]]


def test_jsonl_keeps_every_column(table_root, tmp_path):
    manifest = materialize(table_root, "curated", None, out := view(tmp_path, "j"),
                           ViewSpec("jsonl", where="doc_id = 'web/0'"))
    [record] = lines_of(out, manifest)
    assert set(record) == set(version_rows(table_root).column_names)
    assert record["text"] == f"question 0?\n\n{TRICKY}" and record["dt"] == "2026-01-01"


def test_parquet_shards_row_groups_and_manifest_hashes(table_root, tmp_path):
    out = view(tmp_path, "p")
    manifest = materialize(table_root, "curated", None, out, ViewSpec("parquet", shard_rows=120))
    rows = version_rows(table_root)
    assert manifest["rows"] == rows.num_rows == 500
    assert sum(manifest["splits"].values()) == 500
    for split, count in manifest["splits"].items():
        files = [f for f in manifest["files"] if f["split"] == split]
        assert [f["rows"] for f in files][:-1] == [120] * (len(files) - 1) and sum(f["rows"] for f in files) == count
        assert [f["path"] for f in files] == [f"data/{split}-{i:05d}.parquet" for i in range(len(files))]
    for record in manifest["files"]:
        data = out.read_bytes(out.path(record["path"]))
        assert len(data) == record["bytes"] and hashlib.sha256(data).hexdigest() == record["sha256"]
        meta = pq.ParquetFile(out.path(record["path"])).metadata
        assert meta.num_rows == record["rows"] and all(meta.row_group(i).num_rows <= ROW_GROUP_ROWS
                                                       for i in range(meta.num_row_groups))
    written = pa.concat_tables(pq.read_table(out.path(f["path"])) for f in manifest["files"])
    assert sorted(written.column("doc_id").to_pylist()) == sorted(rows.column("doc_id").to_pylist())
    assert set(written.column_names) == set(rows.column_names)
    assert manifest["version"] == 2 and manifest["format"] == "parquet" and manifest["code_version"]
    assert {dt: d["run_id"] for dt, d in manifest["lineage"].items()} == {"2026-01-01": "run-1",
                                                                          "2026-01-02": "run-2"}
    assert manifest["config_hashes"] == [CONFIG.config_hash()]
    assert not out.exists("_progress")


def test_filters_split_where_and_synthetic(table_root, tmp_path):
    rows = version_rows(table_root).to_pylist()
    manifest = materialize(table_root, "curated", None, out := view(tmp_path, "f"), ViewSpec(
        "parquet", split="train", where="domain = 'science' AND quality >= 0.5", include_synthetic=False))
    expected = [r["doc_id"] for r in rows if r["split"] == "train" and r["domain"] == "science"
                and r["quality"] >= 0.5 and not r["synthetic"]]
    written = pa.concat_tables(pq.read_table(out.path(f["path"])) for f in manifest["files"])
    assert sorted(written.column("doc_id").to_pylist()) == sorted(expected) and expected
    assert list(manifest["splits"]) == ["train"]
    with pytest.raises(ValueError, match="no column 'nope'"):
        materialize(table_root, "curated", None, view(tmp_path, "g"), ViewSpec("parquet", where="nope = 1"))


def test_weighted_sample_is_seeded_and_follows_the_weights(table_root, tmp_path):
    spec = ViewSpec("text", sample=20_000, seed=3, shard_rows=7_000)
    manifest = materialize(table_root, "curated", None, out := view(tmp_path, "w1"), spec)
    again = materialize(table_root, "curated", None, view(tmp_path, "w2"), spec)
    assert manifest["rows"] == 20_000
    assert [f["sha256"] for f in manifest["files"]] == [f["sha256"] for f in again["files"]]
    weights = {r["doc_id"]: r["sampling_weight"] for r in version_rows(table_root).to_pylist()}
    drawn: dict[float, int] = {}
    for record in lines_of(out, manifest):
        drawn[weights[record["id"]]] = drawn.get(weights[record["id"]], 0) + 1
    # each weight class holds 100 documents: draws per class grow in proportion to the weight (1 … 5)
    per_unit = {w: n / w for w, n in drawn.items()}
    assert max(per_unit.values()) / min(per_unit.values()) < 1.15
    other = materialize(table_root, "curated", None, view(tmp_path, "w3"), ViewSpec("text", sample=20_000, seed=4,
                                                                                     shard_rows=7_000))
    assert [f["sha256"] for f in other["files"]] != [f["sha256"] for f in manifest["files"]]


def test_same_version_and_options_give_the_same_bytes_and_views_are_immutable(table_root, tmp_path):
    spec = ViewSpec("chat", shard_rows=50)
    first = materialize(table_root, "curated", 1, out := view(tmp_path, "v1"), spec)
    second = materialize(table_root, "curated", 1, view(tmp_path, "v2"), spec)
    assert first == second
    assert first["version"] == 1 and set(first["lineage"]) == {"2026-01-01"}
    stamp = os.stat(out.path(first["files"][0]["path"])).st_mtime_ns
    assert materialize(table_root, "curated", 1, out, spec) == first  # finished: nothing is written again
    assert os.stat(out.path(first["files"][0]["path"])).st_mtime_ns == stamp
    with pytest.raises(ViewExists, match="immutable"):
        materialize(table_root, "curated", 2, out, spec)


def test_an_interrupted_view_resumes_without_rewriting_or_duplicating_shards(table_root, tmp_path, monkeypatch):
    spec = ViewSpec("chat", shard_rows=40)
    clean = materialize(table_root, "curated", None, view(tmp_path, "clean"), spec)
    out = view(tmp_path, "resumed")
    real_write = Storage.write_bytes
    written: list[str] = []

    def crash_on_third_shard(self, path, data):
        if "/data/" in path and len(written) == 2:
            raise OSError("worker lost")
        written.append(path) if "/data/" in path else None
        real_write(self, path, data)

    monkeypatch.setattr(Storage, "write_bytes", crash_on_third_shard)
    with pytest.raises(OSError, match="worker lost"):
        materialize(table_root, "curated", None, out, spec)
    monkeypatch.setattr(Storage, "write_bytes", real_write)
    assert not out.exists("manifest.json") and len(out.list_files("_progress")) == 2
    stamps = {p: os.stat(p).st_mtime_ns for p in written}
    resumed = materialize(table_root, "curated", None, out, spec)
    assert resumed == clean
    assert {p: os.stat(p).st_mtime_ns for p in written} == stamps  # the two finished shards were kept as they were
    assert sorted(out.relative(p) for p in out.list_files("data")) == sorted(f["path"] for f in clean["files"])


def test_a_different_views_leftovers_are_refused(table_root, tmp_path, monkeypatch):
    out = view(tmp_path, "x")
    real_write = Storage.write_bytes

    def crash_after_first(self, path, data):
        real_write(self, path, data)
        if "/_progress/" in path:
            raise OSError("worker lost")

    monkeypatch.setattr(Storage, "write_bytes", crash_after_first)
    with pytest.raises(OSError):
        materialize(table_root, "curated", None, out, ViewSpec("chat", shard_rows=40))
    monkeypatch.setattr(Storage, "write_bytes", real_write)
    with pytest.raises(ViewExists, match="unfinished shards of another view"):
        materialize(table_root, "curated", None, out, ViewSpec("chat", shard_rows=41))


@pytest.mark.parametrize("bad, message", [
    ({"format": "csv"}, "unknown format"), ({"format": "chat", "compression": "lz4"}, "unknown compression"),
    ({"format": "chat", "split": "dev"}, "unknown split"), ({"format": "chat", "shard_rows": 0}, "at least 1"),
    ({"format": "chat", "options": {"assistant_weight": "quality"}}, "assistant weight"),
])
def test_bad_options_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        if isinstance(bad.get("options"), dict):
            bad = {**bad, "options": FormatOptions(**bad["options"])}
        ViewSpec(**bad)


def test_dctp_materialize_command(table_root, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["--json", "materialize", "2", "--format", "chat", "--out", str(out), "--split", "train",
                 "--shard-rows", "60", "--compression", "gzip", "--where", "quality >= 0.2", "--no-synthetic",
                 "--system-prompt", "hi", "--assistant-weight", "sampling_weight", "--with-weights"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    manifest = read_manifest(Storage(out.as_uri()))
    assert printed["rows"] == manifest["rows"] > 0 and manifest["split"] == "train"
    assert manifest["options"] == {"system_prompt": "hi", "assistant_weight": "sampling_weight",
                                   "with_weights": True}
    records = lines_of(Storage(out.as_uri()), manifest)
    assert all(r["messages"][0] == {"role": "system", "content": "hi"} and "sampling_weight" in r for r in records)
    assert main(["materialize", "2", "--format", "chat", "--out", str(out), "--where", "__import__('os')"]) == 2
    assert "only comparisons" in capsys.readouterr().err


def test_the_view_carries_its_dataset_card(table_root, tmp_path):
    from huggingface_hub import DatasetCard

    manifest = materialize(table_root, "curated", None, out := view(tmp_path, "card"), ViewSpec("chat", shard_rows=60))
    card = DatasetCard(out.read_bytes(out.path("README.md")).decode())
    [config] = card.data.configs
    listed = {entry["split"]: entry["path"] if isinstance(entry["path"], list) else [entry["path"]]
              for entry in config["data_files"]}
    assert listed == {split: [f["path"] for f in manifest["files"] if f["split"] == split]
                      for split in manifest["splits"]}
    assert "run-1" in card.text and "run-2" in card.text


def test_dctp_card_and_validate_commands(table_root, tmp_path, capsys, monkeypatch):
    assert main(["card", "2", "--out", str(tmp_path / "card.md")]) == 0
    assert (tmp_path / "card.md").read_text().startswith("---\n")
    capsys.readouterr()
    assert main(["--json", "validate", "2", "--html", str(tmp_path / "report.html")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["rows"] == 500 and {c["name"] for c in out["checks"]} >= {"schema", "split_leakage"}
    assert "split_leakage" in (tmp_path / "report.html").read_text()
    strict = tmp_path / "strict.yaml"
    strict.write_text("export:\n  validation:\n    max_source_share: 0.5\n    severities: {balance: error}\n")
    monkeypatch.setenv("DCTP_CONFIG", str(strict))
    assert main(["validate", "2"]) == 1  # "web" holds two thirds of the rows
    assert "FAILED (balance)" in capsys.readouterr().out
