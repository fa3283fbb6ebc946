from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.ingest import QuarantineRatioExceeded, ingest_day
from dctp_tasks.records import CORE_SCHEMA, derive_doc_id
from dctp_tasks.staging import stage_rejects, stage_rows
from dctp_tasks.storage import Storage

DAG = "dag"
DT = "2026-03-01"
TEXT = "A perfectly ordinary document with enough words in it."


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def lenient(**overrides):
    """Config that never fails on the quarantine ratio, so bad-input tests see every reject."""
    return load_config(overrides={"ingest.max_quarantine_ratio": 1.0, **overrides})


def land(storage: Storage, source: str, name: str, data: bytes, dt: str = DT) -> str:
    """Write a landing file; return its path relative to the root (what the ledger records)."""
    path = storage.path("landing", source, f"dt={dt}", name)
    storage.write_bytes(path, data)
    return storage.relative(path)


def jsonl(*rows) -> bytes:
    return b"".join(orjson.dumps(row) + b"\n" for row in rows)


def csv_bytes(header: list[str], *rows: list) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue().encode()


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def ingested(storage: Storage) -> pa.Table:
    return storage.read_table(stage_rows(storage, DAG, DT, "ingest"))


def read_rejects(storage: Storage, dt: str = DT) -> pa.Table:
    """Return the rows the current ingest output of ``dt`` quarantined."""
    return stage_rejects(storage, DAG, dt, "ingest")


def reject_rows(storage: Storage) -> list[tuple]:
    rows = read_rejects(storage, DT).to_pylist()
    return sorted((r["reason"], r["file"], r["line"]) for r in rows)


def assert_balanced(storage: Storage, result) -> None:
    rejects = read_rejects(storage, DT)
    assert result.total == result.kept + result.dropped
    assert result.kept == ingested(storage).num_rows
    assert rejects.num_rows == result.dropped
    assert set(rejects.column("outcome").to_pylist()) <= {"quarantined"}
    assert set(rejects.column("stage").to_pylist()) <= {"ingest"}


# -- bad input: one case per kind; each ends quarantined with its reason, file and line -------------------------

def _truncated_parquet() -> bytes:
    data = parquet_bytes(pa.table({"id": ["a", "b"], "text": [TEXT, TEXT]}))
    return data[: len(data) - 30]  # footer gone


