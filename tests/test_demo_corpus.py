"""The demo corpus: deterministic bytes, the declared formats, and every kind of mess the pipeline must handle."""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import html
import io
import json
import os
import re
import time
import unicodedata
import uuid
import zlib
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dctp_tasks.storage import Storage
from include import demo_corpus
from include.demo_corpus import generate

DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]
SOURCES = ("web", "forum", "news", "instruct")
PG_DSNS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("corpus")
    return root, generate(Storage(f"file://{root}"), DATES)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _day_dir(root: Path, source: str, day: str) -> Path:
    return root / "landing" / source / f"dt={day}"


def _decompress_tolerant(data: bytes) -> bytes:
    """Decode as much of a (possibly truncated) gzip stream as there is."""
    return zlib.decompressobj(wbits=31).decompress(data)


def _parse_jsonl(data: bytes, id_key: str, text_keys: tuple[str, ...]) -> tuple[list[dict], int]:
    """Split JSONL into valid records and a count of malformed lines (the ingest contract, restated)."""
    good, bad = [], 0
    for line in data.split(b"\n"):
        if not line:
            continue
        try:
            rec = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            bad += 1
            continue
        if isinstance(rec.get(id_key), str) and all(isinstance(rec.get(k), str) for k in text_keys):
            good.append(rec)
        else:
            bad += 1
    return good, bad


def _web(root: Path, day: str) -> tuple[list[dict], int]:
    records, bad = [], 0
    for path in sorted(_day_dir(root, "web", day).iterdir()):
        data = path.read_bytes()
        data = _decompress_tolerant(data) if path.name.endswith(".gz") else data
        good, n_bad = _parse_jsonl(data, "id", ("text",))
        records, bad = records + good, bad + n_bad
    return records, bad


def _forum(root: Path, day: str) -> tuple[list[list[str]], int, list[str]]:
    text = (_day_dir(root, "forum", day) / "comments.csv").read_bytes().decode("utf-8")
    header, *rows = list(csv.reader(io.StringIO(text, newline="")))
    return [r for r in rows if len(r) == len(header)], sum(len(r) != len(header) for r in rows), header


def _news(root: Path, day: str) -> pa.Table:
    return pq.read_table(_day_dir(root, "news", day) / "articles.parquet")


def _instruct(root: Path, day: str) -> tuple[list[dict], int]:
    return _parse_jsonl((_day_dir(root, "instruct", day) / "pairs.jsonl").read_bytes(), "uid", ("prompt", "response"))


def _texts(root: Path, day: str) -> dict[str, list[str]]:
    news = _news(root, day).to_pylist()
    return {
        "web": [r["text"] for r in _web(root, day)[0]],
        "forum": [r[1] for r in _forum(root, day)[0]],
        "news": [r["title"] + "\n\n" + (r["description"] or "") for r in news],
        "instruct": [r["prompt"] + "\n\n" + r["response"] for r in _instruct(root, day)[0]],
    }


def _normalize(text: str) -> str:
    """A reference normalizer: what a text-cleaning stage is expected to undo."""
    text = text.replace("\r\n", "\n")
    if "Ã" in text or "â" in text:
        try:
            text = text.encode("cp1252").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    text = unicodedata.normalize("NFC", html.unescape(text)).replace("\u00a0", " ")
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) not in ("Cc", "Cf"))
    return re.sub(r"[ \t]+", " ", text).strip()


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        generate(Storage(f"file://{tmp_path / name}"), DATES, seed=seed)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a if a[k])  # every non-empty file changes with the seed


