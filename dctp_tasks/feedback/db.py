"""The feedback store's database: where it lives, its tables, and versioned migrations applied idempotently.

PostgreSQL in production (the Airflow connection ``dctp_feedback``), SQLite as the embedded default
(``$AIRFLOW_HOME/dctp_feedback.db``). ``upgrade`` applies the migrations a database lacks, in order, each in one
transaction under a lock (PostgreSQL: an advisory lock; SQLite: ``BEGIN IMMEDIATE``), so concurrent upgrades apply
each migration once. ``annotations`` is append-only: a trigger refuses UPDATE and DELETE on both engines; other
triggers keep ``assignments.judged`` (the expert has an effective judgement of the item) right for every writer.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine, make_url

import dctp_tasks

log = logging.getLogger(__name__)

CONN_ID = "dctp_feedback"
"""The Airflow connection naming the PostgreSQL feedback store; absent, the SQLite default is used."""
MIGRATIONS_TABLE = "dctp_feedback_migrations"
READ_ONLY = "dctp_read_only"
"""Execution option of a connection that only reads: ``engine.connect().execution_options(**{READ_ONLY: True})``."""
_LOCK_KEY = 0x64637470_66656564 & 0x7FFFFFFFFFFFFFFF  # "dctpfeed": the advisory lock of upgrades

# The store's current shape, for queries (the migrations below create it; a test compares the two).
metadata = sa.MetaData()
batches = sa.Table(
    "annotation_batches", metadata,
    sa.Column("batch_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("dag_id", sa.Text, nullable=False),
    sa.Column("dt", sa.String(10), nullable=False, unique=True),
    sa.Column("run_id", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("budget", sa.Integer, nullable=False),
    sa.Column("strategy_mix", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String(64), nullable=False),
    sa.Column("mlflow_run_id", sa.String(64)),
    sa.Column("staged_version", sa.Text),
    sa.Column("table_version", sa.Integer),
    sa.Column("items", sa.Integer, nullable=False),
)
items = sa.Table(
    "queue_items", metadata,
    sa.Column("item_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("batch_id", sa.BigInteger, sa.ForeignKey("annotation_batches.batch_id"), nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("doc_id", sa.Text, nullable=False, unique=True),
    sa.Column("dt", sa.String(10), nullable=False),
    sa.Column("source", sa.Text),
    sa.Column("domain", sa.Text),
    sa.Column("lang", sa.Text),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("prompt", sa.Text),
    sa.Column("response", sa.Text),
    sa.Column("scores", sa.Text, nullable=False),
    sa.Column("quality", sa.Float),
    sa.Column("verdict", sa.String(16)),
    sa.Column("filter_reason", sa.Text),
    sa.Column("filter_detail", sa.Text),
    sa.Column("pool", sa.String(16), nullable=False),
    sa.Column("strategy", sa.String(32), nullable=False),
    sa.Column("strategy_score", sa.Float),
    sa.Column("stratum", sa.Text, nullable=False),
    sa.Column("staged_version", sa.Text),
    sa.Column("table_version", sa.Integer),
    sa.Column("synthetic", sa.Boolean, nullable=False, server_default=sa.false()),
    # JSON: the rows the day's dedup stages removed as duplicates of this document (``select.nearest_duplicates``)
    sa.Column("duplicates", sa.Text),
)
assignments = sa.Table(
    "assignments", metadata,
    sa.Column("assignment_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("item_id", sa.BigInteger, sa.ForeignKey("queue_items.item_id"), nullable=False),
    sa.Column("expert", sa.String(128), nullable=False),
    sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
    # whether the expert has an effective judgement of the item: set by triggers (migration 3), never by the store
    sa.Column("judged", sa.Boolean, nullable=False, server_default=sa.false()),
)
annotations = sa.Table(
    "annotations", metadata,
    sa.Column("annotation_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("item_id", sa.BigInteger, sa.ForeignKey("queue_items.item_id"), nullable=False),
    sa.Column("expert", sa.String(128), nullable=False),
    sa.Column("label", sa.String(8)),
    sa.Column("category", sa.String(64)),
    sa.Column("rationale", sa.Text),
    sa.Column("retracts", sa.BigInteger, sa.ForeignKey("annotations.annotation_id")),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("client", sa.String(64), nullable=False),
    sa.Column("request_id", sa.String(128)),
)

merge_runs = sa.Table(
    "merge_runs", metadata,
    sa.Column("merge_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("dag_id", sa.Text, nullable=False),
    sa.Column("run_id", sa.Text),
    sa.Column("dt", sa.String(10)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("judgements", sa.Integer, nullable=False),
    sa.Column("documents", sa.Integer, nullable=False),
    sa.Column("stats", sa.Text, nullable=False),
    sa.Column("config_hash", sa.String(64), nullable=False),
    sa.Column("table_version", sa.Integer),
)
consensus = sa.Table(
    "consensus", metadata,
    sa.Column("merge_id", sa.BigInteger, sa.ForeignKey("merge_runs.merge_id"), primary_key=True),
    sa.Column("item_id", sa.BigInteger, sa.ForeignKey("queue_items.item_id"), primary_key=True),
    sa.Column("label", sa.String(16), nullable=False),
    sa.Column("p_good", sa.Float),
    sa.Column("confidence", sa.Float),
    sa.Column("judgements", sa.Integer, nullable=False),
    sa.Column("method", sa.String(32), nullable=False),
    sa.Column("annotation_ids", sa.Text, nullable=False),
)
expert_reliability = sa.Table(
    "expert_reliability", metadata,
    sa.Column("merge_id", sa.BigInteger, sa.ForeignKey("merge_runs.merge_id"), primary_key=True),
    sa.Column("expert", sa.String(128), primary_key=True),
    sa.Column("judgements", sa.Integer, nullable=False),
    sa.Column("reliability", sa.Float),
    sa.Column("agreement", sa.Float),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
)
sampling_weights = sa.Table(
    "sampling_weights", metadata,
    sa.Column("merge_id", sa.BigInteger, sa.ForeignKey("merge_runs.merge_id"), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("good", sa.Integer, nullable=False),
    sa.Column("bad", sa.Integer, nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("weight", sa.Float, nullable=False),
)

# Types that differ between the engines; the DDL below is otherwise plain SQL both accept.
_TYPES = {
    "postgresql": {"id": "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY", "ref": "BIGINT",
                   "ts": "TIMESTAMP WITH TIME ZONE", "real": "DOUBLE PRECISION", "bool": "BOOLEAN"},
    "sqlite": {"id": "INTEGER PRIMARY KEY AUTOINCREMENT", "ref": "INTEGER", "ts": "DATETIME", "real": "REAL",
               "bool": "BOOLEAN"},
}
_INITIAL = [
    """CREATE TABLE annotation_batches (
        batch_id {id},
        dag_id TEXT NOT NULL,
        dt VARCHAR(10) NOT NULL UNIQUE,
        run_id TEXT,
        created_at {ts} NOT NULL,
        budget INTEGER NOT NULL,
        strategy_mix TEXT NOT NULL,
        config_hash VARCHAR(64) NOT NULL,
        mlflow_run_id VARCHAR(64),
        staged_version TEXT,
        table_version INTEGER,
        items INTEGER NOT NULL
    )""",
    """CREATE TABLE queue_items (
        item_id {id},
        batch_id {ref} NOT NULL REFERENCES annotation_batches (batch_id),
        position INTEGER NOT NULL,
        doc_id TEXT NOT NULL UNIQUE,
        dt VARCHAR(10) NOT NULL,
        source TEXT,
        domain TEXT,
        lang TEXT,
        text TEXT NOT NULL,
        prompt TEXT,
        response TEXT,
        scores TEXT NOT NULL,
        quality {real},
        verdict VARCHAR(16),
        filter_reason TEXT,
        filter_detail TEXT,
        pool VARCHAR(16) NOT NULL CHECK (pool IN ('kept', 'filtered')),
        strategy VARCHAR(32) NOT NULL,
        strategy_score {real},
        stratum TEXT NOT NULL,
        staged_version TEXT,
        table_version INTEGER
    )""",
    "CREATE INDEX ix_queue_items_batch ON queue_items (batch_id, position)",
    """CREATE TABLE assignments (
        assignment_id {id},
        item_id {ref} NOT NULL REFERENCES queue_items (item_id),
        expert VARCHAR(128) NOT NULL,
        assigned_at {ts} NOT NULL,
        due_at {ts} NOT NULL,
        UNIQUE (item_id, expert)
    )""",
    "CREATE INDEX ix_assignments_expert ON assignments (expert)",
    # The audit trail: a judgement (label set) or the retraction of an earlier one (retracts set), never both.
    """CREATE TABLE annotations (
        annotation_id {id},
        item_id {ref} NOT NULL REFERENCES queue_items (item_id),
        expert VARCHAR(128) NOT NULL,
        label VARCHAR(8) CHECK (label IN ('good', 'bad', 'skip')),
        category VARCHAR(64),
        rationale TEXT,
        retracts {ref} REFERENCES annotations (annotation_id),
        created_at {ts} NOT NULL,
        client VARCHAR(64) NOT NULL,
        request_id VARCHAR(128),
        CHECK ((label IS NULL AND retracts IS NOT NULL) OR (label IS NOT NULL AND retracts IS NULL)),
        UNIQUE (expert, request_id)
    )""",
    "CREATE INDEX ix_annotations_item ON annotations (item_id)",
    "CREATE INDEX ix_annotations_expert ON annotations (expert)",
]
# Merging: one row per merge run; consensus rows only where a document's consensus changed (so the table is the
# history of every document's consensus, and the current one is its row of the highest merge_id).
_MERGE = [
    # generated documents are judged like real ones, but their labels never train the expert-quality classifier
    "ALTER TABLE queue_items ADD COLUMN synthetic {bool} NOT NULL DEFAULT FALSE",
    """CREATE TABLE merge_runs (
        merge_id {id},
        dag_id TEXT NOT NULL,
        run_id TEXT,
        dt VARCHAR(10),
        created_at {ts} NOT NULL,
        method VARCHAR(32) NOT NULL,
        judgements INTEGER NOT NULL,
        documents INTEGER NOT NULL,
        stats TEXT NOT NULL,
        config_hash VARCHAR(64) NOT NULL,
        table_version INTEGER
    )""",
    """CREATE TABLE consensus (
        merge_id {ref} NOT NULL REFERENCES merge_runs (merge_id),
        item_id {ref} NOT NULL REFERENCES queue_items (item_id),
        label VARCHAR(16) NOT NULL CHECK (label IN ('good', 'bad', 'needs_review')),
        p_good {real},
        confidence {real},
        judgements INTEGER NOT NULL,
        method VARCHAR(32) NOT NULL,
        annotation_ids TEXT NOT NULL,
        PRIMARY KEY (merge_id, item_id)
    )""",
    "CREATE INDEX ix_consensus_item ON consensus (item_id, merge_id)",
    """CREATE TABLE expert_reliability (
        merge_id {ref} NOT NULL REFERENCES merge_runs (merge_id),
        expert VARCHAR(128) NOT NULL,
        judgements INTEGER NOT NULL,
        reliability {real},
        agreement {real},
        flagged {bool} NOT NULL,
        weight {real} NOT NULL,
        PRIMARY KEY (merge_id, expert)
    )""",
    """CREATE TABLE sampling_weights (
        merge_id {ref} NOT NULL REFERENCES merge_runs (merge_id),
        kind VARCHAR(16) NOT NULL CHECK (kind IN ('source', 'domain')),
        key TEXT NOT NULL,
        good INTEGER NOT NULL,
        bad INTEGER NOT NULL,
        share {real} NOT NULL,
        weight {real} NOT NULL,
        PRIMARY KEY (merge_id, kind, key)
    )""",
]
_APPEND_ONLY = {
    "postgresql": [
        """CREATE OR REPLACE FUNCTION dctp_annotations_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION USING ERRCODE = 'insufficient_privilege',
                MESSAGE = 'annotations is append-only: ' || TG_OP || ' refused (a correction is a new row)';
        END $$""",
        """CREATE TRIGGER annotations_append_only BEFORE UPDATE OR DELETE ON annotations
            FOR EACH ROW EXECUTE FUNCTION dctp_annotations_append_only()""",
        """CREATE TRIGGER annotations_no_truncate BEFORE TRUNCATE ON annotations
            FOR EACH STATEMENT EXECUTE FUNCTION dctp_annotations_append_only()""",
    ],
    "sqlite": [
        """CREATE TRIGGER annotations_no_update BEFORE UPDATE ON annotations
            BEGIN SELECT RAISE(ABORT, 'annotations is append-only: UPDATE refused (a correction is a new row)');
            END""",
        """CREATE TRIGGER annotations_no_delete BEFORE DELETE ON annotations
            BEGIN SELECT RAISE(ABORT, 'annotations is append-only: DELETE refused (a correction is a new row)');
            END""",
    ],
}

# Migration 3: what the annotation app asks on every request (the next open item, undo, today's count) answered from
# indexes. ``assignments.judged`` caches "the expert has an effective judgement of the item" (a judgement no
# retraction names); triggers keep it right for every writer, since ``annotations`` only grows by INSERT.
_LIVE_JUDGEMENT = """EXISTS (SELECT 1 FROM annotations j WHERE j.item_id = {item} AND j.expert = {expert}
            AND j.label IS NOT NULL AND NOT EXISTS (SELECT 1 FROM annotations r WHERE r.retracts = j.annotation_id))"""


def _live(item: str, expert: str) -> str:
    return _LIVE_JUDGEMENT.format(item=item, expert=expert)


_JUDGED = [
    "ALTER TABLE assignments ADD COLUMN judged {bool} NOT NULL DEFAULT FALSE",
    "ALTER TABLE queue_items ADD COLUMN duplicates TEXT",
    # an expert's open queue in the order it is worked (due date, then item id)
    "CREATE INDEX ix_assignments_open ON assignments (expert, judged, due_at, item_id)",
    "DROP INDEX ix_assignments_expert",  # the one above leads with expert too
    # undo: an expert's latest judgement, and whether a retraction names it
    "CREATE INDEX ix_annotations_expert_id ON annotations (expert, annotation_id)",
    "DROP INDEX ix_annotations_expert",
    "CREATE INDEX ix_annotations_retracts ON annotations (retracts)",
    # "judged today"
    "CREATE INDEX ix_annotations_expert_created ON annotations (expert, created_at)",
    # the stores already in use: their judgements so far
    "UPDATE assignments SET judged = TRUE WHERE " + _live("assignments.item_id", "assignments.expert"),
]
_JUDGED_TRIGGERS = {
    "postgresql": [
        # Both functions first lock the queue item's row: a judgement and an assignment of one item (or two
        # judgements, as a submit and an undo) take turns, and under READ COMMITTED each statement after the lock
        # sees what the other committed, so neither computes ``judged`` from a state the other is changing.
        f"""CREATE OR REPLACE FUNCTION dctp_assignments_judged() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM 1 FROM queue_items WHERE item_id = NEW.item_id FOR NO KEY UPDATE;
            NEW.judged := {_live("NEW.item_id", "NEW.expert")};
            RETURN NEW;
        END $$""",
        """CREATE TRIGGER assignments_judged BEFORE INSERT ON assignments
            FOR EACH ROW EXECUTE FUNCTION dctp_assignments_judged()""",
        f"""CREATE OR REPLACE FUNCTION dctp_annotations_judged() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            live boolean := TRUE;  -- a new judgement: no retraction can name it yet
        BEGIN
            PERFORM 1 FROM queue_items WHERE item_id = NEW.item_id FOR NO KEY UPDATE;
            IF NEW.label IS NULL THEN
                live := {_live("NEW.item_id", "NEW.expert")};
            END IF;
            UPDATE assignments SET judged = live
                WHERE item_id = NEW.item_id AND expert = NEW.expert AND judged IS DISTINCT FROM live;
            RETURN NULL;
        END $$""",
        """CREATE TRIGGER annotations_judged AFTER INSERT ON annotations
            FOR EACH ROW EXECUTE FUNCTION dctp_annotations_judged()""",
    ],
    # SQLite has one writer at a time (BEGIN IMMEDIATE): nothing to take turns over.
    "sqlite": [
        # most new assignments have no judgement yet: the WHEN spares a bulk insert one UPDATE per row
        f"""CREATE TRIGGER assignments_judged AFTER INSERT ON assignments
            WHEN EXISTS (SELECT 1 FROM annotations WHERE item_id = NEW.item_id AND expert = NEW.expert
                         AND label IS NOT NULL)
            BEGIN
                UPDATE assignments SET judged = {_live("NEW.item_id", "NEW.expert")}
                    WHERE assignment_id = NEW.assignment_id;
            END""",
        """CREATE TRIGGER annotations_judged AFTER INSERT ON annotations
            WHEN NEW.label IS NOT NULL
            BEGIN
                UPDATE assignments SET judged = TRUE
                    WHERE item_id = NEW.item_id AND expert = NEW.expert AND NOT judged;
            END""",
        f"""CREATE TRIGGER annotations_retracted AFTER INSERT ON annotations
            WHEN NEW.label IS NULL
            BEGIN
                UPDATE assignments SET judged = {_live("NEW.item_id", "NEW.expert")}
                    WHERE item_id = NEW.item_id AND expert = NEW.expert;
            END""",
    ],
}


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: dict[str, list[str]]
    """Dialect name -> SQL statements, run in order in one transaction."""


def _per_dialect(statements: list[str]) -> dict[str, list[str]]:
    return {dialect: [s.format(**types) for s in statements] for dialect, types in _TYPES.items()}


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "annotation batches, queue items, assignments, append-only annotations",
              {d: s + _APPEND_ONLY[d] for d, s in _per_dialect(_INITIAL).items()}),
    Migration(2, "merge runs, consensus history, expert reliability, sampling weights", _per_dialect(_MERGE)),
    Migration(3, "assignments.judged kept by triggers, indexes of the open queue and undo, queue_items.duplicates",
              {d: s + _JUDGED_TRIGGERS[d] for d, s in _per_dialect(_JUDGED).items()}),
)
LATEST = MIGRATIONS[-1].version


class SchemaOutdated(RuntimeError):
    """The database lacks migrations this code needs (run ``dctp db upgrade``) or has ones it does not know."""


def default_url() -> str:
    """Return the embedded default: ``sqlite:///$AIRFLOW_HOME/dctp_feedback.db``."""
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow")
    return f"sqlite:///{(home / 'dctp_feedback.db').absolute()}"


