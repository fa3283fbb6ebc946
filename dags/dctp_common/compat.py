"""Names the DAGs import that moved into the Task SDK after Airflow 3.1: one place to import them on 3.1 – 3.3."""

from __future__ import annotations

from airflow import __version__ as AIRFLOW_VERSION

AIRFLOW_MINOR = tuple(int(part) for part in AIRFLOW_VERSION.split(".")[:2])
#: Retry delays double on each try: Airflow 3.2 takes the multiplier, 3.1 only ``True`` (which doubles).
RETRY_EXPONENTIAL_BACKOFF: float | bool = 2.0 if AIRFLOW_MINOR >= (3, 2) else True

try:
    from airflow.sdk import CronDataIntervalTimetable
except ImportError:  # Airflow 3.1
    from airflow.timetables.interval import CronDataIntervalTimetable

try:
    from airflow.sdk.exceptions import (
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        AirflowTaskTimeout,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.1
    from airflow.exceptions import (  # type: ignore[no-redef]
        AirflowFailException,
        AirflowNotFoundException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        AirflowTaskTimeout,
        TaskDeferred,
    )

__all__ = [
    "AIRFLOW_MINOR", "RETRY_EXPONENTIAL_BACKOFF", "AirflowFailException", "AirflowNotFoundException",
    "AirflowRescheduleException", "AirflowSensorTimeout", "AirflowSkipException", "AirflowTaskTimeout",
    "CronDataIntervalTimetable", "TaskDeferred",
]
