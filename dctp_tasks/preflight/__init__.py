"""Preflight: verify what a run needs before it starts, one line per check with the fix.

``dctp doctor`` and the first task of every DAG run the same checks: the config, the data root (reachable and
writable), the GPU pool and the Celery queues, the connections the config names, the prepared models, the MLflow
tracking server, the Delta table's protocol, the feedback store and its roster, and the Airflow and provider
versions. What a check needs from Airflow
(pools, connections, the executor, Celery workers) comes through an ``AirflowFacts`` object, so this package never
imports Airflow: the DAG's task reads them through the Task SDK, ``dctp doctor`` through the ``airflow`` command.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal, Protocol

from dctp_tasks.config import PipelineConfig, load_config
from dctp_tasks.storage import Storage

Status = Literal["ok", "warn", "skip", "fail"]

GPU_POOL_ENV = "DCTP_GPU_POOL"
"""Names the Airflow pool of the GPU tasks. Unset, they run in ``default_pool``: nothing to create first."""
GPU_QUEUE_ENV = "DCTP_GPU_QUEUE"
"""Names the Celery queue of the GPU tasks (default ``gpu``); executors without queues ignore it."""
DEFAULT_POOL = "default_pool"
#: The tasks the GPU pool and queue apply to (named in messages).
GPU_TASKS = ("dedup_semantic_encode", "dedup_semantic_search", "score_models_shard", "generate_synthetic")


def gpu_pool() -> str | None:
    """Return the pool ``DCTP_GPU_POOL`` names, or ``None`` (the GPU tasks share ``default_pool``)."""
    return os.environ.get(GPU_POOL_ENV) or None


def gpu_queue() -> str:
    return os.environ.get(GPU_QUEUE_ENV) or "gpu"


@dataclass(frozen=True)
class Check:
    """The outcome of one check: ``fail`` stops a run, ``warn`` does not; ``fix`` says what to do."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self, width: int = 24) -> str:
        fix = f"  -> fix: {self.fix}" if self.fix and self.status in {"fail", "warn"} else ""
        return f"{self.status.upper():<4}  {self.name:<{width}} {self.detail}{fix}"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


class Unknown(Exception):
    """The caller cannot read this fact here (e.g. pools from inside an Airflow 3 task); the message says why."""


class AirflowFacts(Protocol):
    """What the checks read from the Airflow installation a run belongs to."""

    def pool_slots(self, name: str) -> int | None:
        """Return the pool's slots, ``None`` when no such pool exists; raise ``Unknown`` when unreadable."""

    def connection_uri(self, conn_id: str) -> str | None:
        """Return the connection's URI, ``None`` when it is not defined (in the DB, the env or a secrets backend)."""

    def connect_postgres(self, conn_id: str):
        """Return a DB-API connection of the PostgreSQL connection ``conn_id``."""

    def executor(self) -> str:
        """Return ``[core] executor`` as configured (e.g. ``LocalExecutor`` or ``CeleryExecutor``)."""

    def default_queue(self) -> str:
        """Return ``[operators] default_queue``: the queue of every task that names none."""

    def queue_consumers(self, queue: str) -> list[str]:
        """Return the Celery workers consuming ``queue`` now; raise ``Unknown`` when the broker cannot be asked."""


class PreflightFailed(RuntimeError):
    """At least one check failed; the message holds every check's line."""


#: The groups of checks. ``gpu routing`` is the GPU tasks' pool and queue; ``queues`` the default queue.
EVERY_GROUP = frozenset({"data root", "queues", "gpu routing", "versions", "connections", "models", "mlflow",
                         "delta", "feedback"})
#: What each DAG task checks, where it runs: the models load on the GPU workers, so they are checked there.
DAILY_GROUPS = EVERY_GROUP - {"models"}
DAILY_GPU_GROUPS = frozenset({"data root", "versions", "models"})
#: Re-deciding runs no model, reads no source and has no GPU task.
RESCORE_GROUPS = frozenset({"data root", "queues", "versions", "mlflow", "delta"})


