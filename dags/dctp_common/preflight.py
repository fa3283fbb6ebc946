"""The ``preflight`` task: ``dctp doctor``'s checks from inside a run, reading Airflow through the Task SDK."""

from __future__ import annotations

from typing import Any

from dctp_tasks.preflight import Unknown


class TaskFacts:
    """Airflow as a running task sees it: connections through the API server, the executor's config, the Celery
    broker. Airflow 3 gives tasks no metadata database, so pools cannot be read here (``dctp doctor`` reads them)."""

    def pool_slots(self, name: str) -> int | None:
        raise Unknown("a task cannot read pools in Airflow 3 (no metadata database access); `dctp doctor` checks "
                      "this pool")

    def connection_uri(self, conn_id: str) -> str | None:
        from airflow.sdk import BaseHook

        from dctp_common.compat import AirflowNotFoundException

        try:
            return BaseHook.get_connection(conn_id).get_uri()
        except AirflowNotFoundException:
            return None

    def connect_postgres(self, conn_id: str):
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        return PostgresHook(postgres_conn_id=conn_id).get_conn()

    def executor(self) -> str:
        from airflow.configuration import conf

        return conf.get("core", "executor")

    def default_queue(self) -> str:
        from airflow.configuration import conf

        return conf.get("operators", "default_queue")

    def queue_consumers(self, queue: str) -> list[str]:
        from airflow.providers.celery.executors.celery_executor_utils import app

        replies = app.control.inspect(timeout=3.0).active_queues() or {}
        return sorted(worker for worker, queues in replies.items() if any(q.get("name") == queue for q in queues))


def run_checks(context: dict[str, Any]) -> list[dict]:
    """Run every preflight check with this run's config; fail the task at once, with each failed check's fix."""
    from dctp_common.compat import AirflowFailException
    from dctp_common.runtime import data_storage, resolve_config
    from dctp_tasks.preflight import PreflightFailed, raise_on_failure, render, run_preflight

    params = context.get("params") or {}
    checks = run_preflight(TaskFacts(), data_storage, lambda: resolve_config(params))
    print(render(checks))
    try:
        raise_on_failure(checks)
    except PreflightFailed as exc:
        raise AirflowFailException(str(exc)) from exc
    return [check.as_dict() for check in checks]
