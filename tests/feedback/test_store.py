"""The feedback store on both engines (SQLite in tmp_path, the real PostgreSQL): migrations, the append-only audit
trail, the queue, judgements, corrections and undo, refused input, counts, import and export.

Every test that takes ``engine`` (or ``store``) runs once per engine, each on a clean schema.
"""

from __future__ import annotations

import inspect as pyinspect
import json
import re
import threading
import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from dctp_tasks.config import AnnotationConfig, ExpertConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback import store as store_module
from dctp_tasks.feedback.store import FeedbackError, FeedbackStore, NewItem

DT, DT2 = "2026-01-05", "2026-01-06"
T0 = datetime(2026, 1, 5, 6, 30, tzinfo=UTC)
ALL_VERSIONS = [m.version for m in db.MIGRATIONS]
DUE_DAYS = 3
CONFIG = AnnotationConfig(
    experts={"alice": ExpertConfig(), "bob": ExpertConfig(seniority="senior", weight=2.0),
             "carol": ExpertConfig(domains=["law"])},
    categories=["toxic", "pii", "other"], due_days=DUE_DAYS)


# --- engines ---------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_database(pg_dsn):
    """A fresh PostgreSQL database for this module (URL), dropped at the end."""
    import psycopg2

    name = f"dctp_feedback_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(pg_dsn, dbname="postgres", connect_timeout=5)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(pg_dsn).set(drivername="postgresql+psycopg2", database=name)
    finally:
        with admin.cursor() as cur:
            _terminate(cur, name)
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()


def _terminate(cur, name: str) -> None:
    cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
                "AND pid <> pg_backend_pid()", (name,))


def _clean_pg(pg_dsn: str, url) -> None:
    """Empty the module's database: drop everything the store made (tables, the trigger function)."""
    import psycopg2

    conn = psycopg2.connect(pg_dsn, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        _terminate(cur, url.database)
    conn.close()
    conn = psycopg2.connect(pg_dsn, dbname=url.database)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request, tmp_path):
    """Where a new, empty store lives: a SQLite file in tmp_path, or the module's PostgreSQL database emptied."""
    if request.param == "sqlite":
        return make_url(f"sqlite:///{tmp_path / 'feedback.db'}")
    url = request.getfixturevalue("pg_database")
    _clean_pg(request.getfixturevalue("pg_dsn"), url)
    return url


@pytest.fixture
def connect(engine_url):
    """Return a function opening one more engine on the test's database; all are disposed afterwards."""
    engines = []

    def make() -> sa.Engine:
        engine = db.create_feedback_engine(engine_url)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.dispose()


@pytest.fixture
def engine(connect) -> sa.Engine:
    """An engine on a new, empty (not upgraded) database, parametrized over SQLite and PostgreSQL."""
    return connect()


@pytest.fixture
def store(engine) -> FeedbackStore:
    db.upgrade(engine)
    return FeedbackStore(engine, CONFIG)


@pytest.fixture
def pg_store(pg_dsn, pg_database):
    """A store on PostgreSQL alone (for what only PostgreSQL has)."""
    _clean_pg(pg_dsn, pg_database)
    engine = db.create_feedback_engine(pg_database)
    db.upgrade(engine)
    yield FeedbackStore(engine, CONFIG)
    engine.dispose()


# --- helpers ---------------------------------------------------------------------------------------------------------

def new_item(doc_id: str, *, dt: str = "", experts=("alice", "bob"), domain: str | None = "news",
             **fields) -> NewItem:
    """A queue item; its ``dt`` is the batch's unless given."""
    values = {"text": f"text of {doc_id}", "pool": "kept", "strategy": "random", "stratum": f"{domain} / src",
              "source": "src", "lang": "en", "scores": {"quality": 0.5}, "quality": 0.5, "verdict": "pass",
              "strategy_score": 0.25, **fields}
    return NewItem(doc_id=doc_id, dt=dt, domain=domain, experts=list(experts), **values)


def make_batch(store: FeedbackStore, docs: list[NewItem], *, dt: str = DT, assigned_at: datetime | None = T0,
               **overrides):
    for doc in docs:
        doc.dt = doc.dt or dt
    args = {"dt": dt, "dag_id": "dctp_daily", "run_id": f"run-{dt}", "budget": 10,
            "strategy_mix": {"random": 1.0}, "config_hash": "c" * 64, "mlflow_run_id": None,
            "staged_version": "v1", "new_items": docs, "assigned_at": assigned_at, **overrides}
    return store.replace_batch(**args)


def item_ids(store: FeedbackStore, dt: str = DT) -> dict[str, int]:
    with store.engine.connect() as conn:
        return dict(conn.execute(sa.select(db.items.c.doc_id, db.items.c.item_id).where(db.items.c.dt == dt)).all())


def table_rows(engine: sa.Engine, table: sa.Table) -> list[dict]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(table).order_by(*table.primary_key.columns)).mappings()]


def count(engine: sa.Engine, table: sa.Table = db.annotations) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def snapshot(engine: sa.Engine) -> dict[str, list[dict]]:
    return {t.name: table_rows(engine, t) for t in db.metadata.sorted_tables}


def utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# --- migrations ------------------------------------------------------------------------------------------------------

def test_upgrade_applies_the_migration_once(engine):
    assert db.applied_versions(engine) == []
    assert db.upgrade(engine) == ALL_VERSIONS
    assert db.applied_versions(engine) == ALL_VERSIONS
    with engine.connect() as conn:
        recorded = conn.execute(sa.text(f"SELECT * FROM {db.MIGRATIONS_TABLE}")).mappings().all()
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == set(db.metadata.tables) | {db.MIGRATIONS_TABLE}

    assert db.upgrade(engine) == []
    assert db.applied_versions(engine) == ALL_VERSIONS
    with engine.connect() as conn:
        assert conn.execute(sa.text(f"SELECT * FROM {db.MIGRATIONS_TABLE}")).mappings().all() == recorded
    assert set(sa.inspect(engine).get_table_names()) == tables
    assert [r["version"] for r in recorded] == ALL_VERSIONS and recorded[0]["name"] == db.MIGRATIONS[0].name
    db.check_current(engine)


