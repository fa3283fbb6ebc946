"""The library is importable without Airflow and without the heavy model stack (torch, transformers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import REPO

FORBIDDEN = ("airflow", "torch", "transformers")

_PROBE = textwrap.dedent("""
    import importlib, json, pkgutil, sys

    import dctp_tasks

    modules = ["dctp_tasks"]
    for info in pkgutil.walk_packages(dctp_tasks.__path__, "dctp_tasks."):
        if info.name.endswith(".__main__"):  # runs the CLI when imported
            continue
        importlib.import_module(info.name)
        modules.append(info.name)
    loaded = sorted({name.split(".")[0] for name in sys.modules})
    print(json.dumps({"modules": modules, "loaded": loaded}))
""")


def _import_everything() -> dict:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_every_dctp_tasks_module_imports_without_airflow_torch_or_transformers():
    probe = _import_everything()

    # The walk really covered the package, sub-packages included.
    assert {"dctp_tasks.config", "dctp_tasks.records", "dctp_tasks.ingest", "dctp_tasks.ingest.readers",
            "dctp_tasks.ingest.mapping", "dctp_tasks.normalize", "dctp_tasks.dedup.exact", "dctp_tasks.dedup.semantic",
            "dctp_tasks.export", "dctp_tasks.quality.scoring", "dctp_tasks.cli",
            "dctp_tasks.ledger", "dctp_tasks.storage"} <= set(probe["modules"])
    assert "pyarrow" in probe["loaded"]  # the probe sees real imports
    assert [name for name in FORBIDDEN if name in probe["loaded"]] == []