def feedback_url() -> str | URL:
    """Return where the store lives outside a task: ``$DCTP_FEEDBACK_URL`` (a SQLAlchemy URL), else the Airflow
    connection ``dctp_feedback`` given as ``$AIRFLOW_CONN_DCTP_FEEDBACK`` (URI or JSON), else the SQLite default.

    Tasks read the connection through the postgres provider's hook instead, from any secrets backend.
    """
    if os.environ.get("DCTP_FEEDBACK_URL"):
        return os.environ["DCTP_FEEDBACK_URL"]
    conn = os.environ.get(f"AIRFLOW_CONN_{CONN_ID.upper()}")
    return connection_url(conn) if conn else default_url()


def connection_url(conn: str) -> URL:
    """Return the SQLAlchemy URL of an Airflow connection given as a URI (``postgresql://…``) or as JSON, with its
    libpq options (``sslmode``, ``sslrootcert`` …) from the URI's query or the JSON ``extra``."""
    if conn.lstrip().startswith("{"):
        fields = json.loads(conn)
        extra = fields.get("extra") or {}
        url = postgres_url(fields.get("host"), fields.get("port"), fields.get("login"), fields.get("password"),
                           fields.get("schema"))
        return with_libpq_options(url, json.loads(extra) if isinstance(extra, str) else extra)
    parts = urlsplit(conn)
    if parts.scheme not in {"postgres", "postgresql"}:
        raise ValueError(f"the {CONN_ID} connection must be a postgres:// connection, got {parts.scheme}://")
    url = postgres_url(parts.hostname, parts.port, unquote(parts.username or "") or None,
                       unquote(parts.password or "") or None, parts.path.lstrip("/") or None)
    return with_libpq_options(url, dict(parse_qsl(parts.query)))


