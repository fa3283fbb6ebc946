"""Where the feedback store lives: connection URLs keep their TLS options; a store that cannot use WAL still opens;
migration 3's ``assignments.judged`` is backfilled and kept right by triggers on both engines."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

from dctp_tasks.config import AnnotationConfig, ExpertConfig
from dctp_tasks.feedback import db
from dctp_tasks.feedback.store import FeedbackStore, Judgement, effective_judgements


def test_a_connection_keeps_its_tls_and_timeout_options():
    uri = "postgresql://u:p%40ss@db.internal:6432/feedback?sslmode=verify-full&sslrootcert=/ca.pem&__extra__=%7B%7D"
    url = db.connection_url(uri)
    assert (url.host, url.port, url.username, url.password, url.database) == ("db.internal", 6432, "u", "p@ss",
                                                                              "feedback")
    assert dict(url.query) == {"sslmode": "verify-full", "sslrootcert": "/ca.pem"}
    as_json = json.dumps({"conn_type": "postgres", "host": "db.internal", "login": "u", "schema": "feedback",
                          "extra": json.dumps({"sslmode": "require", "connect_timeout": 10, "unrelated": "x"})})
    assert dict(db.connection_url(as_json).query) == {"sslmode": "require", "connect_timeout": "10"}
    with pytest.raises(ValueError, match="postgres://"):
        db.connection_url("mysql://u@h/feedback")


def test_a_store_that_cannot_use_wal_opens_and_migrates():
    engine = db.create_feedback_engine("sqlite://")  # in memory: no WAL; must not wait for it
    versions = [m.version for m in db.MIGRATIONS]
    assert db.upgrade(engine) == versions and db.applied_versions(engine) == versions
    engine.dispose()


# --- migration 3: assignments.judged, kept by triggers ---------------------------------------------------------------

T0 = datetime(2026, 1, 5, 6, 30, tzinfo=UTC)
CONFIG = AnnotationConfig(experts={"alice": ExpertConfig(), "bob": ExpertConfig(), "carol": ExpertConfig()})


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path):
    """An engine on a new, empty database: a SQLite file, or a PostgreSQL database of its own."""
    url = f"sqlite:///{tmp_path / 'feedback.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "pg_database")
    engine = db.create_feedback_engine(url)
    yield engine
    engine.dispose()


def _insert(conn: sa.Connection, table: sa.Table, rows: list[dict]) -> list[int]:
    """Insert ``rows`` into ``table`` one by one; return their primary keys."""
    key = next(iter(table.primary_key.columns))
    return [conn.execute(table.insert().returning(key), row).scalar_one() for row in rows]


def _judgement(item_id: int, expert: str, label: str | None, retracts: int | None = None) -> dict:
    return {"item_id": item_id, "expert": expert, "label": label, "retracts": retracts, "created_at": T0,
            "client": "test"}


def _judged(engine: sa.Engine) -> dict[tuple[int, str], bool]:
    with engine.connect() as conn:
        return {(i, e): bool(j) for i, e, j in conn.execute(sa.text(
            "SELECT item_id, expert, judged FROM assignments"))}


def _effective(engine: sa.Engine) -> set[tuple[int, str]]:
    """The (item, expert) pairs with an effective judgement, resolved in Python from the whole trail."""
    with engine.connect() as conn:
        rows = conn.execute(sa.select(db.annotations).order_by(db.annotations.c.annotation_id)).mappings().all()
    trail = [_to_judgement(r) for r in rows]
    return set(effective_judgements(trail, by_item=True))


def _to_judgement(row) -> Judgement:
    return Judgement(annotation_id=row["annotation_id"], item_id=row["item_id"], doc_id="", expert=row["expert"],
                     label=row["label"], category=None, rationale=None, retracts=row["retracts"],
                     created_at=row["created_at"], client=row["client"])


def _assert_consistent(engine: sa.Engine) -> dict[tuple[int, str], bool]:
    judged = _judged(engine)
    effective = _effective(engine)
    assert judged == {pair: pair in effective for pair in judged}
    return judged


def _v2_store_with_judgements(engine: sa.Engine, monkeypatch) -> list[int]:
    """A store of version 2 (before ``judged``) with three items, each assigned to alice and bob, and a trail of
    judgements, corrections and retractions (and carol's judgement of an item she is not assigned); return the
    item ids."""
    monkeypatch.setattr(db, "MIGRATIONS", db.MIGRATIONS[:2])
    monkeypatch.setattr(db, "LATEST", 2)
    assert db.upgrade(engine) == [1, 2]
    with engine.begin() as conn:
        (batch_id,) = _insert(conn, db.batches, [{
            "dag_id": "d", "dt": "2026-01-05", "created_at": T0, "budget": 3, "strategy_mix": "{}",
            "config_hash": "h", "items": 3}])
        ids = _insert(conn, db.items, [{
            "batch_id": batch_id, "position": p, "doc_id": f"d/{p}", "dt": "2026-01-05", "text": "t", "scores": "{}",
            "pool": "kept", "strategy": "random", "stratum": "x", "synthetic": False} for p in range(3)])
        conn.execute(db.assignments.insert(), [
            {"item_id": i, "expert": e, "assigned_at": T0, "due_at": T0} for i in ids for e in ("alice", "bob")])
        one, two, three = ids
        _insert(conn, db.annotations, [_judgement(one, "alice", "good"), _judgement(two, "alice", "good"),
                                       _judgement(two, "alice", "bad"), _judgement(one, "carol", "bad")])
        bob_skip, alice_three, bob_good, bob_bad = _insert(conn, db.annotations, [
            _judgement(two, "bob", "skip"), _judgement(three, "alice", "good"), _judgement(three, "bob", "good"),
            _judgement(three, "bob", "bad")])
        _insert(conn, db.annotations, [_judgement(two, "bob", None, retracts=bob_skip),
                                       _judgement(three, "alice", None, retracts=alice_three),
                                       _judgement(three, "bob", None, retracts=bob_bad)])
    monkeypatch.undo()
    return ids


def test_migration_3_backfills_judged_on_a_store_in_use(engine, monkeypatch):
    one, two, three = _v2_store_with_judgements(engine, monkeypatch)
    assert db.upgrade(engine) == [3]
    assert _assert_consistent(engine) == {
        (one, "alice"): True, (one, "bob"): False,
        (two, "alice"): True,  # corrected, still judged
        (two, "bob"): False,  # their only judgement retracted
        (three, "alice"): False,
        (three, "bob"): True,  # a correction retracted: the first judgement stands
    }
    indexes = {name: {i["name"]: i["column_names"] for i in sa.inspect(engine).get_indexes(name)}
               for name in ("assignments", "annotations")}
    assert indexes["assignments"]["ix_assignments_open"] == ["expert", "judged", "due_at", "item_id"]
    assert indexes["annotations"]["ix_annotations_expert_id"] == ["expert", "annotation_id"]
    assert indexes["annotations"]["ix_annotations_retracts"] == ["retracts"]
    assert indexes["annotations"]["ix_annotations_expert_created"] == ["expert", "created_at"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM queue_items WHERE duplicates IS NULL")).scalar_one() == 3


def test_triggers_keep_judged_right_for_every_writer(engine, monkeypatch):
    one, two, three = _v2_store_with_judgements(engine, monkeypatch)
    db.upgrade(engine)
    store = FeedbackStore(engine, CONFIG)
    store.submit("bob", one, "good")  # a judgement
    assert _assert_consistent(engine)[(one, "bob")] is True
    store.submit("alice", three, "good")
    store.submit("alice", three, "skip")  # a correction
    assert _assert_consistent(engine)[(three, "alice")] is True
    store.retract_last("alice")  # undo the correction: the first judgement stands
    assert _assert_consistent(engine)[(three, "alice")] is True
    store.retract_last("alice")  # undo that too: open again
    assert _assert_consistent(engine)[(three, "alice")] is False
    store.retract_last("bob")
    assert _assert_consistent(engine)[(one, "bob")] is False
    # carol judged d/0 before it was assigned to her; an assignment made now is done at once, one of d/1 is open
    with engine.begin() as conn:
        conn.execute(db.assignments.insert(), [{"item_id": i, "expert": "carol", "assigned_at": T0, "due_at": T0}
                                               for i in (one, two)])
    judged = _assert_consistent(engine)
    assert (judged[(one, "carol")], judged[(two, "carol")]) == (True, False)
    store.import_judgements([{"doc_id": "d/1", "expert": "carol", "label": "good"}])  # a bulk writer
    assert _assert_consistent(engine)[(two, "carol")] is True
    assert store.open_count("carol") == 0 and store.open_count("alice") == 1
    # the trail stays append-only
    with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(sa.text("UPDATE annotations SET label = 'good'"))


@pytest.mark.parametrize("first", ["assignment", "judgement", "correction"])
def test_concurrent_writers_of_one_item_leave_judged_right_on_postgresql(pg_database, first):
    """Two transactions at once about one (item, expert): the second to write waits for the first (the triggers
    lock the item) and then sees what it committed, so ``judged`` never misses the other's row."""
    engine = db.create_feedback_engine(pg_database)
    try:
        db.upgrade(engine)
        store = FeedbackStore(engine, CONFIG)
        with engine.begin() as conn:
            (batch_id,) = _insert(conn, db.batches, [{
                "dag_id": "d", "dt": "2026-01-05", "created_at": T0, "budget": 1, "strategy_mix": "{}",
                "config_hash": "h", "items": 1}])
            (item,) = _insert(conn, db.items, [{
                "batch_id": batch_id, "position": 0, "doc_id": "d/0", "dt": "2026-01-05", "text": "t",
                "scores": "{}", "pool": "kept", "strategy": "random", "stratum": "x"}])
            if first != "assignment":
                conn.execute(db.assignments.insert(), {"item_id": item, "expert": "alice", "assigned_at": T0,
                                                       "due_at": T0})
        earlier = store.submit("alice", item, "good") if first == "correction" else None
        assignment = {"item_id": item, "expert": "alice", "assigned_at": T0, "due_at": T0}
        # assignment: an assignment made while the judgement is written; judgement: a judgement while the
        # assignment is written; correction: the undo of an earlier judgement while a new one is written
        holder_writes, other_writes = {
            "assignment": ((db.annotations, _judgement(item, "alice", "good")), (db.assignments, assignment)),
            "judgement": ((db.assignments, assignment), (db.annotations, _judgement(item, "alice", "bad"))),
            "correction": ((db.annotations, _judgement(item, "alice", "bad")),
                           (db.annotations, _judgement(item, "alice", None, retracts=getattr(
                               earlier, "annotation_id", None)))),
        }[first]
        if first == "judgement":
            with engine.begin() as conn:  # the assignment of this case is the holder's: start from none
                conn.execute(db.assignments.delete())
        errors: list[BaseException] = []

        def other() -> None:
            try:
                with engine.begin() as conn:
                    conn.execute(other_writes[0].insert(), other_writes[1])
            except BaseException as exc:  # reported below
                errors.append(exc)

        with engine.begin() as conn:
            conn.execute(holder_writes[0].insert(), holder_writes[1])
            thread = threading.Thread(target=other)
            thread.start()
            thread.join(timeout=0.5)
            assert thread.is_alive(), "the second writer did not wait for the first"
        thread.join(timeout=30)
        assert not errors, errors
        assert _assert_consistent(engine) == {(item, "alice"): True}
    finally:
        engine.dispose()
