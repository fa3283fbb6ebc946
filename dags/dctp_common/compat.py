"""Names the DAGs import that moved into the Task SDK after Airflow 3.1: one place to import them on 3.1 – 3.3."""

from __future__ import annotations

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

__all__ = ["AirflowFailException", "AirflowNotFoundException", "AirflowRescheduleException", "AirflowSensorTimeout",
           "AirflowSkipException", "AirflowTaskTimeout", "CronDataIntervalTimetable", "TaskDeferred"]