LIBPQ_OPTIONS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword", "sslcrl", "connect_timeout",
                 "application_name", "options", "target_session_attrs", "keepalives", "keepalives_idle")
"""Connection extras passed on to libpq: TLS and timeouts must not be lost on the way to the engine."""


def with_libpq_options(url: URL, extra: dict) -> URL:
    """Return ``url`` with the libpq options among a connection's ``extra``."""
    options = {key: str(extra[key]) for key in LIBPQ_OPTIONS if extra.get(key) not in (None, "")}
    return url.update_query_dict(options) if options else url


def postgres_url(host: str | None, port: int | None, login: str | None, password: str | None,
                 database: str | None) -> URL:
    """Return the SQLAlchemy URL (psycopg2 driver) of a PostgreSQL connection's fields."""
    if not host:
        raise ValueError(f"the {CONN_ID} connection has no host")
    return URL.create("postgresql+psycopg2", username=login or None, password=password or None, host=host,
                      port=int(port) if port else None, database=database or None)


def create_feedback_engine(url: str | URL) -> Engine:
    """Return an engine for ``url``. SQLite gets its folder created, foreign keys on, WAL, a 30 s busy timeout, and
    ``BEGIN IMMEDIATE`` transactions (except on ``READ_ONLY`` connections), so concurrent writers queue instead of
    failing half-way."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30})

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # transactions are begun below, not by the driver
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        _wal(cursor)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # readers (``reading``) take no write lock: in WAL mode they never wait for a writer nor hold one up
        conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get(READ_ONLY) else "BEGIN IMMEDIATE")

    return engine


def _wal(cursor, timeout: float = 30.0) -> None:
    """Switch a SQLite database to WAL once. Switching ignores the busy timeout (two connections opening a new file
    at once fail at once with "database is locked"), so it waits here instead. A database that cannot use WAL (in
    memory, some network filesystems) keeps its journal mode."""
    import sqlite3
    import time

    deadline = time.monotonic() + timeout
    while cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() not in ("wal", "memory"):
        try:
            if cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0].lower() != "wal":
                return  # refused without an error: this database cannot use WAL
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


def applied_versions(engine: Engine) -> list[int]:
    """Return the migrations applied to the database, in order (empty for a new database)."""
    if not sa.inspect(engine).has_table(MIGRATIONS_TABLE):
        return []
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.text(f"SELECT version FROM {MIGRATIONS_TABLE} ORDER BY version"))]


def upgrade(engine: Engine) -> list[int]:
    """Apply every migration the database lacks, each in its own transaction; return the versions applied now.

    Idempotent and safe to run from several processes at once: each migration is applied under a lock, after
    re-reading what is applied. A database newer than this code is refused.
    """
    applied_now = []
    dialect = engine.dialect.name
    if dialect not in _TYPES:
        raise ValueError(f"the feedback store runs on PostgreSQL or SQLite, not {dialect}")
    with engine.begin() as conn:
        _lock(conn)
        conn.exec_driver_sql(f"""CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} (
            version INTEGER PRIMARY KEY, name VARCHAR(200) NOT NULL, applied_at {_TYPES[dialect]['ts']} NOT NULL,
            code_version VARCHAR(64))""")
    for migration in MIGRATIONS:
        with engine.begin() as conn:
            _lock(conn)
            done = {row[0] for row in conn.execute(sa.text(f"SELECT version FROM {MIGRATIONS_TABLE}"))}
            _refuse_unknown(done)
            if migration.version in done:
                continue
            for statement in migration.statements[dialect]:
                conn.exec_driver_sql(statement)
            conn.execute(sa.text(f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at, code_version) "
                                 "VALUES (:version, :name, :at, :code)"),
                         {"version": migration.version, "name": migration.name, "at": datetime.now(UTC),
                          "code": dctp_tasks.__version__})
            applied_now.append(migration.version)
            log.info("feedback store %s: applied migration %d (%s)", _safe(engine), migration.version,
                     migration.name)
    return applied_now


def check_current(engine: Engine) -> None:
    """Raise ``SchemaOutdated`` unless every migration this code knows is applied (and none it does not know)."""
    done = set(applied_versions(engine))
    _refuse_unknown(done)
    missing = [m.version for m in MIGRATIONS if m.version not in done]
    if missing:
        raise SchemaOutdated(f"the feedback store {_safe(engine)} lacks migrations {missing}: run `dctp db upgrade` "
                             "(each dctp_daily run also applies them in its feedback_db task)")


def _refuse_unknown(done: set[int]) -> None:
    unknown = sorted(v for v in done if v > LATEST)
    if unknown:
        raise SchemaOutdated(f"the feedback store has migrations {unknown} this code (dctp {dctp_tasks.__version__}) "
                             f"does not know (it knows up to {LATEST}): upgrade dctp before using it")


def _lock(conn: sa.Connection) -> None:
    if conn.dialect.name == "postgresql":  # SQLite's BEGIN IMMEDIATE already holds the write lock
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})


def _safe(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=True)


LOCK_WAIT_SECONDS = 3600.0
"""How long a writer waits for the table's writer lock before giving up (``TimeoutError``: the task is retried)."""