def test_a_store_of_an_older_version_gets_only_the_migrations_it_lacks_and_keeps_its_rows(engine, monkeypatch):
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:1])
    monkeypatch.setattr(db, "LATEST", 1)
    assert db.upgrade(engine) == [1]
    with engine.begin() as conn:  # a batch written by the code of version 1 (no synthetic column yet)
        conn.execute(sa.text("INSERT INTO annotation_batches (batch_id, dag_id, dt, created_at, budget, strategy_mix, "
                             "config_hash, items) VALUES (1, 'd', '2026-01-05', :t, 1, '{}', 'h', 1)"), {"t": T0})
        conn.execute(sa.text("INSERT INTO queue_items (item_id, batch_id, position, doc_id, dt, text, scores, pool, "
                             "strategy, stratum) VALUES (1, 1, 0, 's/1', '2026-01-05', 't', '{}', 'kept', 'random', "
                             "'x')"))
    monkeypatch.undo()
    with pytest.raises(db.SchemaOutdated, match=rf"lacks migrations {re.escape(str(ALL_VERSIONS[1:]))}"):
        db.check_current(engine)
    assert db.upgrade(engine) == ALL_VERSIONS[1:]
    store = FeedbackStore(engine, CONFIG)
    assert store.counts()["items"] == 1 and store.item(1).synthetic is False


def test_check_current_refuses_a_database_not_upgraded(engine):
    with pytest.raises(db.SchemaOutdated, match=rf"lacks migrations {re.escape(str(ALL_VERSIONS))}.*dctp db upgrade"):
        db.check_current(engine)
    with pytest.raises(db.SchemaOutdated, match="dctp db upgrade"):
        FeedbackStore(engine, CONFIG)
    # the migrations table alone (an upgrade that stopped half-way) is still not current
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {db.MIGRATIONS_TABLE} (version INTEGER PRIMARY KEY, "
                             "name VARCHAR(200) NOT NULL, applied_at TIMESTAMP NOT NULL, code_version VARCHAR(64))")
    with pytest.raises(db.SchemaOutdated, match="dctp db upgrade"):
        db.check_current(engine)
    FeedbackStore(engine, CONFIG, check=False)  # the check can be skipped


def test_a_database_newer_than_the_code_is_refused(engine):
    db.upgrade(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO {db.MIGRATIONS_TABLE} (version, name, applied_at) VALUES (:v, 'f', :t)"),
                     {"v": db.LATEST + 1, "t": T0})
    with pytest.raises(db.SchemaOutdated, match=rf"migrations \[{db.LATEST + 1}\].*upgrade dctp"):
        db.check_current(engine)
    with pytest.raises(db.SchemaOutdated, match="upgrade dctp"):
        FeedbackStore(engine, CONFIG)
    with pytest.raises(db.SchemaOutdated, match="upgrade dctp"):
        db.upgrade(engine)
    assert db.applied_versions(engine) == [*ALL_VERSIONS, db.LATEST + 1]