def test_a_date_does_not_depend_on_the_other_requested_dates(tmp_path: Path, corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    generate(Storage(f"file://{tmp_path}"), ["2026-01-02"])
    alone = _files(tmp_path)
    assert alone == {k: v for k, v in _files(root).items() if "dt=2026-01-02" in k}


def test_every_source_has_files_for_every_date_and_summary_matches(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    assert sorted(summary["dates"]) == DATES
    for day in DATES:
        for source in SOURCES:
            listed = summary["dates"][day][source]["files"]
            assert listed and all((root / f).is_file() for f in listed)
            assert sorted(listed) == sorted(f"landing/{source}/dt={day}/{p.name}"
                                            for p in _day_dir(root, source, day).iterdir())
        web, web_bad = _web(root, day)
        forum, forum_bad, _ = _forum(root, day)
        pairs, pair_bad = _instruct(root, day)
        counted = {"web": (len(web), web_bad), "forum": (len(forum), forum_bad),
                   "news": (_news(root, day).num_rows, 0), "instruct": (len(pairs), pair_bad)}
        for source, (rows, bad) in counted.items():
            assert (summary["dates"][day][source]["rows"], summary["dates"][day][source]["malformed"]) == (rows, bad)
        # 600 minus the database's 10 %, plus the readable head of the truncated file on the broken day
        assert sum(rows for rows, _ in counted.values()) == 540 + (8 if day == "2026-01-02" else 0)


def test_formats_are_as_declared(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    suffixes = Counter()
    for day in DATES:
        for path in _day_dir(root, "web", day).iterdir():
            suffixes[".jsonl.gz" if path.name.endswith(".gz") else ".jsonl"] += 1
        complete_gz = _day_dir(root, "web", day) / "part-1.jsonl.gz"
        assert complete_gz.read_bytes()[:2] == b"\x1f\x8b"
        assert _parse_jsonl(gzip.decompress(complete_gz.read_bytes()), "id", ("text",))[1] == 0
        records, _ = _web(root, day)
        assert {r["domain"] for r in records} == {"science", "technology", "health", "finance", "travel"}
        assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["created_at"]) for r in records)
        assert all(r["created_at"].startswith(day) and r["url"].startswith("https://") for r in records)
        assert _forum(root, day)[2] == ["comment_id", "comment_text", "posted_at", "thread"]
        news = _news(root, day)
        assert news.schema.names == ["article_id", "title", "description", "category", "published"]
        assert news.schema.field("article_id").type == pa.int64()
        assert news.schema.field("published").type == pa.timestamp("us", tz="UTC")
        assert set(news.column("category").to_pylist()) == {"world", "sports", "business", "scitech"}
        assert len(news.column("article_id").unique()) == news.num_rows
        assert {str(t.date()) for t in news.column("published").to_pylist()} == {day}
        assert news.column("description").null_count > 0  # title-only items exist
        pairs, _ = _instruct(root, day)
        assert pairs and all("text" not in p and p["created_at"].startswith(day) for p in pairs)
    assert suffixes[".jsonl"] >= 3 and suffixes[".jsonl.gz"] >= 3


def test_forum_has_multiline_quoted_comments(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    rows, _, _ = _forum(root, DATES[0])
    assert sum("\n" in text for _, text, _, _ in rows) > 5
    assert any('"' in text for _, text, _, _ in rows)


def test_malformed_input_is_a_small_known_set(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    broken_days = [d for d in DATES if (_day_dir(root, "web", d) / "empty.jsonl").exists()]
    assert broken_days == ["2026-01-02"]
    assert (_day_dir(root, "web", "2026-01-02") / "empty.jsonl").stat().st_size == 0
    truncated = (_day_dir(root, "web", "2026-01-02") / "part-2.jsonl.gz").read_bytes()
    with pytest.raises(EOFError):
        gzip.decompress(truncated)
    lines = _decompress_tolerant(truncated).split(b"\n")
    assert [json.loads(line)["id"][-4:] for line in lines[:-1]] == [f"t{k:03d}" for k in range(8)]
    with pytest.raises(json.JSONDecodeError):
        json.loads(lines[-1])  # the stream stops inside the ninth record
    for day in DATES:
        part0 = (_day_dir(root, "web", day) / "part-0.jsonl").read_bytes()
        bad_lines = [line for line in part0.split(b"\n") if b"-bad-" in line]
        assert len(bad_lines) == 5 and _parse_jsonl(part0, "id", ("text",))[1] == 5
        kinds = set()
        for line in bad_lines:
            try:
                rec = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                kinds.add("invalid_utf8")
                continue
            except json.JSONDecodeError:
                kinds.add("broken_json")
                continue
            kinds.add("no_text" if "text" not in rec
                      else "text_not_str" if isinstance(rec["text"], int) else "id_list")
        assert kinds == {"invalid_utf8", "broken_json", "no_text", "text_not_str", "id_list"}
        assert _forum(root, day)[1] == 1 and _instruct(root, day)[1] == 1
        entries = summary["dates"][day].values()
        malformed, rows = sum(e["malformed"] for e in entries), sum(e["rows"] for e in entries)
        assert 6 <= malformed and malformed / (rows + malformed) < 0.02  # far under the 5 % quarantine limit


def test_exact_duplicates_within_a_day_across_sources_and_across_days(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    texts = {day: _texts(root, day) for day in DATES}
    for day in DATES:
        counts = Counter(t for source in SOURCES for t in texts[day][source])
        assert sum(c - 1 for c in counts.values() if c > 1) >= 15
        assert set(texts[day]["web"]) & set(texts[day]["forum"])  # the same text under two sources' ids
        assert len(texts[day]["news"]) > len(set(texts[day]["news"]))
        assert len(texts[day]["instruct"]) > len(set(texts[day]["instruct"]))
    for later in DATES[1:]:
        earlier = {t for day in DATES if day < later for s in SOURCES for t in texts[day][s] if len(t) > 50}
        repeated = [t for s in SOURCES for t in texts[later][s] if t in earlier]
        assert len(repeated) >= 5
    assert summary["dates"]["2026-01-02"]["web"]["variants"]["dup_prev_days"] > 0


@pytest.mark.parametrize("damage", [
    pytest.param(lambda t: "Ã" in t, id="mojibake"),
    pytest.param(lambda t: re.search(r"&(amp|quot|#x27|lt|gt);", t), id="html_entities"),
    pytest.param(lambda t: not unicodedata.is_normalized("NFC", t), id="not_nfc"),
    pytest.param(lambda t: "\r\n" in t, id="crlf"),
    pytest.param(lambda t: "   " in t, id="space_runs"),
    pytest.param(lambda t: "\u00a0" in t, id="nbsp"),
    pytest.param(lambda t: any(unicodedata.category(c) in ("Cc", "Cf") and c not in "\n\t" for c in t), id="control"),
])
def test_damaged_texts_normalize_to_an_existing_clean_doc(corpus: tuple[Path, dict], damage) -> None:
    root, _ = corpus
    all_texts = [t for day in DATES for ts in _texts(root, day).values() for t in ts]
    clean = {t for t in all_texts if _normalize(t) == t}
    damaged = [t for t in all_texts if damage(t)]
    collapsing = [t for t in damaged if _normalize(t) != t and _normalize(t) in clean]
    assert len(collapsing) >= 2


def test_quality_mix_languages_toxicity_and_pii(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    texts = [t for day in DATES for ts in _texts(root, day).values() for t in ts]
    blob = "\n".join(texts)
    lengths = [len(t) for t in texts]
    assert sum(60 <= n <= 1500 for n in lengths) / len(lengths) > 0.8
    assert sum(n < 50 for n in lengths) >= 10
    for needle in ("marché", "Die Forscher", "Los investigadores",  # non-English
                   "you are an idiot", "moron",  # toxic
                   "jane.doe@example.com", "+1 415-555-0134", "203.0.113.42", "4111 1111 1111 1111",
                   "GB82 WEST 1234 5698 7654 32",  # PII
                   "BUY NOW!!!", "lorem", "free shipping",  # spam, filler, keyword lists
                   "By ", "All rights reserved."):  # near-duplicate bylines and boilerplate
        assert needle in blob, needle
    assert sum(t.isupper() and len(t) > 60 for t in texts) >= 3  # shouting


def test_scales_fast_and_rejects_days_too_small_for_the_quarantine_limit(tmp_path: Path) -> None:
    start = time.perf_counter()
    summary = generate(Storage(f"file://{tmp_path / 'small'}"), DATES, rows_per_day=600)
    assert time.perf_counter() - start < 5
    big = generate(Storage(f"file://{tmp_path / 'big'}"), ["2026-02-03"], rows_per_day=5000)
    day = big["dates"]["2026-02-03"]
    assert sum(e["rows"] for e in day.values()) == 4500  # every source but the database's 10 %
    assert day["web"]["malformed"] == summary["dates"]["2026-01-01"]["web"]["malformed"]
    with pytest.raises(ValueError, match="rows_per_day=100"):
        generate(Storage(f"file://{tmp_path / 'tiny'}"), DATES, rows_per_day=100)
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        generate(Storage(f"file://{tmp_path / 'bad'}"), ["01/02/2026"])


def test_cli_prints_the_summary(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert demo_corpus.main(["--root", f"file://{tmp_path}", "--dates", "2026-01-03", "--seed", "3",
                             "--rows-per-day", "300"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["seed"] == 3 and summary["dates"]["2026-01-03"]["web"]["rows"] == 120
    assert (tmp_path / "landing" / "news" / "dt=2026-01-03" / "articles.parquet").is_file()


@pytest.fixture
def pg_conn():
    psycopg2 = pytest.importorskip("psycopg2")
    errors = []
    for dsn in PG_DSNS:
        try:
            conn = psycopg2.connect(dsn, connect_timeout=3)
            break
        except psycopg2.OperationalError as exc:
            errors.append(f"{dsn}: {exc}".strip())
    else:
        reason = "PostgreSQL unreachable: " + "; ".join(errors)
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    yield conn
    conn.close()


def test_postgres_table_holds_each_date_plus_rows_outside_the_range(tmp_path: Path, pg_conn) -> None:
    table = f"dctp_demo_articles_{uuid.uuid4().hex[:10]}"
    storage = Storage(f"file://{tmp_path}")
    try:
        summary = generate(storage, DATES, pg_conn=pg_conn, table=table)
        with pg_conn.cursor() as cur:
            cur.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                        "ORDER BY ordinal_position", (table,))
            assert cur.fetchall() == [("id", "text"), ("body", "text"), ("topic", "text"),
                                      ("published_at", "timestamp with time zone")]
            cur.execute(f"SELECT (published_at AT TIME ZONE 'UTC')::date::text, count(*) FROM {table} "
                        "WHERE published_at >= '2026-01-01T00:00:00Z' AND published_at < '2026-01-04T00:00:00Z' "
                        "GROUP BY 1 ORDER BY 1")
            assert cur.fetchall() == [(d, summary["dates"][d]["articles_db"]["rows"]) for d in DATES]
            cur.execute(f"SELECT id, published_at FROM {table} WHERE published_at < '2026-01-01T00:00:00Z' "
                        "OR published_at >= '2026-01-04T00:00:00Z' ORDER BY published_at")
            outside = cur.fetchall()
            assert len(outside) == summary["postgres"]["outside_dates"] == 4
            # one second before the first date and the very start of the day after the last: the window is [D, D+1)
            assert outside[1][1] == dt.datetime(2025, 12, 31, 23, 59, 59, tzinfo=dt.UTC)
            assert outside[2][1] == dt.datetime(2026, 1, 4, tzinfo=dt.UTC)
            cur.execute(f"SELECT body FROM {table} WHERE id NOT LIKE 'db-outside-%'")
            bodies = {b for (b,) in cur.fetchall()}
            cur.execute(f"SELECT count(*), count(DISTINCT topic) FROM {table}")
            total, topics = cur.fetchone()
        assert total == summary["postgres"]["rows"] == 3 * 60 + 4 and topics == 5
        web_and_forum = {t for d in DATES for s in ("web", "forum") for t in _texts(tmp_path, d)[s]}
        assert bodies & web_and_forum  # duplicates reach across into the database source
        generate(storage, DATES, pg_conn=pg_conn, table=table)  # a re-run replaces, never appends
        with pg_conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM {table}")
            assert cur.fetchone()[0] == total
    finally:
        with pg_conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {table}")
        pg_conn.commit()
