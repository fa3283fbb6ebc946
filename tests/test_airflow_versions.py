"""The supported Airflow range, tested at both ends: everything runs on the newest (this venv); on the oldest, in a
venv of its own (``make install`` builds it from ``constraints-airflow-3.1.8.txt``), the DAGs parse with the same
tasks, routing and retries, and the library's install resolves beside it without changing Airflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from dctp_tasks.preflight.versions import SUPPORTED_AIRFLOW, TESTED_AIRFLOW
from tests.conftest import REPO, unavailable

OLDEST = "3.1.8"
OLDEST_PYTHON = REPO / f".venv-airflow-{OLDEST}" / "bin" / "python"

_PARSE = """
import json, sys
import airflow
try:
    from airflow.dag_processing.dagbag import DagBag
except ImportError:  # Airflow 3.1
    from airflow.models.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"version": airflow.__version__, "errors": bag.import_errors,
                  "dags": {d.dag_id: {t.task_id: {"queue": t.queue, "pool": t.pool, "retries": t.retries,
                                                  "upstream": sorted(t.upstream_task_ids)} for t in d.tasks}
                           for d in bag.dags.values()},
                  "timetable": type(bag.dags["dctp_daily"].timetable).__name__}))
"""


@pytest.fixture(scope="module")
def oldest() -> Path:
    if not OLDEST_PYTHON.exists():
        unavailable(f"no Airflow {OLDEST} venv at {OLDEST_PYTHON.parent.parent}: run `make install`")
    return OLDEST_PYTHON


def test_the_supported_range_is_the_tested_one():
    supported = SpecifierSet(SUPPORTED_AIRFLOW)
    assert OLDEST in supported and metadata.version("apache-airflow-core") in supported
    assert set(TESTED_AIRFLOW) == {OLDEST, metadata.version("apache-airflow-core")}
    assert "3.0.6" not in supported and "3.4.0" not in supported
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["airflow"]
    assert f"apache-airflow-core{SUPPORTED_AIRFLOW}" in extra


def parse(python: Path, home: Path) -> dict:
    """Parse the DAGs with ``python``'s Airflow in a clean environment; return versions, errors and each task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DCTP_GPU"))}
    env.update(AIRFLOW_HOME=str(home), AIRFLOW__CORE__LOAD_EXAMPLES="False", PYTHONPATH=str(REPO / "dags"))
    result = subprocess.run([str(python), "-c", _PARSE, str(REPO / "dags")], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_dags_parse_on_the_oldest_supported_airflow(oldest, tmp_path):
    old = parse(oldest, tmp_path / "old")
    assert old["version"] == OLDEST
    assert old["errors"] == {}
    # the same DAGs as on the newest Airflow: tasks, wiring, routing, retries
    new = parse(Path(sys.executable), tmp_path / "new")
    assert new["version"] == metadata.version("apache-airflow-core") and new["errors"] == {}
    assert old["dags"] == new["dags"]
    assert "preflight" in old["dags"]["dctp_daily"]
    assert old["timetable"] == new["timetable"] == "CronDataIntervalTimetable"


def test_the_library_installs_beside_the_oldest_airflow_without_changing_it(oldest):
    # `make install` resolved `pip install ".[airflow]" apache-airflow-core==3.1.8` there (a dry run) and kept pip's
    # report of what it would install
    report = oldest.parent.parent / "dctp-install-report.json"
    if not report.exists():
        unavailable(f"no install report at {report}: run `make install`")
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "dctp" in planned
    pinned = dict(line.lower().split("==", 1) for line in (REPO / f"constraints-airflow-{OLDEST}.txt").read_text()
                  .splitlines() if "==" in line and not line.startswith("#"))
    changed = {name: (pinned[name], version) for name, version in planned.items() if name in pinned}
    assert not [name for name in changed if name.startswith("apache-airflow")], \
        f"installing the library would change Airflow: {changed}"
    # pip resolved the request together with apache-airflow-core==3.1.8, so what it moves (a few of Airflow's own
    # dependencies, e.g. python-dateutil for botocore) stays inside the ranges that Airflow release declares
    assert len(changed) <= 5, f"installing the library would change many of Airflow's dependencies: {changed}"
    assert planned.get("apache-airflow-providers-postgres"), "the airflow extra brings the postgres provider"


_PLUGIN_IMPORTS = """
import inspect, json
from airflow.api_fastapi.auth.managers.models.base_user import BaseUser
from airflow.api_fastapi.core_api.security import get_user
from airflow.configuration import conf
from airflow.exceptions import AirflowNotFoundException
from airflow.models.connection import Connection
from airflow.plugins_manager import AirflowPlugin
print(json.dumps({"get_user": list(inspect.signature(get_user).parameters),
                  "plugin": [a for a in ("fastapi_apps", "external_views") if hasattr(AirflowPlugin, a)],
                  "secrets": callable(Connection.get_connection_from_secrets)}))
"""


def test_what_the_annotation_plugin_imports_from_airflow_exists_on_the_oldest(oldest):
    # plugins/dctp_annotate.py authenticates through these names; were one missing, the app would refuse every
    # request (it fails closed), so an expert on Airflow 3.1 could not annotate at all
    result = subprocess.run([str(oldest), "-c", _PLUGIN_IMPORTS], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")})
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["plugin"] == ["fastapi_apps", "external_views"] and found["secrets"]
    assert "request" in found["get_user"]  # a dependency of the request: its bearer header or session cookie
