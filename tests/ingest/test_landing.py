"""A day with no landing data waits until its deadline, then fails naming what is missing and where."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg2
import pytest

from dctp_tasks.config import load_config
from dctp_tasks.ingest.landing import LandingMissing, check_landing, expected_sources
from dctp_tasks.storage import Storage
from tests.ingest.test_ingest import DT, TEXT, jsonl, land

INTERVAL = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC))
DEADLINE = INTERVAL[1] + timedelta(minutes=360)
FILE_SOURCES = ["forum", "instruct", "news", "web"]  # the packaged config's enabled sources


@pytest.fixture
def storage(tmp_path) -> Storage:
    return Storage(f"file://{tmp_path}")


def deliver(storage: Storage, *sources: str) -> None:
    for source in sources:
        land(storage, source, "part-0.jsonl", jsonl({"id": "1", "text": TEXT}))


def test_ready_when_every_expected_source_has_a_file(storage):
    deliver(storage, *FILE_SOURCES)

    check = check_landing(storage, load_config(), DT, INTERVAL, now=INTERVAL[1])

    assert check.expected == tuple(FILE_SOURCES)  # articles_db is disabled in the packaged config
    assert check.ready and not check.overdue and check.missing == ()
    assert check.deadline == DEADLINE
    check.raise_if_overdue()


def test_missing_source_is_listed_with_its_prefix_before_the_deadline_without_raising(storage):
    deliver(storage, "forum", "news", "web")
    land(storage, "instruct", "notes.txt", b"not a landing format")
    land(storage, "instruct", "part-0.jsonl", jsonl({"id": "1", "text": TEXT}), dt="2026-03-02")  # another day

    check = check_landing(storage, load_config(), DT, INTERVAL, now=DEADLINE - timedelta(seconds=1))

    assert not check.ready and not check.overdue
    assert [(m.name, m.location) for m in check.missing] == [
        ("instruct", storage.uri("landing", "instruct", f"dt={DT}") + "/")]
    check.raise_if_overdue()


@pytest.mark.parametrize("now", [DEADLINE, DEADLINE + timedelta(days=30)])
def test_missing_sources_fail_once_the_deadline_has_passed(storage, now):
    deliver(storage, "forum", "news")

    check = check_landing(storage, load_config(), DT, INTERVAL, now=now)

    assert check.overdue
    with pytest.raises(LandingMissing) as raised:
        check.raise_if_overdue()
    message = str(raised.value)
    assert f"dt={DT} is missing for 2 of 4 expected source(s)" in message
    assert DEADLINE.isoformat() in message and "ingest.wait_timeout_minutes" in message
    for source in ("instruct", "web"):
        assert f"  - {source}: no file ending in .jsonl," in message
        assert storage.uri("landing", source, f"dt={DT}") + "/" in message
    assert "Deliver the data there" in message
    assert "ingest.sources.instruct.allow_empty: true" in message


def test_a_past_date_with_missing_data_fails_at_once(storage):
    check = check_landing(storage, load_config(), DT, INTERVAL)  # now: the real clock, months after the deadline

    with pytest.raises(LandingMissing, match="4 of 4 expected"):
        check.raise_if_overdue()


def test_the_deadline_follows_wait_timeout_minutes(storage):
    config = load_config(overrides={"ingest.wait_timeout_minutes": 0})

    check = check_landing(storage, config, DT, INTERVAL, now=INTERVAL[1])

    assert check.deadline == INTERVAL[1] and check.overdue


def test_an_allow_empty_source_is_not_waited_for(storage):
    deliver(storage, "forum", "news", "web")
    config = load_config(overrides={"ingest.sources.instruct.allow_empty": True})

    check = check_landing(storage, config, DT, INTERVAL, now=DEADLINE + timedelta(hours=1))

    assert "instruct" not in check.expected
    assert check.ready
    check.raise_if_overdue()


def test_include_sources_limits_what_is_expected(storage):
    deliver(storage, "web")
    config = load_config(overrides={"ingest.include_sources": ["web", "blog"]})

    check = check_landing(storage, config, DT, INTERVAL, now=INTERVAL[1])

    assert check.expected == ("blog", "web")  # a named folder with no config entry is still asked for
    assert [m.name for m in check.missing] == ["blog"]


def test_disabled_sources_are_ignored(storage):
    deliver(storage, "forum", "news", "instruct")
    config = load_config(overrides={"ingest.sources.web.enabled": False})

    assert expected_sources(config) == ["forum", "instruct", "news"]
    assert check_landing(storage, config, DT, INTERVAL, now=DEADLINE).ready


def test_naive_datetimes_are_refused(storage):
    with pytest.raises(ValueError, match="timezone-aware"):
        check_landing(storage, load_config(), DT, (datetime(2026, 3, 1), datetime(2026, 3, 2)))


# -- PostgreSQL table sources ------------------------------------------------------------------------------------

@pytest.fixture
def table(articles_table) -> str:
    return articles_table




def _table_config(table: str, **postgres):
    source = "ingest.sources.articles_db"
    return load_config(overrides={"ingest.include_sources": ["articles_db"], f"{source}.enabled": True,
                                  f"{source}.postgres.table": table,
                                  **{f"{source}.postgres.{key}": value for key, value in postgres.items()}})


@pytest.fixture
def connect(pg_conn):
    opened = []

    def factory(conn_id: str):
        assert conn_id == "dctp_source_pg"
        opened.append(psycopg2.connect(pg_conn.dsn))
        return opened[-1]

    yield factory
    assert opened and all(c.closed for c in opened)  # check_landing closes what it opened


def test_a_table_source_is_ready_once_it_has_a_row_in_the_interval(storage, pg_conn, table, connect):
    with pg_conn.cursor() as cur:
        cur.execute(f'INSERT INTO public."{table}" (id, body, published_at) VALUES (1, %s, %s)',
                    (TEXT, "2026-02-28T23:00:00Z"))  # the day before: does not count
    config = _table_config(table)

    before = check_landing(storage, config, DT, INTERVAL, connect=connect, now=DEADLINE)
    with pg_conn.cursor() as cur:
        cur.execute(f'INSERT INTO public."{table}" (id, body, published_at) VALUES (2, %s, %s)',
                    (TEXT, "2026-03-01T12:00:00Z"))
    after = check_landing(storage, config, DT, INTERVAL, connect=connect, now=DEADLINE)

    assert [(m.name, m.location) for m in before.missing] == [
        ("articles_db", f"postgresql table public.{table} (connection dctp_source_pg)")]
    assert "row with published_at in [2026-03-01T00:00:00+00:00, 2026-03-02T00:00:00+00:00)" in str(before.missing[0])
    with pytest.raises(LandingMissing, match="ingest.sources.articles_db.allow_empty: true"):
        before.raise_if_overdue()
    assert after.ready


def test_a_table_source_with_ingested_at_column_counts_rows_that_arrived_in_the_interval(storage, pg_conn, table,
                                                                                          connect):
    with pg_conn.cursor() as cur:  # a late row: timestamped the day before, inserted inside the interval
        cur.execute(f'INSERT INTO public."{table}" VALUES (1, %s, %s, %s)',
                    (TEXT, "2026-02-28T12:00:00Z", "2026-03-01T08:00:00Z"))

    by_timestamp = check_landing(storage, _table_config(table), DT, INTERVAL, connect=connect, now=DEADLINE)
    by_arrival = check_landing(storage, _table_config(table, ingested_at_column="inserted_at"), DT, INTERVAL,
                               connect=connect, now=DEADLINE)

    assert not by_timestamp.ready
    assert by_arrival.ready


def test_a_table_source_needs_a_connection_factory(storage, table):
    with pytest.raises(ValueError, match="'articles_db' reads PostgreSQL but check_landing got no connection"):
        check_landing(storage, _table_config(table), DT, INTERVAL)
