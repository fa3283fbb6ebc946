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
        import os

        from airflow.providers.postgres.hooks.postgres import PostgresHook

        # libpq's own default waits as long as the OS does; a connection's extra connect_timeout still wins
        os.environ.setdefault("PGCONNECT_TIMEOUT", "10")
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


def run_checks(context: dict[str, Any], scope: str) -> list[dict]:
    """Run the preflight checks of ``scope`` (``daily``, ``daily_gpu`` or ``rescore``) with this run's config; fail
    the task at once, with each failed check's fix."""
    from dctp_common.compat import AirflowFailException
    from dctp_common.runtime import data_storage, resolve_config
    from dctp_tasks import preflight

    groups = {"daily": preflight.DAILY_GROUPS, "daily_gpu": preflight.DAILY_GPU_GROUPS,
              "rescore": preflight.RESCORE_GROUPS}[scope]
    params = context.get("params") or {}
    checks = preflight.run_preflight(TaskFacts(), data_storage, lambda: resolve_config(params), groups)
    print(preflight.render(checks))
    try:
        preflight.raise_on_failure(checks)
    except preflight.PreflightFailed as exc:
        raise AirflowFailException(str(exc)) from exc
    return [check.as_dict() for check in checks]