@contextmanager
def table_lock(engine: Engine, name: str, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    """Hold the lock every writer of Delta table ``name`` takes (the daily export, a rescore, ``dctp_feedback_apply``)
    for the duration of the block: they commit one after the other, never from the same stale table state.

    PostgreSQL: a session advisory lock on a connection of its own (released when the block ends, or when the
    process dies and its session closes; a pooler in transaction mode, such as pgbouncer's, cannot hold it). SQLite,
    which lives on one host: an exclusive ``flock`` on a file beside the database, so annotators writing to the
    database are not held up meanwhile. Waits at most ``wait`` seconds.
    """
    import time

    key = f"dctp_delta:{name}"
    deadline = time.monotonic() + wait
    if engine.dialect.name == "postgresql":
        conn = engine.connect()
        try:
            while not conn.execute(sa.text("SELECT pg_try_advisory_lock(hashtext(:key))"), {"key": key}).scalar():
                conn.commit()
                _wait_or_give_up(deadline, name, wait)
            conn.commit()
        except BaseException:
            conn.close()
            raise
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})
                conn.commit()
            except Exception as exc:  # the session is gone, and its lock with it: never hide the block's own error
                log.warning("could not release the writer lock of %s (%s); it ended with its session", name, exc)
                conn.invalidate()
            conn.close()
        return
    database = engine.url.database
    if not database or database == ":memory:":  # one process holds the whole store: nothing to serialise with
        yield
        return
    with open(f"{database}.{name}.lock", "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                _wait_or_give_up(deadline, name, wait)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_or_give_up(deadline: float, name: str, wait: float) -> None:
    import time

    if time.monotonic() > deadline:
        raise TimeoutError(f"another writer held the lock of Delta table {name!r} for more than {wait:.0f} s")
    time.sleep(0.5)