BAD_INPUTS = {
    # name: (file name, bytes, reason, line, good rows kept from the same file)
    "malformed_json": ("a.jsonl", jsonl({"id": "1", "text": TEXT}) + b'{"id": "2", "text": \n',
                       "malformed_json", 2, 1),
    "undecodable_jsonl": ("a.jsonl", b'{"id": "1", "text": "caf\xe9 au lait"}\n' + jsonl({"id": "2", "text": TEXT}),
                          "undecodable_bytes", 1, 1),
    "undecodable_csv": ("a.csv", b"id,text\n1,fine text\n2,caf\xe9 au lait\n", "undecodable_bytes", 3, 1),
    "missing_text": ("a.jsonl", jsonl({"id": "1", "title": "no text column"}, {"id": "2", "text": TEXT}),
                     "missing_text", 1, 1),
    "null_text": ("a.jsonl", jsonl({"id": "2", "text": TEXT}, {"id": "1", "text": None}), "missing_text", 2, 1),
    "blank_text": ("a.jsonl", jsonl({"id": "1", "text": "   \n "}), "missing_text", 1, 0),
    "text_is_a_number": ("a.jsonl", jsonl({"id": "1", "text": 42}), "wrong_type", 1, 0),
    "id_is_a_list": ("a.jsonl", jsonl({"id": ["1"], "text": TEXT}), "wrong_type", 1, 0),
    "line_is_an_array": ("a.jsonl", jsonl({"id": "1", "text": TEXT}, [1, 2]), "not_an_object", 2, 1),
    "bad_timestamp": ("a.jsonl", jsonl({"id": "1", "text": TEXT, "created_at": "last tuesday"}),
                      "bad_timestamp", 1, 0),
    "csv_wrong_field_count": ("a.csv", b"id,text\n1,one\n2,two,extra\n3,three\n", "wrong_field_count", 3, 2),
    "empty_jsonl": ("a.jsonl", b"", "empty_file", 0, 0),
    "blank_lines_only": ("a.jsonl", b"\n  \n\r\n", "empty_file", 0, 0),
    "empty_jsonl_gz": ("a.jsonl.gz", b"", "empty_file", 0, 0),
    "empty_csv": ("a.csv", b"", "empty_file", 0, 0),
    "csv_header_only": ("a.csv", b"id,text\n", "empty_file", 0, 0),
    "empty_parquet_0_bytes": ("a.parquet", b"", "empty_file", 0, 0),
    "parquet_without_rows": ("a.parquet", parquet_bytes(pa.table({"id": pa.array([], pa.string()),
                                                                   "text": pa.array([], pa.string())})),
                             "empty_file", 0, 0),
    "truncated_parquet": ("a.parquet", _truncated_parquet(), "unreadable_file", 0, 0),
    "garbage_parquet": ("a.parquet", b"this is not parquet at all", "unreadable_file", 0, 0),
    "unsupported_extension": ("notes.txt", b"some notes\n", "unsupported_format", 0, 0),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_quarantined_with_reason_file_and_line(storage, case):
    name, data, reason, line, good = BAD_INPUTS[case]
    file = land(storage, "web", name, data)

    result = ingest_day(storage, lenient(), DAG, DT)

    assert reject_rows(storage) == [(reason, file, line)]
    assert result.kept == good
    assert result.dropped_by_reason == {reason: 1}
    assert_balanced(storage, result)


def test_quarantined_rows_carry_source_detail_and_a_doc_id(storage):
    file = land(storage, "web", "a.jsonl", jsonl({"id": "7", "text": 42}) + b"{oops\n")

    ingest_day(storage, lenient(), DAG, DT)

    rows = {r["reason"]: r for r in read_rejects(storage, DT).to_pylist()}
    assert rows["wrong_type"]["doc_id"] == "web/7"  # the id was readable: the reject keeps it
    assert "'text' must be a string, got int" in rows["wrong_type"]["detail"]
    assert rows["malformed_json"]["doc_id"] == f"web/quarantine:{file}:2"
    assert rows["malformed_json"]["detail"]
    assert {r["source"] for r in rows.values()} == {"web"}
    assert {r["dt"] for r in rows.values()} == {DT}


def test_duplicate_doc_id_within_a_day_is_quarantined(storage):
    land(storage, "web", "a.jsonl", jsonl({"id": "1", "text": TEXT}, {"id": "2", "text": TEXT}))
    second = land(storage, "web", "b.jsonl", jsonl({"id": "3", "text": TEXT}, {"id": "1", "text": "a re-send"}))

    result = ingest_day(storage, lenient(), DAG, DT)

    assert reject_rows(storage) == [("duplicate_id", second, 2)]
    assert read_rejects(storage, DT).column("doc_id").to_pylist() == ["web/1"]
    assert ingested(storage).column("doc_id").to_pylist() == ["web/1", "web/2", "web/3"]
    assert ingested(storage).column("text").to_pylist()[0] == TEXT  # the first one read wins
    assert_balanced(storage, result)


def _gzip_cut(rows: int) -> tuple[bytes, int]:
    """Return a gzip stream of ``rows`` JSON lines cut mid-way, and how many complete lines survive the cut."""
    data = b"".join(orjson.dumps({"id": str(i), "text": f"{TEXT} #{i} " + "lorem ipsum " * (i % 7)}) + b"\n"
                    for i in range(rows))
    compressed = gzip.compress(data)
    cut = compressed[: len(compressed) // 2]
    readable = zlib.decompressobj(wbits=31).decompress(cut)
    return cut, readable.count(b"\n")


def test_truncated_jsonl_gz_keeps_complete_lines_and_quarantines_the_cut(storage):
    cut, complete = _gzip_cut(20_000)
    assert 0 < complete < 20_000
    file = land(storage, "web", "big.jsonl.gz", cut)

    result = ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == [f"web/{i}" for i in range(complete)]
    assert reject_rows(storage) == [("truncated_file", file, complete + 1)]
    assert_balanced(storage, result)


def test_truncated_csv_gz_keeps_complete_rows_and_quarantines_the_cut(storage):
    data = csv_bytes(["id", "text"], *[[str(i), f"{TEXT} #{i}"] for i in range(5_000)])
    compressed = gzip.compress(data)
    cut = compressed[: len(compressed) // 2]
    complete = zlib.decompressobj(wbits=31).decompress(cut).count(b"\n") - 1  # minus the header
    file = land(storage, "web", "big.csv.gz", cut)

    result = ingest_day(storage, lenient(), DAG, DT)

    kept = ingested(storage).column("doc_id").to_pylist()
    assert kept == [f"web/{i}" for i in range(len(kept))]
    assert 0 < len(kept) <= complete
    assert reject_rows(storage) == [("truncated_file", file, len(kept) + 2)]  # header is line 1
    assert_balanced(storage, result)


def test_csv_field_longer_than_the_csv_modules_default_limit_is_read(storage):
    long_text = "word " * 40_000  # 200 kB, above csv's default 128 KiB field limit
    land(storage, "web", "long.csv", csv_bytes(["id", "text"], ["1", "short"], ["2", long_text], ["3", "after"]))

    result = ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["web/1", "web/2", "web/3"]
    assert ingested(storage).column("text").to_pylist()[1] == long_text
    assert result.dropped == 0


@pytest.fixture
def tiny_csv_field_limit(monkeypatch):
    """Make the csv parser reject fields over 64 characters, as it would a field over its real limit."""
    from dctp_tasks.ingest import readers

    monkeypatch.setattr(readers, "_CSV_FIELD_LIMIT", 64)
    previous = csv.field_size_limit(64)
    yield
    csv.field_size_limit(previous)


def test_csv_row_the_parser_rejects_is_quarantined_and_the_file_goes_on(storage, tiny_csv_field_limit):
    file = land(storage, "web", "a.csv", csv_bytes(["id", "text"], ["1", "short"], ["2", "x" * 100], ["3", "after"],
                                                    ["4", "last"]))

    result = ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["web/1", "web/3", "web/4"]
    assert reject_rows(storage) == [("malformed_csv", file, 3)]
    assert "field larger than field limit" in read_rejects(storage, DT).column("detail")[0].as_py()
    assert_balanced(storage, result)


def test_every_kind_of_bad_input_in_one_day_balances_the_ledger(storage):
    expected = []
    good = 0
    # Ids repeat across the case files: each gets its own (default-mapped) source so they are not duplicates.
    for case, (name, data, reason, line, kept) in BAD_INPUTS.items():
        file = land(storage, case, name, data)
        expected.append((reason, file, line))
        good += kept
    cut, complete = _gzip_cut(3_000)
    expected.append(("truncated_file", land(storage, "cut", "cut.jsonl.gz", cut), complete + 1))
    good += complete
    dup = land(storage, "instruct", "x.jsonl", jsonl({"uid": "u1", "text": TEXT}, {"uid": "u1", "text": TEXT}))
    expected.append(("duplicate_id", dup, 2))
    good += 1

    result = ingest_day(storage, lenient(), DAG, DT)

    assert result.kept == good
    assert reject_rows(storage) == sorted(expected)
    assert result.total == good + len(expected)
    assert_balanced(storage, result)


# -- the quarantine-ratio limit ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("limit", "bad", "fails"), [(0.1, 2, False), (0.1, 3, True), (0.0, 2, True),
                                                     (0.5, 29, False), (0.5, 30, True)])
def test_quarantine_ratio_limit(storage, limit, bad, fails):
    # 30 good rows; ``bad`` malformed lines in the worst file and one in another: ratio = (bad + 1) / (31 + bad).
    # The limit is inclusive: exactly 50 % quarantined passes a 0.5 limit.
    assert fails == ((bad + 1) / (31 + bad) > limit)
    land(storage, "web", "good.jsonl", jsonl(*[{"id": str(i), "text": TEXT} for i in range(20)]))
    land(storage, "web", "less-bad.jsonl", b"{not json\n" + jsonl(*[{"id": f"b{i}", "text": TEXT} for i in range(10)]))
    worst = land(storage, "web", "mostly-bad.jsonl", b"{not json\n" * bad)
    config = load_config(overrides={"ingest.max_quarantine_ratio": limit})

    if fails:
        with pytest.raises(QuarantineRatioExceeded) as err:
            ingest_day(storage, config, DAG, DT)
        message = str(err.value)
        assert f"worst file: {worst} with {bad} of {bad} rows quarantined" in message
        assert f"{bad + 1} of {31 + bad} rows" in message
        assert f"limit of {limit:.1%}" in message
    else:
        ingest_day(storage, config, DAG, DT)
    # Either way the day's output and rejects are written, so `dctp ledger` can show them.
    assert read_rejects(storage, DT).num_rows == bad + 1
    assert ingested(storage).num_rows == 30


# -- per-source mappings ----------------------------------------------------------------------------------------

def test_forum_comment_text_maps_to_text_with_domain_default(storage):
    land(storage, "forum", "f.jsonl", jsonl({"comment_id": 17, "comment_text": TEXT,
                                             "posted_at": "2026-03-01T10:00:00Z", "votes": 3}))

    ingest_day(storage, lenient(), DAG, DT)

    row = ingested(storage).to_pylist()[0]
    assert row["doc_id"] == "forum/17"
    assert row["text"] == TEXT
    assert row["domain"] == "forum"
    assert row["created_at"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert json.loads(row["meta"]) == {"votes": 3, "_file": f"landing/forum/dt={DT}/f.jsonl", "_line": 1}


def test_news_title_and_description_are_joined_into_text(storage):
    land(storage, "news", "n.csv", csv_bytes(["article_id", "title", "description", "category", "published"],
                                              ["n1", "Big news", "It happened today.", "world", "2026-03-01"],
                                              ["n2", "", "Only a description.", "", ""]))

    ingest_day(storage, lenient(), DAG, DT)

    rows = ingested(storage).to_pylist()
    assert [r["text"] for r in rows] == ["Big news\n\nIt happened today.", "Only a description."]
    assert [r["domain"] for r in rows] == ["world", None]  # an empty CSV cell is missing
    assert rows[0]["created_at"] == datetime(2026, 3, 1, tzinfo=UTC)
    assert rows[1]["created_at"] is None


def test_chosen_column_mapped_to_text(storage):
    config = lenient(**{"ingest.sources.prefs": {"fields": {"text": "chosen", "doc_id": "pair_id"}}})
    land(storage, "prefs", "p.jsonl", jsonl({"pair_id": "p1", "chosen": "the better answer", "rejected": "worse"}))

    ingest_day(storage, config, DAG, DT)

    row = ingested(storage).to_pylist()[0]
    assert (row["doc_id"], row["text"]) == ("prefs/p1", "the better answer")
    assert json.loads(row["meta"])["rejected"] == "worse"


def test_id_column_gives_source_slash_id_and_no_id_gives_text_hash(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": 5, "text": "with an id"}, {"text": "without an id"},
                                          {"id": "", "text": "empty id"}))

    ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == [
        "web/5", derive_doc_id("web", None, "without an id"), derive_doc_id("web", None, "empty id")]
    assert ingested(storage).column("doc_id").to_pylist()[1].startswith("web/sha1:")


def test_unmapped_fields_and_given_meta_are_kept_in_meta(storage):
    land(storage, "web", "w.jsonl", b"\n" + jsonl({"id": "1", "text": TEXT, "url": "https://x.test/1",
                                                   "tags": ["a", "b"], "meta": {"license": "cc-by"}}))

    ingest_day(storage, lenient(), DAG, DT)

    meta = json.loads(ingested(storage).column("meta")[0].as_py())
    assert meta == {"url": "https://x.test/1", "tags": ["a", "b"], "license": "cc-by",
                    "_file": f"landing/web/dt={DT}/w.jsonl", "_line": 2}


def test_prompt_and_response_render_text_when_text_is_absent(storage):
    land(storage, "instruct", "i.jsonl", jsonl({"uid": "q1", "prompt": "What is 2+2?", "response": "4."},
                                               {"uid": "q2", "prompt": "Hi", "response": "Hello", "text": "given"},
                                               {"uid": "q3", "prompt": "only a prompt"}))

    result = ingest_day(storage, lenient(), DAG, DT)

    rows = ingested(storage).to_pylist()
    assert [(r["doc_id"], r["text"], r["prompt"], r["response"], r["domain"]) for r in rows] == [
        ("instruct/q1", "What is 2+2?\n\n4.", "What is 2+2?", "4.", "instruction"),
        ("instruct/q2", "given", "Hi", "Hello", "instruction"),
    ]
    assert reject_rows(storage) == [("missing_text", f"landing/instruct/dt={DT}/i.jsonl", 3)]
    assert_balanced(storage, result)


def test_records_have_the_core_schema_and_an_ingest_lineage_step(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": "1", "text": TEXT}))

    result = ingest_day(storage, lenient(), DAG, DT)

    table = ingested(storage)
    assert table.schema == CORE_SCHEMA
    row = table.to_pylist()[0]
    assert (row["source"], row["dt"], row["synthetic"], row["sampling_weight"]) == ("web", DT, False, 1.0)
    assert [s["name"] for s in row["lineage"]["steps"]] == ["ingest"]
    assert result.output_uri == storage.uri(stage_rows(storage, DAG, DT, "ingest"))


def test_include_sources_reads_only_the_listed_folders(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": "1", "text": TEXT}))
    land(storage, "forum", "f.jsonl", jsonl({"comment_id": "1", "comment_text": TEXT}))
    land(storage, "news", "n.jsonl", b"{broken\n")

    result = ingest_day(storage, lenient(**{"ingest.include_sources": ["forum"]}), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["forum/1"]
    assert result.total == 1 and result.extra["files"] == 1
    assert read_rejects(storage, DT).num_rows == 0


def test_disabled_source_is_skipped(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": "1", "text": TEXT}))
    land(storage, "forum", "f.jsonl", jsonl({"comment_id": "1", "comment_text": TEXT}))

    ingest_day(storage, lenient(**{"ingest.sources.web.enabled": False}), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["forum/1"]


def test_only_the_runs_date_is_read(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": "1", "text": TEXT}))
    land(storage, "web", "w.jsonl", jsonl({"id": "2", "text": TEXT}), dt="2026-03-02")

    ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["web/1"]


def test_gzip_jsonl_and_csv_gz_are_read(storage):
    land(storage, "web", "a.jsonl.gz", gzip.compress(jsonl({"id": "g1", "text": "gz json ünïcode"})))
    land(storage, "web", "b.csv.gz", gzip.compress(b"\xef\xbb\xbf" + csv_bytes(
        ["id", "text", "created_at"], ["g2", "gz csv, with a comma\nand a newline", "2026-03-01T12:00:00+02:00"])))
    land(storage, "web", "c.parquet", parquet_bytes(pa.table({"id": [3], "text": ["parquet row"]})))

    result = ingest_day(storage, lenient(), DAG, DT)

    rows = ingested(storage).to_pylist()
    assert [(r["doc_id"], r["text"]) for r in rows] == [
        ("web/g1", "gz json ünïcode"), ("web/g2", "gz csv, with a comma\nand a newline"), ("web/3", "parquet row")]
    assert rows[1]["created_at"] == datetime(2026, 3, 1, 10, tzinfo=UTC)
    assert result.total == result.kept == 3


def test_utf8_bom_at_the_start_of_a_jsonl_file_is_ignored(storage):
    land(storage, "web", "bom.jsonl", b"\xef\xbb\xbf" + jsonl({"id": "1", "text": TEXT}, {"id": "2", "text": TEXT}))

    result = ingest_day(storage, lenient(), DAG, DT)

    assert ingested(storage).column("doc_id").to_pylist() == ["web/1", "web/2"]
    assert result.dropped == 0


def test_batches_smaller_than_the_day_give_the_same_rows(storage):
    rows = [{"id": str(i), "text": f"{TEXT} {i}"} for i in range(25)]
    land(storage, "web", "w.jsonl", jsonl(*rows))

    ingest_day(storage, lenient(batch_size=4), DAG, DT)
    small = ingested(storage)
    ingest_day(storage, lenient(), DAG, DT)

    assert small.to_pylist() == ingested(storage).to_pylist()


def test_rerun_replaces_its_own_output_and_rejects(storage):
    land(storage, "web", "w.jsonl", jsonl({"id": "1", "text": TEXT}) + b"{bad\n")
    first = ingest_day(storage, lenient(), DAG, DT)

    second = ingest_day(storage, lenient(), DAG, DT)

    assert first.as_dict()["total"] == second.as_dict()["total"] == 2
    assert ingested(storage).num_rows == 1
    assert read_rejects(storage, DT).num_rows == 1


def test_empty_day_writes_an_empty_dataset(storage):
    result = ingest_day(storage, load_config(), DAG, DT)

    assert (result.total, result.kept, result.dropped) == (0, 0, 0)
    assert ingested(storage).num_rows == 0
    assert ingested(storage).schema == CORE_SCHEMA


# -- PostgreSQL source --------------------------------------------------------------------------------------------

def test_postgres_source_reads_only_the_interval(storage, pg_conn, pg_table_name):
    import psycopg2

    dsn = pg_conn.dsn
    with pg_conn.cursor() as cur:
        cur.execute(f'CREATE TABLE public."{pg_table_name}" (id integer PRIMARY KEY, body text, topic text, '
                    "published_at timestamptz, author text)")
        cur.executemany(f'INSERT INTO public."{pg_table_name}" VALUES (%s, %s, %s, %s, %s)', [
            (1, "before the interval", "x", "2026-02-28T23:59:59Z", "ann"),
            (2, "at the start", "science", "2026-03-01T00:00:00Z", "bob"),
            (3, "inside the interval", "sport", "2026-03-01T18:30:00+02:00", "cy"),
            (4, "at the end (excluded)", "x", "2026-03-02T00:00:00Z", "dee"),
            (5, None, "x", "2026-03-01T12:00:00Z", "eve"),
        ])
    config = lenient(**{"ingest.sources.articles_db.enabled": True,
                        "ingest.sources.articles_db.postgres.table": pg_table_name})
    asked: list[str] = []

    def connect(conn_id: str):
        asked.append(conn_id)
        return psycopg2.connect(dsn)

    result = ingest_day(storage, config, DAG, DT, interval=(datetime(2026, 3, 1, tzinfo=UTC),
                                                            datetime(2026, 3, 2, tzinfo=UTC)), connect=connect)

    assert asked == ["dctp_source_pg"]
    rows = ingested(storage).to_pylist()
    assert [(r["doc_id"], r["text"], r["domain"], r["created_at"]) for r in rows] == [
        ("articles_db/2", "at the start", "science", datetime(2026, 3, 1, tzinfo=UTC)),
        ("articles_db/3", "inside the interval", "sport", datetime(2026, 3, 1, 16, 30, tzinfo=UTC)),
    ]
    assert json.loads(rows[0]["meta"]) == {"author": "bob", "_file": f"postgresql:public.{pg_table_name}",
                                           "_line": 1}
    # The in-interval row without a body is quarantined, not lost.
    assert reject_rows(storage) == [("missing_text", f"postgresql:public.{pg_table_name}", 2)]
    assert_balanced(storage, result)


def test_postgres_source_without_connection_factory_is_an_error(storage):
    config = lenient(**{"ingest.sources.articles_db.enabled": True})

    with pytest.raises(ValueError, match="'articles_db' reads PostgreSQL"):
        ingest_day(storage, config, DAG, DT)