def _race_upgrades(url, workers: int) -> list:
    """Run ``db.upgrade`` from ``workers`` threads (an engine each) released at once; return what each got."""
    engines = [db.create_feedback_engine(url) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    results: list = [None] * workers

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = db.upgrade(engines[i])
        except Exception as exc:  # reported by the caller
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
    finally:
        for engine in engines:
            engine.dispose()
    return results


@pytest.mark.parametrize("workers", [2, 4])
def test_concurrent_upgrades_apply_the_migration_exactly_once(engine_url, request, tmp_path, workers):
    """Upgrades racing on a new database (three rounds, each on a new one): all succeed, each migration applied
    once."""
    for round_ in range(3):
        if engine_url.get_backend_name() == "sqlite":
            url = engine_url.set(database=str(tmp_path / f"round-{round_}.db"))
        else:
            url = engine_url
            _clean_pg(request.getfixturevalue("pg_dsn"), url)
        results = _race_upgrades(url, workers)
        assert not [r for r in results if isinstance(r, Exception)], (round_, results)
        # each migration applied by exactly one of them (one may apply the first, another the next)
        assert sorted(v for r in results for v in r) == ALL_VERSIONS
        engine = db.create_feedback_engine(url)
        try:
            assert db.applied_versions(engine) == ALL_VERSIONS
            with engine.connect() as conn:
                count = conn.execute(sa.text(f"SELECT count(*) FROM {db.MIGRATIONS_TABLE}")).scalar_one()
                assert count == len(ALL_VERSIONS)
            assert FeedbackStore(engine, CONFIG).counts()["items"] == 0  # the schema is whole
        finally:
            engine.dispose()


def test_a_new_sqlite_store_waits_for_another_writer_instead_of_failing(tmp_path):
    """Another connection is mid-write on the new file (as a racing first connection is while it switches the file
    to WAL): opening the store waits for it (the engine's 30 s busy timeout) instead of failing at once."""
    import sqlite3

    path = tmp_path / "feedback.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("CREATE TABLE other_tool (x INTEGER)")
    release = threading.Timer(0.5, other.execute, args=("COMMIT",))
    release.start()
    engine = db.create_feedback_engine(f"sqlite:///{path}")
    try:
        assert db.upgrade(engine) == ALL_VERSIONS
        with engine.connect().execution_options(**{db.READ_ONLY: True}) as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        release.join()
        other.close()
        engine.dispose()


def test_the_migrated_schema_matches_the_query_tables(engine):
    """The DDL of the migrations and ``db.metadata`` (what the queries use) never drift apart."""
    db.upgrade(engine)
    inspector = sa.inspect(engine)
    pg = engine.dialect.name == "postgresql"
    for name, table in db.metadata.tables.items():
        reflected = {c["name"]: c for c in inspector.get_columns(name)}
        assert list(reflected) == [c.name for c in table.columns], name
        assert inspector.get_pk_constraint(name)["constrained_columns"] == [c.name for c in table.primary_key]
        for column in table.columns:
            got, want = reflected[column.name]["type"], column.type
            where = f"{name}.{column.name}: {got!r} vs {want!r}"
            assert got.python_type is want.python_type, where
            if not column.primary_key:
                assert reflected[column.name]["nullable"] == column.nullable, where
            if isinstance(want, sa.String) and not isinstance(want, sa.Text):
                assert getattr(got, "length", None) == want.length, where
            if isinstance(want, sa.Text):
                assert getattr(got, "length", None) is None, where
            if pg and isinstance(want, sa.DateTime):
                assert got.timezone == want.timezone, where
            if pg and isinstance(want, sa.Integer):
                assert isinstance(got, sa.BigInteger) == isinstance(want, sa.BigInteger), where
        fks = {(tuple(fk["constrained_columns"]), fk["referred_table"], tuple(fk["referred_columns"]))
               for fk in inspector.get_foreign_keys(name)}
        assert fks == {((fk.parent.name,), fk.column.table.name, (fk.column.name,)) for fk in table.foreign_keys}
        unique = [set(u["column_names"]) for u in inspector.get_unique_constraints(name)]
        unique += [set(i["column_names"]) for i in inspector.get_indexes(name) if i["unique"]]
        if engine.dialect.name == "sqlite":  # an inline UNIQUE is an automatic index SQLAlchemy does not reflect
            with engine.connect() as conn:
                for index in conn.exec_driver_sql(f"PRAGMA index_list({name})").mappings().all():
                    if index["unique"]:
                        unique.append({r["name"] for r in conn.exec_driver_sql(
                            f"PRAGMA index_info({index['name']})").mappings()})
        for column in table.columns:
            if column.unique:
                assert {column.name} in unique, f"{name}.{column.name} is not unique in the DDL"


# --- the audit trail is append-only ----------------------------------------------------------------------------------

@pytest.mark.parametrize("statement", [
    "UPDATE annotations SET label = 'bad' WHERE annotation_id = :id",
    "UPDATE annotations SET rationale = 'rewritten'",
    "DELETE FROM annotations WHERE annotation_id = :id",
    "DELETE FROM annotations",
], ids=["update-one", "update-all", "delete-one", "delete-all"])
def test_the_trail_refuses_update_and_delete(store, statement):
    make_batch(store, [new_item("d/1")])
    judged = store.submit("alice", item_ids(store)["d/1"], "good", rationale="fine")
    before = table_rows(store.engine, db.annotations)
    verb = statement.split()[0]
    with pytest.raises(sa.exc.DBAPIError, match=rf"append-only: {verb} refused"), store.engine.begin() as conn:
        conn.execute(sa.text(statement), {"id": judged.annotation_id})
    assert table_rows(store.engine, db.annotations) == before
    assert store.history("d/1").effective["alice"].label == "good"


def test_a_judged_item_cannot_be_deleted_under_its_trail(store):
    make_batch(store, [new_item("d/1")])
    store.submit("alice", item_ids(store)["d/1"], "good")
    before = snapshot(store.engine)
    with pytest.raises(sa.exc.IntegrityError), store.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM assignments"))
        conn.execute(sa.text("DELETE FROM queue_items"))
    assert snapshot(store.engine) == before


def test_truncate_is_refused_on_postgresql(pg_store):
    make_batch(pg_store, [new_item("d/1")])
    pg_store.submit("alice", item_ids(pg_store)["d/1"], "bad")
    before = table_rows(pg_store.engine, db.annotations)
    for statement in ("TRUNCATE annotations", "TRUNCATE annotations CASCADE", "TRUNCATE queue_items CASCADE"):
        with pytest.raises(sa.exc.DBAPIError, match="append-only: TRUNCATE refused"), \
                pg_store.engine.begin() as conn:
            conn.execute(sa.text(statement))
    assert table_rows(pg_store.engine, db.annotations) == before


def test_the_store_api_has_no_way_to_change_the_trail():
    public = [name for name, _ in pyinspect.getmembers(FeedbackStore) if not name.startswith("_")]
    assert "submit" in public and "retract_last" in public
    changing = [n for n in public if re.search("update|delete|edit|remove|drop|truncate|purge|clear|modify", n)]
    assert changing == []
    source = pyinspect.getsource(store_module)
    assert "annotations.update(" not in source and "annotations.delete(" not in source
    assert not re.search(r"(UPDATE|DELETE FROM)\s+annotations", source, re.IGNORECASE)


# --- batches and the queue -------------------------------------------------------------------------------------------

def test_replace_batch_stores_the_snapshot_and_the_assignments(store):
    scores = {"quality": float("nan"), "tox": {"p": float("inf"), "votes": [0.1, np.float32(0.5)]}, "n": np.int64(3)}
    docs = [new_item("d/1", scores=scores, quality=float("nan"), strategy="uncertainty", strategy_score=0.9,
                     prompt="q?", response="a.", filter_detail="{}"),
            new_item("d/2", pool="filtered", verdict="fail", filter_reason="toxicity", strategy="random",
                     experts=("bob",), domain=None, stratum="- / src")]
    batch, written = make_batch(store, docs, budget=7, strategy_mix={"uncertainty": 0.5, "random": 0.5},
                                mlflow_run_id="m1")
    assert written
    assert (batch.dt, batch.dag_id, batch.run_id, batch.budget, batch.items, batch.judged) == (DT, "dctp_daily",
                                                                                                f"run-{DT}", 7, 2, 0)
    assert batch.strategy_mix == {"uncertainty": 0.5, "random": 0.5}
    assert (batch.mlflow_run_id, batch.staged_version, batch.table_version, batch.created_at) == ("m1", "v1", None, T0)
    assert store.batch(DT) == batch and store.batch(DT2) is None

    ids = item_ids(store)
    first = store.item(ids["d/1"])
    assert (first.doc_id, first.dt, first.text, first.pool, first.strategy, first.stratum, first.position) == (
        "d/1", DT, "text of d/1", "kept", "uncertainty", "news / src", 0)
    assert first.scores == {"quality": None, "tox": {"p": None, "votes": [0.1, 0.5]}, "n": 3}
    assert (first.quality, first.strategy_score, first.prompt, first.response) == (None, 0.9, "q?", "a.")
    assert (first.batch_id, first.staged_version, first.table_version) == (batch.batch_id, "v1", None)
    second = store.item(ids["d/2"])
    assert (second.pool, second.verdict, second.filter_reason, second.domain, second.position) == (
        "filtered", "fail", "toxicity", None, 1)
    with store.engine.connect() as conn:
        raw = conn.execute(sa.select(db.items.c.scores).where(db.items.c.doc_id == "d/1")).scalar_one()
    json.loads(raw, parse_constant=lambda c: pytest.fail(f"scores hold {c}, not JSON"))

    assigned = sorted((r["item_id"], r["expert"], utc(r["assigned_at"]), utc(r["due_at"]))
                      for r in table_rows(store.engine, db.assignments))
    due = T0 + timedelta(days=DUE_DAYS)
    assert assigned == sorted([(ids["d/1"], "alice", T0, due), (ids["d/1"], "bob", T0, due),
                               (ids["d/2"], "bob", T0, due)])
    assert store.history("d/1").assigned == ["alice", "bob"] and store.history("d/2").assigned == ["bob"]
    assert [i.due_at for i in store.open_queue("bob")] == [due, due]


def test_assignments_are_due_due_days_from_now_by_default(store):
    before = datetime.now(UTC)
    make_batch(store, [new_item("d/1")], assigned_at=None)
    after = datetime.now(UTC)
    (item,) = store.open_queue("alice")
    assert before + timedelta(days=DUE_DAYS) <= item.due_at <= after + timedelta(days=DUE_DAYS)


def test_open_queue_lists_unjudged_assignments_soonest_due_first(store):
    # the later date's batch was assigned earlier, so it is due first
    make_batch(store, [new_item(f"a/{i}") for i in range(3)], dt=DT, assigned_at=T0 + timedelta(days=1))
    make_batch(store, [new_item("b/0"), new_item("b/1", experts=("bob",)), new_item("b/2")], dt=DT2,
               assigned_at=T0)
    assert [i.doc_id for i in store.open_queue("alice")] == ["b/0", "b/2", "a/0", "a/1", "a/2"]
    assert [i.doc_id for i in store.open_queue("bob", limit=None)] == ["b/0", "b/1", "b/2", "a/0", "a/1", "a/2"]
    assert [i.doc_id for i in store.open_queue("alice", limit=2)] == ["b/0", "b/2"]
    assert [i.doc_id for i in store.open_queue("alice", dt=DT)] == ["a/0", "a/1", "a/2"]
    assert store.open_queue("carol") == [] and store.next_item("carol") is None
    assert store.next_item("alice").doc_id == "b/0"

    store.submit("alice", store.next_item("alice").item_id, "good")
    store.submit("alice", item_ids(store, DT)["a/1"], "skip")
    assert [i.doc_id for i in store.open_queue("alice")] == ["b/2", "a/0", "a/2"]
    assert store.next_item("alice").doc_id == "b/2"
    assert len(store.open_queue("bob", limit=None)) == 6  # alice's judgements leave bob's queue alone
    with pytest.raises(FeedbackError, match="unknown expert 'mallory'"):
        store.open_queue("mallory")


def test_open_queue_pages_and_counts(store):
    make_batch(store, [new_item(f"a/{i}") for i in range(4)], dt=DT, assigned_at=T0)
    make_batch(store, [new_item(f"b/{i}", experts=("alice",)) for i in range(3)], dt=DT2, assigned_at=T0)
    everything = [i.doc_id for i in store.open_queue("alice", limit=None)]
    assert everything == ["a/0", "a/1", "a/2", "a/3", "b/0", "b/1", "b/2"], "one due date: batch, then position"
    assert [i.doc_id for i in store.open_queue("alice", limit=3, offset=2)] == everything[2:5]
    assert [i.doc_id for i in store.open_queue("alice", limit=None, offset=5)] == everything[5:]
    assert store.open_queue("alice", limit=3, offset=7) == [] and store.open_queue("alice", limit=0) == []
    assert [i.doc_id for i in store.open_queue("alice", dt=DT2, offset=1)] == ["b/1", "b/2"]
    assert (store.open_count("alice"), store.open_count("alice", dt=DT2), store.open_count("bob")) == (7, 3, 4)
    store.submit("alice", item_ids(store, DT2)["b/1"], "good")
    assert store.open_count("alice", dt=DT2) == 2 and store.next_item("alice").due_at == T0 + timedelta(DUE_DAYS)
    for bad in ({"offset": -1}, {"limit": -2}, {"offset": "1"}, {"limit": True}):
        with pytest.raises(FeedbackError, match="limit|offset"):
            store.open_queue("alice", **bad)


def test_a_brief_open_queue_leaves_the_large_columns_out(store):
    copy = {"doc_id": "a/9", "reason": "exact_duplicate", "detail": "", "text": "x"}
    make_batch(store, [new_item("a/0", text="x" * 100_000, prompt="p", response="r", duplicates=[copy])])
    full, brief = store.open_queue("alice")[0], store.open_queue("alice", brief=True)[0]
    assert (full.text[:3], full.prompt, full.response, len(full.duplicates)) == ("xxx", "p", "r", 1)
    assert (brief.text, brief.prompt, brief.response, brief.duplicates) == ("", None, None, [])
    unchanged = ("item_id", "doc_id", "dt", "domain", "strategy", "stratum", "quality", "scores", "due_at")
    assert [getattr(brief, k) for k in unchanged] == [getattr(full, k) for k in unchanged]


def test_progress_counts_an_experts_work(store):
    make_batch(store, [new_item(f"a/{i}") for i in range(4)])
    ids = item_ids(store)
    store.submit("alice", ids["a/0"], "good", created_at=T0 - timedelta(hours=1))  # yesterday's work
    store.submit("alice", ids["a/1"], "bad", created_at=T0)
    store.submit("alice", ids["a/1"], "good", created_at=T0 + timedelta(minutes=1))  # a correction: one more
    store.submit("alice", ids["a/2"], "skip", created_at=T0 + timedelta(minutes=2))
    store.retract_last("alice")  # the skip, taken back
    assert store.progress("alice", T0) == {"open": 2, "assigned": 4, "done": 2, "judged_since": 2}
    assert store.progress("alice", T0 - timedelta(days=1))["judged_since"] == 3
    assert store.progress("alice", T0.astimezone(timezone(timedelta(hours=2))))["judged_since"] == 2, "an instant"
    assert store.progress("bob", T0) == {"open": 4, "assigned": 4, "done": 0, "judged_since": 0}
    with pytest.raises(FeedbackError, match="unknown expert"):
        store.progress("mallory", T0)


def test_batch_progress_pages_batches_newest_first(store):
    make_batch(store, [new_item("a/0"), new_item("a/1"), new_item("a/2", experts=("bob",)),
                       new_item("l/1", domain="law", experts=("bob",))], dt=DT)
    make_batch(store, [new_item("b/0"), new_item("l/0", domain="law", experts=("carol",))], dt=DT2,
               assigned_at=T0 + timedelta(days=1))
    ids = {**item_ids(store, DT), **item_ids(store, DT2)}
    store.submit("alice", ids["a/0"], "good")
    store.submit("alice", ids["a/1"], "skip")
    store.submit("alice", ids["a/1"], "bad")  # a correction: one bad, no skip
    store.submit("bob", ids["a/2"], "good")
    store.retract_last("bob")  # open again
    store.submit("carol", ids["l/0"], "bad")
    store.submit("carol", ids["l/1"], "good")  # not assigned: counted nowhere
    page, total = store.batch_progress()
    assert total == 2 and [b["dt"] for b in page] == [DT2, DT]
    newest, oldest = page
    assert (newest["items"], newest["created_at"], newest["table_version"]) == (2, T0 + timedelta(days=1), None)
    none = {"good": 0, "bad": 0, "skip": 0}
    assert newest["experts"] == {
        "alice": {"assigned": 1, "done": 0, "open": 1, **none},
        "bob": {"assigned": 1, "done": 0, "open": 1, **none},
        "carol": {"assigned": 1, "done": 1, "open": 0, **none, "bad": 1}}
    assert oldest["experts"] == {
        "alice": {"assigned": 2, "done": 2, "open": 0, "good": 1, "bad": 1, "skip": 0},
        "bob": {"assigned": 4, "done": 0, "open": 4, **none}}
    assert oldest["batch_id"] == store.batch(DT).batch_id and oldest["items"] == 4
    assert store.batch_progress(limit=1, offset=1) == ([oldest], 2)
    assert store.batch_progress(offset=2) == ([], 2)


def test_queue_items_carry_their_duplicates(store):
    duplicates = [{"doc_id": "d/9", "reason": "exact_duplicate", "detail": "exact content_hash=ab (same day)",
                   "text": "text of d/9"}]
    make_batch(store, [new_item("d/1", duplicates=duplicates), new_item("d/2")])
    with store.engine.connect() as conn:
        stored = dict(conn.execute(sa.select(db.items.c.doc_id, db.items.c.duplicates)).all())
    assert json.loads(stored["d/1"]) == duplicates and stored["d/2"] is None
    first, second = store.open_queue("alice")
    assert (first.duplicates, second.duplicates) == (duplicates, [])
    assert store.history("d/1").item.duplicates == duplicates


def test_queued_doc_ids_and_open_load(store):
    make_batch(store, [new_item("a/0"), new_item("a/1", experts=("alice",))], dt=DT)
    make_batch(store, [new_item("b/0", experts=("bob",)), new_item("b/1", domain="law", experts=("carol", "bob"))],
               dt=DT2)
    assert sorted(store.queued_doc_ids()) == ["a/0", "a/1", "b/0", "b/1"]
    assert sorted(store.queued_doc_ids(exclude_dt=DT)) == ["b/0", "b/1"]
    assert sorted(store.queued_doc_ids(exclude_dt="2020-01-01")) == ["a/0", "a/1", "b/0", "b/1"]
    assert store.open_load() == {"alice": 2, "bob": 3, "carol": 1}
    assert store.open_load(exclude_dt=DT2) == {"alice": 2, "bob": 1, "carol": 0}
    assert store.open_load(exclude_dt=DT) == {"alice": 0, "bob": 2, "carol": 1}

    store.submit("bob", item_ids(store, DT2)["b/1"], "bad")
    store.submit("alice", item_ids(store, DT)["a/0"], "skip")
    assert store.open_load() == {"alice": 1, "bob": 2, "carol": 1}
    store.retract_last("bob")
    assert store.open_load() == {"alice": 1, "bob": 3, "carol": 1}


def test_replace_batch_replaces_a_batch_nobody_judged(store):
    first, _ = make_batch(store, [new_item("d/1"), new_item("d/2")])
    old_ids = item_ids(store)
    batch, written = make_batch(store, [new_item("d/3", experts=("bob",))], run_id="run-again", budget=5)
    assert written and batch.items == 1 and batch.run_id == "run-again" and batch.budget == 5
    new_ids = item_ids(store)
    assert list(new_ids) == ["d/3"] and not set(new_ids.values()) & set(old_ids.values())
    for old in old_ids.values():
        with pytest.raises(FeedbackError, match="does not exist"):
            store.item(old)
    with pytest.raises(FeedbackError, match="not in the annotation queue"):
        store.history("d/1")
    assert store.queued_doc_ids() == ["d/3"]
    assert count(store.engine, db.batches) == 1 and count(store.engine, db.items) == 1
    assert [(r["item_id"], r["expert"]) for r in table_rows(store.engine, db.assignments)] == [(new_ids["d/3"], "bob")]
    assert store.open_queue("alice") == [] and [i.doc_id for i in store.open_queue("bob")] == ["d/3"]
    assert store.batch(DT) == batch and batch.batch_id != first.batch_id


def test_replace_batch_keeps_a_judged_batch(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    ids = item_ids(store)
    store.submit("alice", ids["d/1"], "good")
    store.retract_last("alice")  # retracted, but judged once: the trail must keep its items
    before = snapshot(store.engine)
    existing, written = make_batch(store, [new_item("d/9")], run_id="run-again")
    assert not written
    assert (existing.items, existing.judged, existing.run_id) == (2, 1, f"run-{DT}")
    assert snapshot(store.engine) == before
    assert item_ids(store) == ids and "d/9" not in store.queued_doc_ids()


def test_a_refused_replace_batch_changes_nothing(store):
    make_batch(store, [new_item("a/0")], dt=DT)
    make_batch(store, [new_item("b/0")], dt=DT2)
    before = snapshot(store.engine)
    with pytest.raises(FeedbackError, match="pool must be kept or filtered"):
        make_batch(store, [new_item("b/1", pool="dropped")], dt=DT2)
    with pytest.raises(FeedbackError, match="unknown expert 'mallory'"):
        make_batch(store, [new_item("b/1", experts=("mallory",))], dt=DT2)
    # a document queued under another date fails the replacement part-way: all of it is rolled back
    with pytest.raises((FeedbackError, sa.exc.IntegrityError)):
        make_batch(store, [new_item("b/1"), new_item("a/0")], dt=DT2)
    assert snapshot(store.engine) == before


def test_stamp_table_version(store):
    make_batch(store, [new_item("a/0"), new_item("a/1")], dt=DT)
    make_batch(store, [new_item("b/0")], dt=DT2)
    assert store.stamp_table_version(DT, 12) is True
    assert store.batch(DT).table_version == 12 and store.batch(DT2).table_version is None
    assert [store.item(i).table_version for i in item_ids(store, DT).values()] == [12, 12]
    assert [store.item(i).table_version for i in item_ids(store, DT2).values()] == [None]
    assert store.stamp_table_version(DT, 13) is True and store.batch(DT).table_version == 13
    assert store.stamp_table_version("2020-01-01", 1) is False


# --- judgements ------------------------------------------------------------------------------------------------------

def test_submit_stores_and_returns_the_judgement(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    item_id = item_ids(store)["d/1"]
    before = datetime.now(UTC)
    j = store.submit("alice", item_id, "bad", category="toxic", rationale="  slurs  ", client="web:app",
                     request_id="r-1")
    assert (j.item_id, j.doc_id, j.expert, j.label, j.category, j.rationale, j.retracts, j.client, j.request_id) == (
        item_id, "d/1", "alice", "bad", "toxic", "slurs", None, "web:app", "r-1")
    assert before <= j.created_at <= datetime.now(UTC) and j.created_at.tzinfo is not None
    history = store.history("d/1")
    assert history.trail == [j] and history.effective == {"alice": j}
    assert store.history("d/2").trail == []
    assert count(store.engine) == 1
    given = datetime(2026, 1, 5, 8, 0, tzinfo=UTC)
    assert store.submit("bob", item_id, "good", rationale="   ", created_at=given).created_at == given
    assert store.history("d/1").effective["bob"].rationale is None


def test_submit_keeps_the_instant_of_a_non_utc_created_at(store):
    make_batch(store, [new_item("d/1")])
    given = datetime(2026, 1, 5, 12, 0, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    j = store.submit("alice", item_ids(store)["d/1"], "good", created_at=given)
    assert j.created_at == given
    assert store.history("d/1").trail[0].created_at == given


def test_replace_batch_keeps_the_instant_of_a_non_utc_assigned_at(store):
    given = datetime(2026, 1, 5, 12, 0, tzinfo=timezone(timedelta(hours=2)))  # 10:00 UTC
    batch, _ = make_batch(store, [new_item("d/1")], assigned_at=given)
    assert batch.created_at == given
    assert store.open_queue("alice")[0].due_at == given + timedelta(days=DUE_DAYS)


def test_a_second_judgement_is_a_correction(store):
    make_batch(store, [new_item("d/1")])
    item_id = item_ids(store)["d/1"]
    first = store.submit("alice", item_id, "good")
    second = store.submit("alice", item_id, "bad", category="pii")
    history = store.history("d/1")
    assert [t.annotation_id for t in history.trail] == [first.annotation_id, second.annotation_id]
    assert [t.label for t in history.trail] == ["good", "bad"]
    assert history.effective == {"alice": second}
    assert store.counts()["labels"] == {"good": 0, "bad": 1, "skip": 0}
    assert [r["label"] for r in store.export_judgements()] == ["bad"]


def test_the_same_request_id_writes_once(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    ids = item_ids(store)
    first = store.submit("alice", ids["d/1"], "good", request_id="key-1")
    again = store.submit("alice", ids["d/1"], "good", request_id="key-1")
    assert again == first and count(store.engine) == 1
    with pytest.raises(FeedbackError, match="already used"):
        store.submit("alice", ids["d/1"], "bad", request_id="key-1")
    with pytest.raises(FeedbackError, match="already used"):
        store.submit("alice", ids["d/2"], "good", request_id="key-1")
    assert count(store.engine) == 1 and store.history("d/1").effective["alice"] == first
    other = store.submit("bob", ids["d/1"], "bad", request_id="key-1")  # request ids are per expert
    assert other.annotation_id != first.annotation_id and count(store.engine) == 2


def test_concurrent_double_submit_with_one_request_id_writes_once(store):
    """A double click: two requests with the same request id, both past the lookup before either inserts."""
    make_batch(store, [new_item("d/1")])
    item_id = item_ids(store)["d/1"]
    barrier = threading.Barrier(2)

    def hold(conn, cursor, statement, *args) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO ANNOTATIONS"):
            try:  # SQLite serialises the two (BEGIN IMMEDIATE): the first waits out the timeout alone
                barrier.wait(timeout=2)
            except threading.BrokenBarrierError:
                pass

    sa.event.listen(store.engine, "before_cursor_execute", hold)
    results: list = [None, None]

    def run(i: int) -> None:
        try:
            results[i] = store.submit("alice", item_id, "good", request_id="click-1")
        except Exception as exc:  # reported below
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hold)
    assert not [r for r in results if isinstance(r, Exception)], results
    assert results[0] == results[1]
    assert count(store.engine) == 1


def test_retract_last_takes_back_the_latest_judgement(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    ids = item_ids(store)
    good = store.submit("alice", ids["d/1"], "good")
    bad = store.submit("alice", ids["d/1"], "bad")  # a correction
    assert store.retract_last("bob") is None  # bob has nothing to take back, and nothing is written
    assert count(store.engine) == 2

    undo = store.retract_last("alice", client="cli", request_id="undo-1")
    assert (undo.retracts, undo.label, undo.item_id, undo.doc_id, undo.expert, undo.client) == (
        bad.annotation_id, None, ids["d/1"], "d/1", "alice", "cli")
    assert store.retract_last("alice", client="cli", request_id="undo-1") == undo  # a repeated undo
    history = store.history("d/1")
    assert [t.annotation_id for t in history.trail] == [good.annotation_id, bad.annotation_id, undo.annotation_id]
    assert history.effective == {"alice": good}  # falls back to the earlier judgement
    assert [i.doc_id for i in store.open_queue("alice")] == ["d/2"]

    second = store.retract_last("alice")
    assert second.retracts == good.annotation_id
    assert store.history("d/1").effective == {}
    assert [i.doc_id for i in store.open_queue("alice")] == ["d/1", "d/2"]  # back in the open queue
    assert store.retract_last("alice") is None
    assert count(store.engine) == 4
    with pytest.raises(FeedbackError, match="already used"):
        store.submit("alice", ids["d/1"], "good", request_id="undo-1")


def test_retract_last_follows_the_order_judgements_were_made(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    ids = item_ids(store)
    store.submit("alice", ids["d/2"], "good")
    store.submit("alice", ids["d/1"], "skip")
    assert store.retract_last("alice").item_id == ids["d/1"]
    assert store.retract_last("alice").item_id == ids["d/2"]
    assert store.retract_last("alice") is None


# --- refused input ---------------------------------------------------------------------------------------------------

REFUSED = {
    "unknown-expert": (lambda s, i: s.submit("mallory", i["news"], "good"),
                       r"unknown expert 'mallory'.*annotation\.experts.*alice, bob, carol"),
    "invalid-expert-name": (lambda s, i: s.submit("not a name!", i["news"], "good"), "expert name .* is not valid"),
    "unknown-item": (lambda s, i: s.submit("alice", 10**9, "good"), "queue item 1000000000 does not exist"),
    "str-item-id": (lambda s, i: s.submit("alice", str(i["news"]), "good"), "must be an integer"),
    "bool-item-id": (lambda s, i: s.submit("alice", True, "good"), "must be an integer"),
    "unknown-label": (lambda s, i: s.submit("alice", i["news"], "great"), "unknown label 'great'.*good, bad, skip"),
    "no-label": (lambda s, i: s.submit("alice", i["news"], None), "unknown label None"),
    "unknown-category": (lambda s, i: s.submit("alice", i["news"], "bad", category="spam"),
                         "unknown category 'spam'.*toxic, pii, other"),
    "domain-excluded": (lambda s, i: s.submit("carol", i["news"], "good"), "may not judge domain 'news'.*law"),
    "bad-client": (lambda s, i: s.submit("alice", i["news"], "good", client="bad client"), "client 'bad client'"),
    "empty-client": (lambda s, i: s.submit("alice", i["news"], "good", client=""), "client '' is not valid"),
    "long-rationale": (lambda s, i: s.submit("alice", i["news"], "good", rationale="x" * 10_001), "rationale"),
    "bad-request-id": (lambda s, i: s.submit("alice", i["news"], "good", request_id=""), "request id"),
    "retract-unknown-expert": (lambda s, i: s.retract_last("mallory"), "unknown expert 'mallory'"),
    "retract-bad-client": (lambda s, i: s.retract_last("alice", client="x y"), "client"),
    "history-unknown-doc": (lambda s, i: s.history("nope"), "'nope' is not in the annotation queue"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_input_is_refused_and_changes_nothing(store, case):
    call, message = REFUSED[case]
    make_batch(store, [new_item("news/1"), new_item("law/1", domain="law", experts=("carol",))])
    ids = item_ids(store)
    store.submit("alice", ids["news/1"], "good")
    before = snapshot(store.engine)
    with pytest.raises(FeedbackError, match=message):
        call(store, {"news": ids["news/1"], "law": ids["law/1"]})
    assert snapshot(store.engine) == before
    assert count(store.engine) == 1
    assert store.submit("carol", ids["law/1"], "good").label == "good"  # a domain the expert has is fine


# --- counts ----------------------------------------------------------------------------------------------------------

def test_counts_and_queue_summary(store):
    make_batch(store, [new_item("n/1", stratum="news"), new_item("l/1", domain="law", stratum="law",
                                                                 experts=("bob", "carol"))])
    make_batch(store, [new_item("x/1", stratum="news", experts=("alice",))], dt=DT2, assigned_at=T0 - timedelta(1))
    ids = item_ids(store)
    store.submit("alice", ids["n/1"], "good")
    store.submit("bob", ids["n/1"], "good")
    store.submit("bob", ids["n/1"], "bad")  # a correction counts once
    store.submit("bob", ids["l/1"], "skip")
    zero = {"good": 0, "bad": 0, "skip": 0}
    assert store.counts(DT) == {
        "items": 2, "assignments": 4, "open": 1, "done": 3, "judgements": 3, "judged_items": 2,
        "labels": {"good": 1, "bad": 1, "skip": 1},
        "experts": {"alice": {"open": 0, "done": 1, **zero, "good": 1},
                    "bob": {"open": 0, "done": 2, **zero, "bad": 1, "skip": 1},
                    "carol": {"open": 1, "done": 0, **zero}}}
    overall = store.counts()
    assert (overall["items"], overall["assignments"], overall["open"], overall["done"]) == (3, 5, 2, 3)
    assert overall["experts"]["alice"] == {"open": 1, "done": 1, **zero, "good": 1}
    assert store.counts("2020-01-01")["items"] == 0

    due = T0 + timedelta(days=DUE_DAYS)
    assert store.queue_summary(dt=DT) == [
        {"expert": "alice", "stratum": "news", "assigned": 1, "done": 1, "open": 0, "next_due": None},
        {"expert": "bob", "stratum": "law", "assigned": 1, "done": 1, "open": 0, "next_due": None},
        {"expert": "bob", "stratum": "news", "assigned": 1, "done": 1, "open": 0, "next_due": None},
        {"expert": "carol", "stratum": "law", "assigned": 1, "done": 0, "open": 1, "next_due": due},
    ]
    assert store.queue_summary(expert="alice") == [
        {"expert": "alice", "stratum": "news", "assigned": 2, "done": 1, "open": 1,
         "next_due": due - timedelta(days=1)}]
    assert store.queue_summary(dt="2020-01-01") == []

    store.retract_last("bob")  # the skip of l/1
    after = store.counts(DT)
    assert (after["open"], after["done"], after["labels"]) == (2, 2, {"good": 1, "bad": 1, "skip": 0})
    assert store.queue_summary(expert="bob", dt=DT)[0] == {
        "expert": "bob", "stratum": "law", "assigned": 1, "done": 0, "open": 1, "next_due": due}


# --- import and export -----------------------------------------------------------------------------------------------

def _rows() -> list[dict]:
    return [
        {"doc_id": "d/1", "expert": "alice", "label": "good", "created_at": "2026-01-05T09:00:00+00:00"},
        {"doc_id": "d/1", "expert": "bob", "label": "bad", "category": "toxic", "rationale": "rude",
         "created_at": "2026-01-05T11:00:00+02:00"},
        {"doc_id": "d/2", "expert": "alice", "label": "skip", "created_at": datetime(2026, 1, 5, 10, tzinfo=UTC)},
        {"doc_id": "l/1", "expert": "carol", "label": "good", "category": "", "rationale": ""},
    ]


def test_import_judgements_once(store):
    make_batch(store, [new_item("d/1"), new_item("d/2"), new_item("l/1", domain="law", experts=("carol",))])
    assert store.import_judgements(_rows(), client="import:file.csv") == {"rows": 4, "imported": 4,
                                                                          "already_there": 0}
    trail = table_rows(store.engine, db.annotations)
    assert [(r["expert"], r["label"], r["category"], r["rationale"], r["client"]) for r in trail] == [
        ("alice", "good", None, None, "import:file.csv"), ("bob", "bad", "toxic", "rude", "import:file.csv"),
        ("alice", "skip", None, None, "import:file.csv"), ("carol", "good", None, None, "import:file.csv")]
    assert [utc(r["created_at"]) for r in trail[:3]] == [datetime(2026, 1, 5, h, tzinfo=UTC) for h in (9, 9, 10)]
    assert store.open_queue("carol") == [] and [i.doc_id for i in store.open_queue("bob")] == ["d/2"]

    assert store.import_judgements(_rows()) == {"rows": 4, "imported": 0, "already_there": 4}
    assert table_rows(store.engine, db.annotations) == trail
    later = {"doc_id": "d/1", "expert": "alice", "label": "bad", "created_at": "2026-01-06T09:00:00Z"}
    assert store.import_judgements([*_rows(), later]) == {"rows": 5, "imported": 1, "already_there": 4}
    assert store.history("d/1").effective["alice"].label == "bad"


@pytest.mark.parametrize("bad", [
    ({"doc_id": "nope", "expert": "alice", "label": "good"}, "document 'nope' is not in the annotation queue"),
    ({"doc_id": "d/1", "expert": "mallory", "label": "good"}, "unknown expert 'mallory'"),
    ({"doc_id": "d/1", "expert": None, "label": "good"}, "expert name None is not valid"),
    ({"doc_id": "d/1", "expert": "alice", "label": "fine"}, "unknown label 'fine'"),
    ({"doc_id": "d/1", "expert": "alice", "label": "bad", "category": "spam"}, "unknown category 'spam'"),
    ({"doc_id": "d/1", "expert": "alice", "label": "good", "created_at": "yesterday"}, "'yesterday' is not an ISO"),
    ({"doc_id": "d/1", "expert": "carol", "label": "good"}, "may not judge domain 'news'"),
], ids=["unknown-doc", "unknown-expert", "no-expert", "bad-label", "bad-category", "bad-created_at", "domain"])
def test_an_import_with_a_bad_row_imports_nothing(store, bad):
    row, message = bad
    make_batch(store, [new_item("d/1"), new_item("d/2"), new_item("l/1", domain="law", experts=("carol",))])
    rows = _rows()
    rows.insert(2, row)
    with pytest.raises(FeedbackError, match=rf"^1 of 5 rows refused, nothing imported: row 3: .*{message}"):
        store.import_judgements(rows)
    assert count(store.engine) == 0


def test_an_import_lists_every_bad_row(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    rows = [*_rows()[:3], {"doc_id": "nope", "expert": "alice", "label": "good"},
            {"doc_id": "d/1", "expert": "mallory", "label": "good"}, {"doc_id": "d/1", "expert": "bob", "label": "x"},
            {"doc_id": "d/2", "expert": "bob", "label": "good", "created_at": "2026-13-45"}]
    with pytest.raises(FeedbackError) as refused:
        store.import_judgements(rows)
    message = str(refused.value)
    assert message.startswith("4 of 7 rows refused, nothing imported")
    assert re.findall(r"row (\d+):", message) == ["4", "5", "6", "7"]
    assert count(store.engine) == 0
    with pytest.raises(FeedbackError, match="client"):
        store.import_judgements(_rows()[:1], client="bad client")
    assert count(store.engine) == 0


def test_export_judgements(store):
    make_batch(store, [new_item("d/1"), new_item("d/2")])
    ids = item_ids(store)
    a1 = store.submit("alice", ids["d/1"], "good", created_at=T0)
    a2 = store.submit("alice", ids["d/1"], "bad", category="pii", rationale="a phone number",
                      created_at=T0 + timedelta(hours=1))
    b1 = store.submit("bob", ids["d/2"], "skip", created_at=T0 + timedelta(hours=2), client="cli")
    store.submit("bob", ids["d/1"], "good", created_at=T0 + timedelta(hours=3))
    undo = store.retract_last("bob")
    effective = store.export_judgements()
    assert effective == [
        {"doc_id": "d/1", "expert": "alice", "label": "bad", "category": "pii", "rationale": "a phone number",
         "created_at": T0 + timedelta(hours=1)},
        {"doc_id": "d/2", "expert": "bob", "label": "skip", "category": None, "rationale": None,
         "created_at": T0 + timedelta(hours=2)},
    ]
    trail = store.export_judgements(trail=True)
    assert len(trail) == 5 == count(store.engine)
    assert [(r["annotation_id"], r["label"], r["retracts"]) for r in trail] == [
        (a1.annotation_id, "good", None), (a2.annotation_id, "bad", None), (b1.annotation_id, "skip", None),
        (undo.retracts, "good", None), (undo.annotation_id, None, undo.retracts)]
    assert trail[2]["client"] == "cli" and set(trail[0]) == {*effective[0], "annotation_id", "retracts", "client"}
