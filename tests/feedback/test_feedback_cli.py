"""The feedback store from a shell, through ``dctp_tasks.cli.main``: ``dctp db upgrade``, where the store lives,
``dctp queue``, ``dctp annotate`` (stdin), ``dctp feedback import|export`` (CSV and Parquet).

Every test runs on a SQLite store in tmp_path with a roster written to a config file (``DCTP_CONFIG``); the store
location test also runs ``dctp db upgrade`` against a fresh database on the real PostgreSQL.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy.engine import make_url

from dctp_tasks.cli import main
from dctp_tasks.config import load_config
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import FeedbackStore, NewItem
from tests.conftest import config_file

DT, DT2 = "2026-01-05", "2026-01-06"
T0 = datetime(2026, 1, 5, 6, 30, tzinfo=UTC)
EXPORT_COLUMNS = ["doc_id", "expert", "label", "category", "rationale", "created_at"]
EXPERTS = {"alice": {}, "bob": {"seniority": "senior", "weight": 2.0}, "carol": {"domains": ["law"]}}
ALL_VERSIONS = [m.version for m in db.MIGRATIONS]
HOSTILE = "before \x1b[31mRED\x1b[0m and \u202eevil\u202c after"


# --- fixtures and helpers --------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch):
    """A roster in the config file; no store location in the environment; AIRFLOW_HOME and the data root in tmp."""
    cfg = config_file(tmp_path, {"annotation.experts": EXPERTS, "annotation.categories": ["toxic", "pii", "other"]})
    monkeypatch.setenv("DCTP_CONFIG", str(cfg))
    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path / "airflow-home"))
    monkeypatch.setenv("DCTP_DATA_ROOT", (tmp_path / "data").as_uri())
    monkeypatch.delenv("DCTP_FEEDBACK_URL", raising=False)
    monkeypatch.delenv("AIRFLOW_CONN_DCTP_FEEDBACK", raising=False)


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'feedback.db'}"


def dctp(capsys, *argv: str) -> tuple[int, str, str]:
    """Run ``dctp ARGV``; return the exit code, stdout and stderr."""
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def open_store(url: str) -> FeedbackStore:
    return FeedbackStore.open(url, load_config().annotation, upgrade=True)


def item(doc_id: str, *, dt: str = DT, experts=("alice",), domain: str = "news", stratum: str | None = None,
         text: str | None = None) -> NewItem:
    return NewItem(doc_id=doc_id, dt=dt, text=text or f"text of {doc_id}", pool="kept", strategy="random",
                   stratum=stratum or f"{domain} / src", source="src", domain=domain, lang="en",
                   scores={"quality": 0.5}, quality=0.5, verdict="pass", strategy_score=0.25, experts=list(experts))


def batch(store: FeedbackStore, dt: str, docs: list[NewItem]) -> None:
    store.replace_batch(dt=dt, dag_id="dctp_daily", run_id=f"run-{dt}", budget=10, strategy_mix={"random": 1.0},
                        config_hash="c" * 64, mlflow_run_id=None, staged_version="v1", new_items=docs,
                        assigned_at=T0)


@pytest.fixture
def store(url) -> FeedbackStore:
    """An upgraded store: DT's batch (d1 news alice+bob, d2 news alice, d3 law alice+carol, d5 news alice), DT2's
    (d4 news bob)."""
    s = open_store(url)
    batch(s, DT, [item("d1", experts=("alice", "bob")), item("d2"),
                  item("d3", domain="law", experts=("alice", "carol")), item("d5")])
    batch(s, DT2, [item("d4", dt=DT2, experts=("bob",))])
    yield s
    s.engine.dispose()


def annotate(capsys, monkeypatch, url: str, lines: str, *extra: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    return dctp(capsys, "annotate", "--store", url, *extra)


def labels(store: FeedbackStore, doc_id: str) -> list:
    return [(j.expert, j.label, j.retracts is not None) for j in store.history(doc_id).trail]


# --- dctp db upgrade, and where the store lives ----------------------------------------------------------------------

def test_db_upgrade_applies_every_migration_then_is_up_to_date(capsys, url):
    code, out, err = dctp(capsys, "db", "upgrade", "--store", url)
    assert code == 0, err
    assert f"schema version {db.LATEST}" in out and f"applied now: {', '.join(map(str, ALL_VERSIONS))}" in out
    code, out, _ = dctp(capsys, "db", "upgrade", "--store", url)
    assert code == 0 and "up to date" in out and "applied now" not in out


def test_db_upgrade_json(capsys, url):
    code, out, _ = dctp(capsys, "--json", "db", "upgrade", "--store", url)
    first = json.loads(out)
    assert code == 0 and first["applied"] == ALL_VERSIONS and first["schema_version"] == db.LATEST
    assert first["store"].startswith("sqlite:///")
    code, out, _ = dctp(capsys, "--json", "db", "upgrade", "--store", url)
    assert code == 0 and json.loads(out)["applied"] == []


@pytest.mark.parametrize("argv", [["queue"], ["annotate", "--expert", "alice"], ["feedback", "export", "x.csv"]])
def test_a_store_not_upgraded_is_refused_naming_dctp_db_upgrade(capsys, monkeypatch, url, tmp_path, argv):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "stdin", io.StringIO("g\n"))
    code, out, err = dctp(capsys, *argv, "--store", url)
    assert code == 2 and out == ""
    assert err.startswith("dctp: ") and "dctp db upgrade" in err
    assert not (tmp_path / "x.csv").exists()


def test_store_url_from_the_environment_wins_and_store_flag_wins_over_it(capsys, monkeypatch, tmp_path):
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("DCTP_FEEDBACK_URL", f"sqlite:///{env_db}")
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", "postgresql://nobody@127.0.0.1:1/nowhere")  # never reached
    code, out, err = dctp(capsys, "--json", "db", "upgrade")
    assert code == 0, err
    assert json.loads(out)["store"] == f"sqlite:///{env_db}" and env_db.is_file()
    code, out, _ = dctp(capsys, "--json", "db", "upgrade", "--store", f"sqlite:///{flag_db}")
    assert code == 0 and json.loads(out)["applied"] == ALL_VERSIONS and flag_db.is_file()
    assert not (tmp_path / "airflow-home" / "dctp_feedback.db").exists()
    # the other commands look in the same place: the environment's store is upgraded, so queue works there
    code, out, err = dctp(capsys, "queue")
    assert code == 0, err
    assert "0 documents queued" in out


def test_store_defaults_to_sqlite_under_airflow_home(capsys, monkeypatch, tmp_path):
    home = tmp_path / "elsewhere"
    monkeypatch.setenv("AIRFLOW_HOME", str(home))
    code, out, err = dctp(capsys, "db", "upgrade")
    assert code == 0, err
    assert (home / "dctp_feedback.db").is_file()
    assert str(home / "dctp_feedback.db") in out and "applied now: 1, 2" in out


def test_store_from_the_airflow_connection_is_postgresql(capsys, monkeypatch, tmp_path, pg_dsn, pg_database):
    import psycopg2

    name = make_url(pg_database).database
    pg = make_url(pg_dsn)
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", pg_database)
    code, out, err = dctp(capsys, "--json", "db", "upgrade")
    assert code == 0, err
    result = json.loads(out)
    assert result["applied"] == ALL_VERSIONS and result["store"].startswith("postgresql+psycopg2://")
    assert result["store"].endswith(f"/{name}")
    conn = psycopg2.connect(pg_dsn, dbname=name)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
            tables = {r[0] for r in cur.fetchall()}
            cur.execute("SELECT version FROM dctp_feedback_migrations")
            versions = [r[0] for r in cur.fetchall()]
    finally:
        conn.close()
    assert {"annotation_batches", "queue_items", "assignments", "annotations", "dctp_feedback_migrations"} <= tables
    assert sorted(versions) == ALL_VERSIONS
    assert not (tmp_path / "airflow-home" / "dctp_feedback.db").exists()
    # the connection as Airflow's JSON form names the same database: already up to date
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", json.dumps(
        {"conn_type": "postgres", "host": pg.host or "127.0.0.1", "port": pg.port or 5432,
         "login": pg.username or "postgres", "schema": name}))
    code, out, err = dctp(capsys, "--json", "db", "upgrade")
    assert code == 0, err
    assert json.loads(out)["applied"] == []
    code, out, err = dctp(capsys, "queue")
    assert code == 0 and "0 documents queued" in out, err


def test_an_airflow_connection_that_is_not_postgres_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_DCTP_FEEDBACK", "mysql://root@127.0.0.1/feedback")
    code, out, err = dctp(capsys, "db", "upgrade")
    assert code == 2 and out == ""
    assert "dctp: " in err and "postgres" in err


# --- dctp queue ------------------------------------------------------------------------------------------------------

def queue_lines(out: str) -> dict[tuple[str, str], list[int]]:
    rows = {}
    for line in out.splitlines()[1:-1]:
        expert, rest = line[:20].strip(), line[21:]
        stratum, numbers = rest[:32].strip(), rest[32:].split()
        rows[(expert, stratum)] = [int(n) for n in numbers[:3]]
    return rows


def test_queue_lists_assigned_done_open_per_expert_and_stratum(capsys, url, store):
    store.submit("alice", store.open_queue("alice")[0].item_id, "good", client="test")
    code, out, err = dctp(capsys, "queue", "--store", url)
    assert code == 0, err
    assert out.splitlines()[0].split() == ["expert", "stratum", "assigned", "done", "open", "next", "due"]
    assert queue_lines(out) == {("alice", "law / src"): [1, 0, 1], ("alice", "news / src"): [3, 1, 2],
                                ("bob", "news / src"): [2, 0, 2], ("carol", "law / src"): [1, 0, 1]}
    assert "2026-01-12" in out  # next due: assigned T0 + due_days (7)
    assert "5 documents queued, 7 assignments: 1 done, 6 open; good 1, bad 0, skip 0" in out


def test_queue_filters_by_expert_and_date(capsys, url, store):
    code, out, _ = dctp(capsys, "queue", "--store", url, "--expert", "bob")
    assert code == 0 and queue_lines(out) == {("bob", "news / src"): [2, 0, 2]}
    code, out, _ = dctp(capsys, "queue", "--store", url, "--date", DT2)
    assert code == 0 and queue_lines(out) == {("bob", "news / src"): [1, 0, 1]}
    assert "1 documents queued, 1 assignments" in out
    code, out, _ = dctp(capsys, "queue", "--store", url, "--date", DT2, "--expert", "alice")
    assert code == 0 and queue_lines(out) == {}


def test_queue_refuses_an_unknown_expert_and_a_bad_date(capsys, url, store):
    code, out, err = dctp(capsys, "queue", "--store", url, "--expert", "mallory")
    assert code == 2 and out == ""
    assert err.startswith("dctp: ") and "mallory" in err and "annotation.experts" in err
    code, out, err = dctp(capsys, "queue", "--store", url, "--date", "2026-1-5")
    assert code == 2 and out == "" and "--date" in err


def test_queue_json_gives_rows_and_counts(capsys, url, store):
    code, out, _ = dctp(capsys, "--json", "queue", "--store", url, "--expert", "alice")
    data = json.loads(out)
    assert code == 0 and set(data) == {"rows", "counts"}
    assert [(r["expert"], r["stratum"], r["assigned"], r["done"], r["open"]) for r in data["rows"]] == [
        ("alice", "law / src", 1, 0, 1), ("alice", "news / src", 3, 0, 3)]
    assert data["rows"][0]["next_due"].startswith("2026-01-12")
    assert data["counts"]["items"] == 5 and data["counts"]["open"] == 7 and data["counts"]["done"] == 0


# --- dctp annotate ---------------------------------------------------------------------------------------------------

def test_annotate_stores_judgements_through_the_api(capsys, monkeypatch, url, store):
    code, out, err = annotate(capsys, monkeypatch, url, "g\nb #toxic insults a user\nx\ns\nu\nq\n",
                              "--expert", "alice")
    assert code == 0, err
    assert "answer g, b or s" in out  # the x was refused and the question asked again
    assert out.count("[g]ood [b]ad [s]kip") == 6  # g, b, x, s, u, q: one prompt each
    assert "judged: good 1, bad 1, skip 1, undone 1" in out
    d1, d2, d3 = (store.history(d) for d in ("d1", "d2", "d3"))
    assert [(j.label, j.category, j.rationale, j.client) for j in d1.trail] == [("good", None, None, "cli")]
    assert [(j.label, j.category, j.rationale, j.client) for j in d2.trail] == [
        ("bad", "toxic", "insults a user", "cli")]
    skip, undo = d3.trail
    assert (skip.expert, skip.label, skip.client) == ("alice", "skip", "cli")
    assert (undo.expert, undo.label, undo.retracts, undo.client) == ("alice", None, skip.annotation_id, "cli")
    assert f"undone: judgement {skip.annotation_id}" in out
    assert d3.effective == {} and d1.effective["alice"].label == "good"
    assert [i.doc_id for i in store.open_queue("alice")] == ["d3", "d5"]  # the undone item is open again
    assert out.count("d3  dt=") == 2  # shown again after the undo
    assert labels(store, "d4") == []  # bob's item untouched


def test_annotate_refuses_an_unknown_category_and_stores_nothing(capsys, monkeypatch, url, store):
    code, out, err = annotate(capsys, monkeypatch, url, "b #nope rude\n", "--expert", "alice")
    assert code == 0, err
    assert "not stored: unknown category 'nope'" in out and "toxic, pii, other" in out
    assert "judged: good 0, bad 0, skip 0, undone 0" in out  # end of input stopped it
    assert store.export_judgements(trail=True) == []
    assert [i.doc_id for i in store.open_queue("alice")] == ["d1", "d2", "d3", "d5"]


def test_annotate_end_of_input_stops_cleanly(capsys, monkeypatch, url, store):
    code, out, err = annotate(capsys, monkeypatch, url, "g", "--expert", "bob")  # no newline, then EOF
    assert code == 0 and err == ""
    assert "judged: good 1, bad 0, skip 0, undone 0" in out
    assert labels(store, "d1") == [("bob", "good", False)]
    assert [i.doc_id for i in store.open_queue("bob")] == ["d4"]


def test_annotate_undo_with_nothing_to_undo(capsys, monkeypatch, url, store):
    code, out, _ = annotate(capsys, monkeypatch, url, "u\nq\n", "--expert", "alice")
    assert code == 0 and "nothing to undo" in out
    assert store.export_judgements(trail=True) == []


def test_annotate_an_empty_queue_says_nothing_left(capsys, monkeypatch, url, store):
    code, out, _ = annotate(capsys, monkeypatch, url, "g\ng\n", "--expert", "carol")
    assert code == 0
    assert "carol: nothing left to judge." in out and "judged: good 1," in out
    code, out, _ = annotate(capsys, monkeypatch, url, "g\n", "--expert", "alice", "--date", DT2)
    assert code == 0 and f"alice: nothing left to judge for {DT2}." in out
    assert "judged: good 0, bad 0, skip 0, undone 0" in out


def test_annotate_date_only_judges_that_batch(capsys, monkeypatch, url, store):
    code, out, _ = annotate(capsys, monkeypatch, url, "b\n", "--expert", "bob", "--date", DT2)
    assert code == 0 and "d4  dt=2026-01-06" in out and "d1  dt=" not in out
    assert labels(store, "d4") == [("bob", "bad", False)] and labels(store, "d1") == []


def test_annotate_refuses_an_unknown_expert(capsys, monkeypatch, url, store):
    code, out, err = annotate(capsys, monkeypatch, url, "g\n", "--expert", "mallory")
    assert code == 2 and out == ""
    assert "mallory" in err and "annotation.experts" in err
    assert store.export_judgements(trail=True) == []


def test_annotate_shows_the_text_with_control_characters_inert(capsys, monkeypatch, url):
    s = open_store(url)
    batch(s, DT, [item("evil\x1b[2J", text=HOSTILE, domain="news\u202e")])
    code, out, _ = annotate(capsys, monkeypatch, url, "q\n", "--expert", "alice")
    s.engine.dispose()
    assert code == 0
    assert "\x1b" not in out and "\u202e" not in out and "\u202c" not in out
    assert "before \\x1b[31mRED\\x1b[0m and \\u202eevil\\u202c after" in out
    assert "evil\\x1b[2J" in out and "domain=news\\u202e" in out


def test_annotate_shows_prompt_and_response_and_clips_long_text(capsys, monkeypatch, url):
    s = open_store(url)
    long = item("long", text="x" * 500)
    chat = item("chat")
    chat.prompt, chat.response = "What is 2+2?", "\x1b]0;pwned\x07Four."
    batch(s, DT, [long, chat])
    code, out, _ = annotate(capsys, monkeypatch, url, "s\nq\n", "--expert", "alice", "--max-chars", "100")
    s.engine.dispose()
    assert code == 0
    assert "x" * 100 + " … [400 more characters]" in out and "x" * 101 not in out
    assert "PROMPT:\nWhat is 2+2?\nRESPONSE:\n\\x1b]0;pwned\\x07Four." in out and "\x07" not in out


# --- dctp feedback export --------------------------------------------------------------------------------------------

@pytest.fixture
def judged(store):
    """alice: d1 good then corrected to bad (pii, 'leaks a phone number'), d2 skip retracted; bob: d1 good."""
    q = {i.doc_id: i.item_id for i in store.open_queue("alice")}
    store.submit("alice", q["d1"], "good", client="cli")
    store.submit("alice", q["d2"], "skip", client="cli")
    store.retract_last("alice", client="cli")
    store.submit("alice", q["d1"], "bad", category="pii", rationale="leaks a phone number", client="cli")
    store.submit("bob", q["d1"], "good", client="web")
    return store


def read_csv(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_export_csv_writes_each_experts_effective_judgement(capsys, url, judged, tmp_path):
    path = tmp_path / "out" / "judgements.csv"
    code, out, err = dctp(capsys, "--json", "feedback", "export", str(path), "--store", url)
    assert code == 0, err
    assert json.loads(out) == {"file": str(path), "rows": 2}
    rows = read_csv(path)
    assert list(rows[0]) == EXPORT_COLUMNS
    assert [(r["doc_id"], r["expert"], r["label"], r["category"], r["rationale"]) for r in rows] == [
        ("d1", "alice", "bad", "pii", "leaks a phone number"), ("d1", "bob", "good", "", "")]
    assert all(datetime.fromisoformat(r["created_at"]).tzinfo is not None for r in rows)


def test_export_parquet_and_the_trail(capsys, url, judged, tmp_path):
    code, _, err = dctp(capsys, "feedback", "export", str(tmp_path / "out.parquet"), "--store", url)
    assert code == 0, err
    table = pq.read_table(tmp_path / "out.parquet")
    assert table.column_names == EXPORT_COLUMNS
    assert table.schema.field("created_at").type == pa.timestamp("us", tz="UTC")
    assert [(r["doc_id"], r["expert"], r["label"]) for r in table.to_pylist()] == [
        ("d1", "alice", "bad"), ("d1", "bob", "good")]
    code, _, err = dctp(capsys, "feedback", "export", str(tmp_path / "trail.parquet"), "--store", url, "--trail")
    assert code == 0, err
    trail = pq.read_table(tmp_path / "trail.parquet").to_pylist()
    assert list(trail[0])[:6] == EXPORT_COLUMNS and {"annotation_id", "retracts", "client"} <= set(trail[0])
    assert [(r["doc_id"], r["expert"], r["label"], r["retracts"]) for r in trail] == [
        ("d1", "alice", "good", None), ("d2", "alice", "skip", None), ("d2", "alice", None, trail[1]["annotation_id"]),
        ("d1", "alice", "bad", None), ("d1", "bob", "good", None)]
    assert [r["client"] for r in trail] == ["cli", "cli", "cli", "cli", "web"]


def test_export_of_an_empty_store_has_the_columns(capsys, url, store, tmp_path):
    code, out, _ = dctp(capsys, "feedback", "export", str(tmp_path / "empty.parquet"), "--store", url)
    assert code == 0 and '"rows": 0' in out
    table = pq.read_table(tmp_path / "empty.parquet")
    assert table.num_rows == 0 and table.column_names == EXPORT_COLUMNS


def test_export_of_an_empty_trail_has_the_trail_columns(capsys, url, store, tmp_path):
    """The trail's columns do not depend on whether there are rows (a consumer reads annotation_id, retracts)."""
    code, _, _ = dctp(capsys, "feedback", "export", str(tmp_path / "trail.parquet"), "--store", url, "--trail")
    assert code == 0
    assert pq.read_table(tmp_path / "trail.parquet").column_names == EXPORT_COLUMNS + [
        "annotation_id", "retracts", "client"]


