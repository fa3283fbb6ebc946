"""Preflight of versions: Airflow inside the supported range, the providers a run imports installed.

The tested versions are the pins of ``constraints.txt`` (a test keeps them equal).
"""

from __future__ import annotations

from importlib import metadata

from dctp_tasks.config import PipelineConfig
from dctp_tasks.preflight import AirflowFacts, Check, Unknown
from dctp_tasks.preflight.checks import active_postgres_sources

#: Airflow versions the package supports: the DAGs use the Task SDK (``airflow.sdk``) of Airflow 3.1 and later.
SUPPORTED_AIRFLOW = ">=3.1.0,<3.4"
#: Airflow versions the tests run on: every test on the newest, DAG parsing and installation on the oldest.
TESTED_AIRFLOW = ("3.1.8", "3.3.2")
#: Packages a run needs beside Airflow, with the versions the tests ran (``constraints.txt``).
TESTED_PACKAGES = {
    "apache-airflow-providers-standard": "1.21.0",
    "apache-airflow-providers-postgres": "7.1.1",
    "apache-airflow-providers-celery": "3.26.0",
    "deltalake": "1.6.6",
    "pyarrow": "25.0.1",
}


def installed(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def check_airflow_versions(facts: AirflowFacts | None, config: PipelineConfig | None = None) -> list[Check]:
    """Airflow is a supported 3.x; the providers a run imports are installed (tested versions shown)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    airflow = installed("apache-airflow-core") or installed("apache-airflow")
    tested = " and ".join(TESTED_AIRFLOW)
    if airflow is None:
        return [Check("airflow version", "skip", "Airflow is not installed here")]
    checks = []
    if Version(airflow) not in SpecifierSet(SUPPORTED_AIRFLOW):
        checks.append(Check("airflow version", "fail", f"Airflow {airflow} is not supported ({SUPPORTED_AIRFLOW})",
                            f"run DCTP on Airflow {SUPPORTED_AIRFLOW} (tested: {tested})"))
    else:
        note = "tested" if airflow in TESTED_AIRFLOW else f"supported {SUPPORTED_AIRFLOW}; tested {tested}"
        checks.append(Check("airflow version", "ok", f"Airflow {airflow} ({note})"))
    needed = {"apache-airflow-providers-standard": "the DAGs' @task decorators"}
    if config is not None and active_postgres_sources(config):
        needed["apache-airflow-providers-postgres"] = "PostgreSQL sources"
    try:
        if facts is not None and "celery" in facts.executor().lower():
            needed["apache-airflow-providers-celery"] = "the CeleryExecutor"
    except Unknown:
        pass
    for package, want in TESTED_PACKAGES.items():
        have = installed(package)
        name = package.replace("apache-airflow-providers-", "provider ")
        if have is None:
            if package in needed or not package.startswith("apache-airflow-providers-"):
                checks.append(Check(name, "fail", f"{package} is not installed ({needed.get(package, 'a run')} "
                                                  "needs it)", f"pip install {package}=={want}"))
            continue
        if Version(have) < Version(want):
            checks.append(Check(name, "warn", f"{have}, older than the tested {want}",
                                f"pip install {package}=={want}"))
        else:
            checks.append(Check(name, "ok", have + ("" if have == want else f" (tested {want})")))
    return checks
