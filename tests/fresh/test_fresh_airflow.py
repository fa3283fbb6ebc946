"""A fresh Airflow with nothing but the README's install steps: the package's ``dags/`` and ``plugins/`` copied into
the Airflow's own folders, ``DCTP_HOME`` set, demo data in the default data root — no pool, no connection, no
DCTP config file, the default LocalExecutor. A three-date backfill created through ``POST /api/v2/backfills``
must succeed, its GPU tasks in ``default_pool``, and ``dctp doctor`` must pass there before it starts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.airflow_stack import BIN, Stack, clean_env, metadata_database, sigterm_unwinds, stopped_on_exit
from tests.conftest import REPO, free_port

DAG_ID = "dctp_daily"
DATES = ["2026-01-01", "2026-01-02", "2026-01-03"]
BACKFILL_TIMEOUT = 1200.0

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]


def copy_package(airflow_home: Path) -> None:
    """Install step 1: the DAG files and plugins into the Airflow's own dags/ and plugins/ folders."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "dags", airflow_home / "dags", ignore=ignore)
    shutil.copytree(REPO / "plugins", airflow_home / "plugins", ignore=ignore)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("fresh")
    airflow_home = home / "airflow"
    airflow_home.mkdir()
    copy_package(airflow_home)
    with sigterm_unwinds(), metadata_database("dctp_fresh") as (db_url, marker):
        api_port = free_port()
        password = secrets.token_urlsafe(16)
        (home / "passwords.json").write_text(json.dumps({"admin": password}))
        # Only the user's own Airflow settings (where its database and API server are) and DCTP_HOME: every DCTP
        # setting a developer's shell may hold is dropped, so the defaults are what runs.
        env = clean_env(marker, ("AIRFLOW__", "AIRFLOW_CONN_", "AWS_", "MLFLOW_", "DCTP_"), {"AIRFLOW_HOME"})
        env.update({
            "AIRFLOW_HOME": str(airflow_home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{api_port}",
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(home / "logs"),
            "DCTP_HOME": str(REPO),
        })
        if "DCTP_MODEL_CACHE" in os.environ:  # where the install step prepared the models
            env["DCTP_MODEL_CACHE"] = os.environ["DCTP_MODEL_CACHE"]
        stack = Stack(api_url=f"http://127.0.0.1:{api_port}", username="admin", password=password, home=home,
                      env=env)
        with stopped_on_exit(stack.services, marker):
            stack.cli("db", "migrate")
            stack.start("api-server", "api-server", "--host", "127.0.0.1", "--port", str(api_port), "--workers", "1")
            stack.start("scheduler", "scheduler")
            stack.start("dag-processor", "dag-processor")
            stack.wait_until_ready([DAG_ID, "dctp_rescore"])
            yield stack


def land_demo_data(stack: Stack) -> str:
    """The demo corpus for ``DATES`` in the default data root, ``$AIRFLOW_HOME/dctp-data``."""
    import importlib.util

    from dctp_tasks.storage import Storage

    root = (Path(stack.env["AIRFLOW_HOME"]) / "dctp-data").as_uri()
    spec = importlib.util.spec_from_file_location("demo_corpus", REPO / "include" / "demo_corpus.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.generate(Storage(root), DATES, seed=11, rows_per_day=200)
    return root


def test_a_fresh_airflow_runs_a_three_date_backfill_with_nothing_created_first(fresh: Stack):
    from dctp_tasks.export import METADATA_PREFIX, committed_ledger, open_table
    from dctp_tasks.ledger import ledger_report
    from dctp_tasks.storage import Storage

    root = land_demo_data(fresh)
    assert [p["name"] for p in fresh.api("GET", "/pools")["pools"]] == ["default_pool"]
    assert fresh.api("GET", "/connections")["total_entries"] == 0

    # the README's preflight step, from a shell with the deployment's environment
    doctor = subprocess.run([str(BIN / "dctp"), "--json", "doctor"], env=fresh.env, capture_output=True, text=True,
                            timeout=300)
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert doctor.returncode == 0, doctor.stdout
    pool = checks["pool default_pool"]
    assert pool["status"] == "ok" and "DCTP_GPU_POOL unset" in pool["detail"], pool
    assert checks["data root"]["detail"].startswith(root)

    assert fresh.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})["is_paused"] is False
    created = fresh.backfill(DAG_ID, DATES)
    runs = fresh.wait_for_runs(DAG_ID, created["id"], DATES, BACKFILL_TIMEOUT)

    for dt in DATES:
        tis = fresh.task_instances(DAG_ID, runs[dt]["dag_run_id"])
        assert {ti["pool"] for ti in tis.values()} == {"default_pool"}, {t: ti["pool"] for t, ti in tis.items()}
        assert tis["dedup_semantic_encode"]["queue"] == "gpu", "the queue stays named: LocalExecutor ignores it"
        preflight = {c["name"]: c for c in fresh.xcom(DAG_ID, runs[dt]["dag_run_id"], "preflight")}
        assert [c for c in preflight.values() if c["status"] == "fail"] == []
        assert preflight["queues"]["detail"].startswith("LocalExecutor")

    storage = Storage(root)
    history = sorted((c for c in open_table(storage, "curated").history() if c.get(f"{METADATA_PREFIX}dt")),
                     key=lambda c: c["version"])
    assert [c[f"{METADATA_PREFIX}dt"] for c in history] == DATES
    for commit in history:
        dt = commit[f"{METADATA_PREFIX}dt"]
        _, rejects = committed_ledger(storage, "curated", dt, commit["version"])
        report = ledger_report(rejects, dt, int(commit[f"{METADATA_PREFIX}ingested"]),
                               int(commit[f"{METADATA_PREFIX}exported"]))
        assert report.balanced and report.exported > 0, report.render()