# --- dctp feedback import --------------------------------------------------------------------------------------------

def write_csv(path, rows: list[list[str]], header=EXPORT_COLUMNS) -> str:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


TOOL_ROWS = [["d1", "bob", "good", "", "", "2026-01-05T10:00:00Z"],
             ["d2", "alice", "bad", "toxic", "rude, and\nloud", "2026-01-05 11:00:00+00:00"],
             ["d4", "bob", "skip", "", "", ""]]


def test_import_a_csv_from_another_tool_then_again_adds_nothing(capsys, url, store, tmp_path):
    path = write_csv(tmp_path / "tool.csv", TOOL_ROWS)
    code, out, err = dctp(capsys, "--json", "feedback", "import", path, "--store", url)
    assert code == 0, err
    assert json.loads(out) == {"file": path, "rows": 3, "imported": 3, "already_there": 0}
    (j,) = store.history("d2").trail
    assert (j.expert, j.label, j.category, j.rationale, j.client) == (
        "alice", "bad", "toxic", "rude, and\nloud", "import:tool.csv")
    assert j.created_at == datetime(2026, 1, 5, 11, tzinfo=UTC)
    assert store.history("d1").effective["bob"].created_at == datetime(2026, 1, 5, 10, tzinfo=UTC)
    assert store.history("d1").effective["bob"].category is None
    assert store.history("d4").effective["bob"].label == "skip"
    code, out, err = dctp(capsys, "--json", "feedback", "import", path, "--store", url)
    assert code == 0, err
    assert json.loads(out)["imported"] == 0 and json.loads(out)["already_there"] == 3
    assert len(store.export_judgements(trail=True)) == 3


