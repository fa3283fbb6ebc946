"""Wire a sharded stage: ``{stage}_plan`` → ``{stage}_{phase}`` mapped over the plan, per phase → ``{stage}``.

The plan's XCom is the list of shard descriptors (ranges of the input, never data); the Celery executor spreads the
mapped shards over every worker of their queue, and a failed shard retries alone. Most stages have one phase,
``shard``; the dedup stages two (``sign``/``encode``, then ``search``). The reduce keeps the stage's own task id and
XCom, so downstream tasks read it exactly as they read the unsharded stage.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context, task


def sharded_stage(stage: str, target: str, *args: Any, doc: str, phases: tuple[str, ...] = ("shard",),
                  queue: str | None = None, pool: str | None = None,
                  execution_timeout: timedelta | None = None, depends_on_past: bool = False,
                  wait_for_downstream: bool = False) -> Callable:
    """Return ``wire(started, upstream)`` that adds the stage's three tasks and returns the reduce's XCom.

    ``target`` names the library's ``ShardedStage`` as ``module:NAME`` (imported in the tasks, never at parse);
    ``args`` go to its plan. ``depends_on_past``/``wait_for_downstream`` go to the plan and the reduce, so a
    backfill's dates plan (and publish) in order; shards of different dates may run side by side.
    """
    shard_kwargs: dict[str, Any] = {"map_index_template": "{{ shard_label }}"}
    if queue:
        shard_kwargs["queue"] = queue
    if pool:
        shard_kwargs["pool"] = pool
    if execution_timeout:
        shard_kwargs["execution_timeout"] = execution_timeout
    ordered = {"depends_on_past": depends_on_past, "wait_for_downstream": wait_for_downstream}

    @task(task_id=f"{stage}_plan", execution_timeout=timedelta(minutes=30), doc_md=f"Plan the shards of `{stage}`.",
          **ordered)
    def plan(started: dict, upstream: dict) -> list[dict]:
        from dctp_common.runtime import plan_stage, run_context

        return plan_stage(run_context(get_current_context()), _load(target), *args, upstream=upstream)

    def phase_task(phase: str):
        @task(task_id=f"{stage}_{phase}", doc_md=f"{doc} Phase `{phase}` of one shard of the day.", **shard_kwargs)
        def run(shard: dict) -> dict:
            from dctp_common.runtime import run_context, run_shard

            context = get_current_context()
            return run_shard(run_context(context), _load(target), shard, context, phase)

        return run

    mapped = [phase_task(phase) for phase in phases]

    @task(task_id=stage, doc_md=f"{doc} Publish every shard's output together.", **ordered)
    def reduce(started: dict, shards: list[dict]) -> dict:
        from dctp_common.runtime import reduce_stage, run_context

        return reduce_stage(run_context(get_current_context()), started, _load(target), shards)

    def wire(started, upstream):
        shards = plan(started, upstream)
        previous = shards
        for run in mapped:
            done = run.expand(shard=shards)
            previous >> done
            previous = done
        result = reduce(started, shards)
        previous >> result
        wire.plan = shards
        return result

    return wire


def _load(target: str):
    import importlib

    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
