"""PostgreSQL rows that selecting by business timestamp never reads: NULL timestamps and rows inserted late."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import psycopg
import psycopg2
import pytest

from dctp_tasks.config import PostgresSourceConfig
from dctp_tasks.ingest import ingest_day
from dctp_tasks.ingest.readers import RawRow, null_timestamp_rows, read_postgres
from dctp_tasks.staging import stage_rows
from dctp_tasks.storage import Storage
from tests.ingest.test_ingest import DAG, TEXT, lenient

DAY = datetime(2026, 3, 1, tzinfo=UTC)
D, D1 = "2026-03-01", "2026-03-02"


def interval(day: datetime) -> tuple[datetime, datetime]:
    return day, day + timedelta(days=1)




@pytest.fixture
def table(articles_table) -> str:
    return articles_table


def insert(pg_conn, table: str, *rows: tuple) -> None:
    """Insert ``(id, published_at, inserted_at)`` rows, as the application writing the table would."""
    with pg_conn.cursor() as cur:
        cur.executemany(f'INSERT INTO public."{table}" VALUES (%s, %s, %s, %s)',
                        [(id_, f"{TEXT} #{id_}", published, inserted) for id_, published, inserted in rows])


def config(table: str, ingested_at_column: str | None):
    return lenient(**{"ingest.sources.articles_db.enabled": True,
                      "ingest.sources.articles_db.postgres.table": table,
                      "ingest.sources.articles_db.postgres.ingested_at_column": ingested_at_column})


def ingest_ids(storage: Storage, cfg, dt: str, day: datetime, dsn: str) -> list[str]:
    ingest_day(storage, cfg, DAG, dt, interval=interval(day), connect=lambda _: psycopg2.connect(dsn))
    return storage.read_table(stage_rows(storage, DAG, dt, "ingest")).column("doc_id").to_pylist()


@pytest.mark.parametrize(("ingested_at_column", "late_row_read_on_d1"), [("inserted_at", True), (None, False)])
def test_a_row_inserted_after_its_day_ran_is_read_by_the_day_it_arrived(tmp_path, pg_conn, table, ingested_at_column,
                                                                        late_row_read_on_d1):
    storage = Storage(f"file://{tmp_path}")
    cfg = config(table, ingested_at_column)
    insert(pg_conn, table, (1, "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z"))

    on_d = ingest_ids(storage, cfg, D, DAY, pg_conn.dsn)  # D's run, at D+1 00:00
    # Then a row of D arrives: its business timestamp is in D, which has already run.
    insert(pg_conn, table, (2, "2026-03-01T23:50:00Z", "2026-03-02T02:00:00Z"))
    on_d1 = ingest_ids(storage, cfg, D1, DAY + timedelta(days=1), pg_conn.dsn)

    assert on_d == ["articles_db/1"]
    assert on_d1 == (["articles_db/2"] if late_row_read_on_d1 else [])


def test_with_ingested_at_column_a_null_timestamp_row_is_ingested_and_nothing_is_left_over(tmp_path, pg_conn, table):
    storage = Storage(f"file://{tmp_path}")
    insert(pg_conn, table, (1, "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z"),
           (2, None, "2026-03-01T11:00:00Z"))

    assert ingest_ids(storage, config(table, "inserted_at"), D, DAY, pg_conn.dsn) == ["articles_db/1", "articles_db/2"]
    pg = PostgresSourceConfig(table=table, timestamp_column="published_at", ingested_at_column="inserted_at")
    assert null_timestamp_rows(pg_conn, pg) == 0


@pytest.mark.parametrize("driver", [psycopg2, psycopg])
def test_null_timestamp_rows_are_counted_and_named_in_a_warning(pg_conn, table, driver, caplog):
    insert(pg_conn, table, (1, "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z"),
           (2, None, "2026-03-01T11:00:00Z"), (3, None, "2026-03-02T11:00:00Z"))
    pg = PostgresSourceConfig(table=table, timestamp_column="published_at")

    with driver.connect(pg_conn.dsn) as connection, caplog.at_level(logging.WARNING):
        count = null_timestamp_rows(connection, pg)
        read = [e for day in (DAY - timedelta(days=1), DAY, DAY + timedelta(days=1))
                for e in read_postgres(connection, "public", table, "published_at", *interval(day), 100)]

    assert count == 2
    assert [e.data["id"] for e in read if isinstance(e, RawRow)] == [1]  # no interval selects the NULL ones
    assert f"2 rows of public.{table} have a NULL published_at" in caplog.text
    assert "ingested_at_column" in caplog.text


def test_no_warning_when_every_row_has_a_timestamp(pg_conn, table, caplog):
    insert(pg_conn, table, (1, "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z"))

    with caplog.at_level(logging.WARNING):
        assert null_timestamp_rows(pg_conn, PostgresSourceConfig(table=table, timestamp_column="published_at")) == 0

    assert caplog.text == ""


def test_ingest_reports_the_table_rows_no_date_will_read(tmp_path, pg_conn, table):
    storage = Storage(f"file://{tmp_path}")
    insert(pg_conn, table, (1, "2026-03-01T10:00:00Z", "2026-03-01T10:00:05Z"), (2, None, "2026-03-01T11:00:00Z"),
           (3, None, "2026-03-01T12:00:00Z"))

    result = ingest_day(storage, config(table, None), DAG, D, interval=interval(DAY),
                        connect=lambda _: psycopg2.connect(pg_conn.dsn))

    assert (result.total, result.extra["null_timestamp_rows"]) == (1, 2)
    assert result.metrics()["ingest.null_timestamp_rows"] == 2.0