def test_import_without_optional_columns(capsys, url, store, tmp_path):
    path = write_csv(tmp_path / "min.csv", [["d3", "carol", "good"], ["d1", "alice", "bad"]],
                     header=["doc_id", "expert", "label"])
    code, out, err = dctp(capsys, "--json", "feedback", "import", path, "--store", url)
    assert code == 0, err
    assert json.loads(out)["imported"] == 2
    code, out, _ = dctp(capsys, "--json", "feedback", "import", path, "--store", url)
    assert json.loads(out)["already_there"] == 2


def test_an_export_imports_into_another_store(capsys, url, judged, tmp_path):
    """Round trip: the CSV and Parquet files ``export`` writes are files ``import`` reads."""
    for suffix in ("csv", "parquet"):
        path = str(tmp_path / f"out.{suffix}")
        assert dctp(capsys, "feedback", "export", path, "--store", url)[0] == 0
        other_url = f"sqlite:///{tmp_path / f'other-{suffix}.db'}"
        other = open_store(other_url)
        batch(other, DT, [item("d1", experts=("alice", "bob")), item("d2")])
        code, out, err = dctp(capsys, "--json", "feedback", "import", path, "--store", other_url)
        assert code == 0, err
        assert json.loads(out)["imported"] == 2
        got = {e: (j.label, j.category, j.rationale, j.created_at) for e, j in other.history("d1").effective.items()}
        want = {e: (j.label, j.category, j.rationale, j.created_at) for e, j in judged.history("d1").effective.items()}
        assert got == want
        other.engine.dispose()


