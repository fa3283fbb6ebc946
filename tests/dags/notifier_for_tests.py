"""A real Airflow notifier for the failure-callback test: it appends one line per failure to a file."""

from __future__ import annotations

from pathlib import Path

from airflow.sdk import BaseNotifier


class FileNotifier(BaseNotifier):
    template_fields = ("message",)

    def __init__(self, path: str, message: str = "{{ ti.task_id }} failed") -> None:
        super().__init__()
        self.path = path
        self.message = message

    def notify(self, context) -> None:
        ti = context["ti"]
        exc = context.get("exception")
        with Path(self.path).open("a") as handle:
            handle.write(f"{ti.dag_id}.{ti.task_id} try {ti.try_number}: {type(exc).__name__}: {exc}\n")