def run_preflight(facts: AirflowFacts | None, storage: Callable[[], Storage],
                  config: Callable[[], PipelineConfig] = load_config,
                  groups: frozenset[str] = EVERY_GROUP) -> list[Check]:
    """Run the config check and the checks of ``groups``, in order; a check that cannot run fails, saying why,
    instead of raising.

    ``facts`` ``None`` skips the Airflow checks (no Airflow installation to ask). ``storage`` and ``config`` are
    factories, so a broken data root or config becomes a failed check, not an exception.
    """
    from dctp_tasks.preflight.checks import (
        check_config,
        check_connections,
        check_data_root,
        check_feedback,
        check_mlflow,
        check_models,
        check_pool,
        check_queues,
    )
    from dctp_tasks.preflight.delta import check_delta
    from dctp_tasks.preflight.versions import check_airflow_versions

    unknown = set(groups) - EVERY_GROUP
    if unknown:
        raise ValueError(f"unknown preflight groups {sorted(unknown)}; known: {sorted(EVERY_GROUP)}")
    checks: list[Check] = []
    loaded, result = check_config(config)
    checks.append(result)
    root = None
    if "data root" in groups or "delta" in groups:
        try:
            root = storage()
        except Exception as exc:  # an unusable DCTP_DATA_ROOT or aws_default: said by the data-root check
            checks.append(Check("data root", "fail", f"cannot open the data root: {type(exc).__name__}: {exc}",
                                "set DCTP_DATA_ROOT to file:///… or s3://bucket/prefix (credentials: aws_default)"))
    if root is not None and "data root" in groups:
        checks.extend(_guarded("data root", lambda: [check_data_root(root)]))
    if facts is None and groups & {"queues", "gpu routing"}:
        checks.append(Check("airflow", "skip", "no Airflow installation to ask: pools, queues and connections "
                                               "not checked", "run `dctp doctor` where the `airflow` command works"))
    elif facts is not None:
        if "gpu routing" in groups:
            checks.extend(_guarded(f"pool {gpu_pool() or DEFAULT_POOL}", lambda: [check_pool(facts, gpu_pool())]))
        if groups & {"queues", "gpu routing"}:
            queue = gpu_queue() if "gpu routing" in groups else None
            checks.extend(_guarded("queues", lambda: check_queues(facts, queue)))
    if "versions" in groups:
        checks.extend(_guarded("versions", lambda: check_airflow_versions(facts, loaded)))
    if loaded is None:
        checks.append(Check("config-dependent", "skip", "connections, models, MLflow and the Delta table need the "
                                                        "config, which did not load"))
        return checks
    if "connections" in groups:
        checks.extend(_guarded("connections", lambda: check_connections(loaded, facts)))
    if "models" in groups:
        checks.extend(_guarded("models", lambda: check_models(loaded)))
    if "mlflow" in groups:
        checks.extend(_guarded("mlflow", lambda: [check_mlflow(loaded.tracking)]))
    if root is not None and "delta" in groups:
        checks.extend(_guarded("delta table", lambda: [check_delta(root, loaded.export.dataset_name)]))
    if "feedback" in groups:
        from dctp_tasks.feedback.db import CONN_ID

        checks.extend(_guarded("feedback store", lambda: check_feedback(
            loaded, facts.connection_uri(CONN_ID) if facts is not None else None)))
    return checks


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """Return the checks ``run`` makes; when it raises, one failed check saying the check itself could not run."""
    try:
        return run()
    except Exception as exc:
        text = " ".join(str(exc).split())[:400]
        return [Check(name, "fail", f"the check could not run: {type(exc).__name__}: {text}",
                      "see the error; run `dctp doctor` where the deployment's environment is set")]


def failures(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == "fail"]


def render(checks: list[Check]) -> str:
    """Return one line per check, then a summary line."""
    width = max([len(c.name) for c in checks] + [10])
    counts = {s: sum(c.status == s for c in checks) for s in ("ok", "warn", "skip", "fail")}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
    verdict = "preflight FAILED" if counts["fail"] else "preflight passed"
    return "\n".join([c.line(width) for c in checks] + [f"{verdict}: {summary}"])


def raise_on_failure(checks: list[Check]) -> None:
    """Raise ``PreflightFailed`` with every failed check's line (and its fix) when any check failed."""
    failed = failures(checks)
    if failed:
        width = max(len(c.name) for c in failed)
        raise PreflightFailed(f"{len(failed)} preflight check(s) failed:\n" + "\n".join(c.line(width) for c in failed))