def test_import_refuses_a_file_with_bad_rows_and_imports_nothing(capsys, url, store, tmp_path):
    path = write_csv(tmp_path / "bad.csv", [TOOL_ROWS[0], ["nope/1", "alice", "good", "", "", ""],
                                            ["d1", "mallory", "good", "", "", ""],
                                            ["d2", "alice", "meh", "", "", ""],
                                            ["d1", "carol", "good", "", "", ""],
                                            ["d2", "alice", "bad", "nope", "", ""],
                                            ["d2", "alice", "bad", "", "", "yesterday"]])
    code, out, err = dctp(capsys, "feedback", "import", path, "--store", url)
    assert code == 2 and out == ""
    assert err.startswith("dctp: ") and "6 of 7 rows refused, nothing imported" in err
    for number, words in [(2, "nope/1"), (3, "mallory"), (4, "meh"), (5, "may not judge domain"),
                          (6, "unknown category 'nope'"), (7, "yesterday")]:
        assert f"row {number}: " in err and words in err
    assert "row 1:" not in err
    assert store.export_judgements(trail=True) == []


def test_import_refuses_a_missing_column_a_wrong_extension_and_a_missing_file(capsys, url, store, tmp_path):
    path = write_csv(tmp_path / "nolabel.csv", [["d1", "alice"]], header=["doc_id", "expert"])
    code, out, err = dctp(capsys, "feedback", "import", path, "--store", url)
    assert code == 2 and out == "" and "no column 'label'" in err
    txt = tmp_path / "tool.txt"
    txt.write_text("doc_id,expert,label\nd1,alice,good\n")
    code, out, err = dctp(capsys, "feedback", "import", str(txt), "--store", url)
    assert code == 2 and out == "" and ".csv or .parquet" in err
    code, out, err = dctp(capsys, "feedback", "import", str(tmp_path / "absent.csv"), "--store", url)
    assert code == 2 and out == "" and "does not exist" in err
    code, out, err = dctp(capsys, "feedback", "export", str(tmp_path / "out.json"), "--store", url)
    assert code == 2 and ".csv or .parquet" in err and not (tmp_path / "out.json").exists()
    assert store.export_judgements(trail=True) == []
