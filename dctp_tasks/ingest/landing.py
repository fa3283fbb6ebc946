"""Has a day's landing data arrived? Which expected sources are still missing, and is it too late to wait?

A source is expected unless it is disabled, left out by ``ingest.include_sources``, or marked ``allow_empty``. A
file source is there once ``landing/{source}/dt=D/`` holds a readable file; a table source once its table has a
row in the run's interval. A run waits until ``ingest.wait_timeout_minutes`` after its interval ends, then fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dctp_tasks.config import PipelineConfig, PostgresSourceConfig
from dctp_tasks.ingest.readers import SUPPORTED_SUFFIXES, file_format, table_has_rows
from dctp_tasks.storage import Storage

log = logging.getLogger(__name__)


class LandingMissing(ValueError):
    """Expected sources still have no data for a date after its deadline (``ingest.wait_timeout_minutes``)."""


@dataclass(frozen=True)
class MissingSource:
    name: str
    location: str
    """Where the data was looked for: the landing prefix's URI, or the table and its connection."""
    wanted: str
    """What would have counted: a file with a supported suffix, or a row in the run's interval."""

    def __str__(self) -> str:
        return f"{self.name}: no {self.wanted} in {self.location}"


@dataclass(frozen=True)
class LandingCheck:
    """What ``check_landing`` found for one date: the sources it expects and which of them have no data yet."""

    dt: str
    expected: tuple[str, ...]
    missing: tuple[MissingSource, ...]
    deadline: datetime
    """The interval end plus ``ingest.wait_timeout_minutes``: after it, missing data fails the run."""
    checked_at: datetime

    @property
    def ready(self) -> bool:
        """Every expected source has data: ingest can run."""
        return not self.missing

    @property
    def overdue(self) -> bool:
        """Sources are still missing and the deadline has passed: waiting longer will not help."""
        return bool(self.missing) and self.checked_at >= self.deadline

    def raise_if_overdue(self) -> None:
        """Raise ``LandingMissing`` naming every missing source, where it looked, the deadline and the fix."""
        if not self.overdue:
            return
        lines = "\n".join(f"  - {m}" for m in self.missing)
        first = self.missing[0].name
        raise LandingMissing(
            f"landing data for dt={self.dt} is missing for {len(self.missing)} of {len(self.expected)} expected "
            f"source(s) after the deadline {self.deadline.isoformat()} (the data interval's end + "
            f"ingest.wait_timeout_minutes):\n{lines}\n"
            f"Deliver the data there and clear this task, or, for a source that may have no data on some days, "
            f"set ingest.sources.<name>.allow_empty: true (here: ingest.sources.{first}.allow_empty: true)."
        )


def expected_sources(config: PipelineConfig) -> list[str]:
    """Return the sources a run must wait for, sorted.

    With ``ingest.include_sources`` set, those named there (a name with no config entry is a landing folder with
    the default mapping); else every source configured under ``ingest.sources``. Disabled and ``allow_empty``
    sources are left out.
    """
    ingest = config.ingest
    names = ingest.include_sources or list(ingest.sources)
    return sorted({name for name in names if ingest.source(name).enabled and not ingest.source(name).allow_empty})


def check_landing(storage: Storage, config: PipelineConfig, dt: str, interval: tuple[datetime, datetime], *,
                  connect: Callable[[str], Any] | None = None, now: datetime | None = None) -> LandingCheck:
    """Look for each expected source's data for date ``dt``; return what is missing and the deadline.

    ``interval`` is the run's data interval (aware datetimes): it bounds table sources and its end starts the
    wait. ``connect`` is ``conn_id -> DB-API connection`` as for ``ingest_day``, needed only when a table source
    is expected. Never raises for missing data; call ``raise_if_overdue`` on the result.
    """
    if interval[1].tzinfo is None or (now is not None and now.tzinfo is None):
        raise ValueError(f"check_landing needs timezone-aware datetimes, got interval end {interval[1]!r} and now "
                         f"{now!r}: pass e.g. datetime(2026, 1, 2, tzinfo=UTC)")
    now = now or datetime.now(UTC)
    missing = []
    expected = expected_sources(config)
    for name in expected:
        pg = config.ingest.source(name).postgres
        if pg is None:
            prefix = ("landing", name, f"dt={dt}")
            if not any(file_format(path) for path in storage.list_files(*prefix)):
                missing.append(MissingSource(name, storage.uri(*prefix) + "/",
                                             f"file ending in {', '.join(SUPPORTED_SUFFIXES)}"))
        elif not _table_ready(name, pg, interval, connect):
            column = pg.ingested_at_column or pg.timestamp_column
            missing.append(MissingSource(
                name, f"postgresql table {pg.schema_name}.{pg.table} (connection {pg.conn_id})",
                f"row with {column} in [{interval[0].isoformat()}, {interval[1].isoformat()})"))
    deadline = interval[1] + timedelta(minutes=config.ingest.wait_timeout_minutes)
    check = LandingCheck(dt, tuple(expected), tuple(missing), deadline, now)
    if missing:
        log.info("dt=%s: waiting until %s for %s", dt, deadline.isoformat(), "; ".join(map(str, missing)))
    return check


def _table_ready(name: str, pg: PostgresSourceConfig, interval: tuple[datetime, datetime],
                 connect: Callable[[str], Any] | None) -> bool:
    if connect is None:
        raise ValueError(f"source {name!r} reads PostgreSQL but check_landing got no connection factory: pass "
                         f"connect=conn_id -> connection, as to ingest_day")
    connection = connect(pg.conn_id)
    try:
        return table_has_rows(connection, pg, *interval)
    finally:
        connection.close()
