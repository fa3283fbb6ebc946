"""
### DCTP daily curation

Turns one day of raw text and instruction data into a new version of the curated Delta table:

`preflight` → `start_run` → `wait_for_landing` → `ingest` → `normalize` → `dedup_exact` → `dedup_near` →
`dedup_semantic` → `score` → `score_models` → `decide` → `select_for_annotation` → `merge_feedback` →
`generate_synthetic` → `export` → `finish_run`, with
`preflight_gpu` between `preflight` and `dedup_semantic`, and `feedback_db` (the feedback store's migrations)
before `select_for_annotation`

* **Preflight**: the first task checks what the run needs (config, data root, queues, connections, MLflow, the
  Delta table, versions) and `preflight_gpu` checks the models on a GPU worker before `dedup_semantic`; each fails
  at once, one line per problem with its fix. `dctp doctor` runs the same checks from a shell (and also checks the
  pools, which a task cannot read).
* **Partition**: each run processes the landing folders `landing/{source}/dt=YYYY-MM-DD` of its data
  interval start (manual runs without a logical date use their `run_after` day) and the configured
  PostgreSQL tables' rows inside the interval.
* **Missing data waits, then fails**: `wait_for_landing` (a reschedule-mode sensor: no worker slot is held)
  checks that every configured source has data for the date, and fails naming what is missing once
  `ingest.wait_timeout_minutes` have passed since the day ended — unless the source says `allow_empty`.
* **Nothing is lost**: malformed rows are quarantined, short/long texts filtered, duplicates recorded
  with `duplicate_of`; `finish_run` fails the run unless
  `ingested = exported + duplicates + filtered + quarantined + retracted`. Inspect with `dctp ledger DATE`.
* **Dedup**: exact copies (same normalized text), near copies (MinHash LSH over word 5-grams, estimated
  Jaccard ≥ 0.7) and semantic copies (MiniLM embeddings, cosine ≥ 0.95, per-domain overrides) within the day
  and against every earlier date; the earliest copy survives. `dedup_semantic` runs on the `gpu` queue
  (`DCTP_GPU_QUEUE`), in the pool `DCTP_GPU_POOL` names, else in `default_pool`.
* **Quality**: `score` (CPU scorers: heuristics, language, PII, credibility) and `score_models` (GPU queue:
  perplexity, toxicity, relevance, trained classifiers) store every score; `decide` applies the rules and the
  composite `quality`, filters (ledger reason = the rule, e.g. `too_few_words`), marks `review` rows and
  redacts PII. Unchanged scores are never recomputed: to re-decide a date with new thresholds, trigger
  `dctp_rescore` (or run `dctp rescore DATE --set toxicity.toxic=0.9`).
* **Annotation**: `select_for_annotation` picks at most `annotation.budget` of the day's documents (the Param
  `annotation_budget`; 0 switches it off) for expert judgement — the least certain, the ones the scorers disagree
  on, a random share, and an audit share of filtered rows, spread over domains, sources and embedding clusters —
  and queues them in the feedback store (connection `dctp_feedback`, else SQLite under `$AIRFLOW_HOME`), each
  assigned to `annotation.experts_per_item` experts of the roster. Experts judge with `dctp annotate`; a re-run
  keeps a batch anyone has judged. `dctp queue` shows what is waiting.
* **Expert feedback**: `merge_feedback` turns every judgement so far into a consensus per document (weighted
  majority, Dawid–Skene once experts overlap enough): rows judged bad leave (ledger reason `expert_rejected`), review
  rows judged good pass, every row gets a `sampling_weight` (source x domain x quality, bounded). `export` then
  retracts documents of earlier dates judged bad from their partitions (ledger outcome `retracted`).
  `dctp_feedback_apply` does the same every 30 minutes between daily runs. `dctp feedback stats`, `dctp weights`.
* **Synthetic data**: `generate_synthetic` (GPU queue) plans rows for the domains short of data (`synthetic.targets`,
  `synthetic.min_share_of_largest`; at most `synthetic.max_share` of the date, 10 %), generates question–answer or
  instruction pairs from their best real documents (SmolLM2 by default, or an OpenAI-compatible endpoint through the
  connection `dctp_llm`), scores them like real data plus an LLM judge, and rejects copies, low quality, reward
  hacking and drifting batches (ledger reasons `synthetic_*`). Accepted rows have `synthetic = true`. A retried task
  reuses every batch already generated.
* **Backfills**: re-running any date gives the same result (with the judgements made so far applied); the dedup
  tasks, `merge_feedback`, `generate_synthetic` and `export` wait for the previous date (`depends_on_past`), so
  history has no holes.
* **Validation, card, Asset**: `export` commits only a version that passes the validation checks (`dctp validate`;
  report `reports/dt=D/validation.html`), logs the version's dataset card, and emits an event of the Asset
  `dctp_curated` with the version in its extra: training DAGs schedule on it (`dags/examples/`).
* **Tracking**: one MLflow run per DAG run (experiment `dctp_daily`, run name = run id).

Trigger with config to override thresholds for one run (see the Params).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import Param, PokeReturnValue, dag, get_current_context, task

from dctp_common.assets import CURATED
from dctp_common.compat import CronDataIntervalTimetable
from dctp_common.dag_defaults import (
    CONFIG_OVERRIDES,
    DEFAULT_ARGS,
    GPU_POOL,
    GPU_QUEUE,
    LANDING_POKE_SECONDS,
    LANDING_SENSOR_TIMEOUT,
    QUALITY_PARAMS,
)
from dctp_common.sharding import sharded_stage

PARAMS = {
    "sources": Param([], type="array", items={"type": "string"}, title="Sources",
                     description="Only ingest these landing sources / tables (empty: every source)."),
    "min_chars": Param(None, type=["null", "integer"], minimum=0, title="Minimum characters",
                       description="Filter normalized texts shorter than this (empty: config default, 50)."),
    "max_chars": Param(None, type=["null", "integer"], minimum=1, title="Maximum characters",
                       description="Filter normalized texts longer than this (empty: config default, 100000)."),
    "max_quarantine_ratio": Param(None, type=["null", "number"], minimum=0, maximum=1,
                                  title="Maximum quarantine ratio",
                                  description="Fail ingest when a larger share of rows is malformed "
                                              "(empty: config default, 0.05)."),
    "near_dup_threshold": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                                title="Near-duplicate threshold",
                                description="Estimated Jaccard of word 5-grams at or above which two texts are "
                                            "near duplicates (empty: config default, 0.7)."),
    "semantic_threshold": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=1,
                                title="Semantic duplicate threshold",
                                description="Cosine similarity of MiniLM embeddings at or above which two texts are "
                                            "semantic duplicates (empty: config default, 0.95). Per-domain values: "
                                            'config_overrides {"dedup_semantic.domain_thresholds": {"news": 0.92}}.'),
    **QUALITY_PARAMS,
    "annotation_budget": Param(None, type=["null", "integer"], minimum=0, title="Annotation budget",
                               description="Documents to choose for expert judgement today (0: none; empty: config "
                                           "default, 100)."),
    "batch_size": Param(None, type=["null", "integer"], minimum=1, title="Batch size",
                        description="Rows per Arrow batch in every stage (empty: config default, 10000)."),
    "config_overrides": CONFIG_OVERRIDES,
}


def _ctx():
    from dctp_common.runtime import run_context

    return run_context(get_current_context())


@dag(
    dag_id="dctp_daily",
    schedule=CronDataIntervalTimetable("@daily", timezone="UTC"),  # run for [D, D+1) fires at D+1 00:00
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=3,
    default_args=DEFAULT_ARGS,
    params=PARAMS,
    tags=["dctp", "curation"],
    doc_md=__doc__,
)
def dctp_daily():
    @task(retries=0, execution_timeout=timedelta(minutes=10))
    def preflight() -> list[dict]:
        """Check what the run needs; fail at once, naming each missing piece and its fix."""
        from dctp_common.preflight import run_checks

        return run_checks(get_current_context(), "daily")

    # on a GPU worker, where the models load; in default_pool, so a missing GPU pool cannot hold it back
    @task(retries=0, execution_timeout=timedelta(minutes=10), queue=GPU_QUEUE)
    def preflight_gpu() -> list[dict]:
        """Check what the GPU tasks need on the worker that runs them: the data root and the prepared models."""
        from dctp_common.preflight import run_checks

        return run_checks(get_current_context(), "daily_gpu")

    @task(execution_timeout=timedelta(minutes=10))
    def start_run() -> dict:
        """Open (or reopen, on a re-run) this run's MLflow run and log the resolved config."""
        from dctp_common.runtime import start_tracking

        run = _ctx()
        return start_tracking(run, run.dag_id)

    @task.sensor(mode="reschedule", poke_interval=LANDING_POKE_SECONDS, timeout=LANDING_SENSOR_TIMEOUT,
                 execution_timeout=timedelta(minutes=10))
    def wait_for_landing(started: dict) -> PokeReturnValue:
        """Wait for every expected source's data of the date; fail, naming what is missing, past the deadline."""
        from dctp_common.runtime import landing_ready, postgres_connector

        return landing_ready(_ctx(), postgres_connector())

    @task
    def ingest(started: dict) -> dict:
        """Read every landing file and configured table of the date; quarantine malformed rows."""
        from dctp_common.runtime import postgres_connector
        from dctp_tasks.ingest import ingest_day

        run = _ctx()
        return _stage(run, started, ingest_day, interval=run.interval, connect=postgres_connector())

    normalize = sharded_stage("normalize", "dctp_tasks.normalize:NORMALIZE",
                              doc="Repair Unicode, collapse whitespace, filter by length and identify the language.")

    @task(depends_on_past=True)
    def dedup_exact(started: dict, normalized: dict) -> dict:
        """Drop exact duplicates within the day and of every earlier date."""
        from dctp_tasks.dedup.exact import dedup_exact_day

        return _stage(_ctx(), started, dedup_exact_day, upstream=normalized)

    dedup_near = sharded_stage(
        "dedup_near", "dctp_tasks.dedup.near:NEAR", phases=("sign", "search"), depends_on_past=True,
        doc="Drop near duplicates (MinHash LSH) within the day and of every earlier date; report pairs by threshold. "
            "Each shard signs its rows, then searches one range of band hashes (today's and history's).")

    dedup_semantic = sharded_stage(
        "dedup_semantic", "dctp_tasks.dedup.semantic:SEMANTIC", phases=("encode", "search"), queue=GPU_QUEUE,
        pool=GPU_POOL, execution_timeout=timedelta(hours=4), depends_on_past=True,
        doc="Drop semantic duplicates (embedding cosine) within the day and of every earlier date; store embeddings. "
            "Each shard encodes its rows, then searches with them against all of today's and history's vectors.")

    score = sharded_stage("score", "dctp_tasks.quality.scoring:SCORE", "cpu",
                          doc="Run the CPU scorers (heuristics, language, PII, credibility) and store their scores.")

    # relevance reads the centroids the previous date's decide publishes: the plan waits for the previous date's
    # plan and its downstream tasks, decide included (an edge below), so a backfill gives every date the same
    # history as a day-by-day run
    score_models = sharded_stage(
        "score_models", "dctp_tasks.quality.scoring:SCORE", "gpu", queue=GPU_QUEUE, pool=GPU_POOL,
        execution_timeout=timedelta(hours=4), depends_on_past=True, wait_for_downstream=True,
        doc="Run the model scorers (perplexity, toxicity, relevance, classifiers); reuse unchanged scores.")

    @task
    def feedback_db() -> dict:
        """Apply the feedback store's missing migrations (idempotent; connection dctp_feedback, else SQLite)."""
        from dctp_common.runtime import upgrade_feedback_store

        return upgrade_feedback_store()

    @task
    def decide(started: dict, scored: dict) -> dict:
        """Apply the rules and the composite to the stored scores: filter, mark review rows, redact PII, report."""
        from dctp_tasks.quality.decide import decide_day

        return _stage(_ctx(), started, decide_day, upstream=scored)

    # reads the earlier dates' batches (what is queued, who has open work): dates go in order, like the dedup tasks
    @task(depends_on_past=True)
    def select_for_annotation(started: dict, decided: dict, store: dict) -> dict:
        """Choose the day's documents for expert judgement within the budget; queue and assign them."""
        from dctp_common.runtime import feedback_store
        from dctp_tasks.feedback.select import select_for_annotation_day

        run = _ctx()
        with feedback_store(run.config) as store_:
            return _stage(run, started, select_for_annotation_day, store=store_, input_stage=decided["output_stage"],
                          input_version=decided["version"], scores_dag_id=decided["scores_dag_id"],
                          scores_stage=decided["scores_stage"], scores_version=decided["scores_version"],
                          run_id=run.run_id, mlflow_run_id=started["mlflow_run_id"])

    # reads every judgement made so far (not only those of earlier dates) and publishes the source labels the next
    # date's credibility reads: dates go in order
    @task(depends_on_past=True)
    def merge_feedback(started: dict, decided: dict, selected: dict) -> dict:
        """Turn every judgement into consensus; drop rows judged bad, promote review rows judged good, weight rows."""
        from dctp_common.runtime import feedback_store
        from dctp_tasks.feedback.merge import merge_feedback_day

        run = _ctx()
        with feedback_store(run.config) as store_:
            return _stage(run, started, merge_feedback_day, store=store_, upstream=decided, run_id=run.run_id)

    # compares what it generates with the rows earlier dates accepted (state/synthetic): dates go in order
    @task(queue=GPU_QUEUE, pool=GPU_POOL, execution_timeout=timedelta(hours=4), depends_on_past=True)
    def generate_synthetic(started: dict, merged: dict) -> dict:
        """Generate rows for the domains short of data from their best documents; keep what passes the safeguards."""
        from dctp_common.runtime import llm_endpoints
        from dctp_tasks.synthetic.stage import generate_synthetic_day

        run = _ctx()
        return _stage(run, started, generate_synthetic_day, upstream=merged, endpoints=llm_endpoints(run.config))

    @task(depends_on_past=True, outlets=[CURATED])
    def export(started: dict, ingested: dict, decided: dict, merged: dict, synthesized: dict,
               dropped: list[dict]) -> dict:
        """Commit the merged rows to the Delta table as one new version replacing only their date, with the ledger
        of every stage that dropped rows in this run; then retract other dates' documents judged bad."""
        from dctp_common.runtime import export_with_feedback, merge_metadata, synthetic_metadata
        from dctp_tasks.export import Staged

        run = _ctx()
        return export_with_feedback(
            run, started, run_id=run.run_id, ingested=ingested["total"], synthesized=synthesized["generated"],
            rows=Staged(run.dag_id, synthesized["output_stage"], synthesized["version"]),
            # a stage that passed its input on (merging switched off) dropped nothing
            ledger=[Staged(run.dag_id, r["stage"], r["version"]) for r in dropped if r["output_stage"] == r["stage"]],
            metadata={"mlflow_run_id": started["mlflow_run_id"] or "", **merge_metadata(run, merged),
                      **{f"{r['stage']}_dropped": r["dropped"] for r in dropped},
                      **synthetic_metadata(run, synthesized),
                      **{key: decided[key] for key in ("scores_dag_id", "scores_stage", "scores_version")}})

    @task(execution_timeout=timedelta(minutes=30))
    def finish_run(started: dict, ingested: dict, exported: dict) -> dict:
        """Prove the ledger balances against the committed Delta version; close the MLflow run."""
        from dctp_common.runtime import finish

        return finish(_ctx(), started, ingested["total"], exported, stamp_batch=True)

    started = start_run()
    checked = preflight()
    checked >> started
    checked_gpu = preflight_gpu()
    checked >> checked_gpu
    ingested = ingest(started)
    wait_for_landing(started) >> ingested
    normalized = normalize(started, ingested)
    exact = dedup_exact(started, normalized)
    near = dedup_near(started, exact)
    semantic = dedup_semantic(started, near)
    checked_gpu >> dedup_semantic.plan
    model_scored = score_models(started, score(started, semantic))
    decided = decide(started, model_scored)
    score_models.plan >> decided
    store = feedback_db()
    checked >> store
    selected = select_for_annotation(started, decided, store)
    merged = merge_feedback(started, decided, selected)
    synthesized = generate_synthetic(started, merged)
    exported = export(started, ingested, decided, merged, synthesized,
                      dropped=[ingested, normalized, exact, near, semantic, decided, merged, synthesized])
    finish_run(started, ingested, exported)


def _stage(run, started: dict, stage, *args, **kwargs) -> dict:
    """Run a library stage for the run's date (retry-proof errors fail at once) and log its result."""
    from dctp_common.runtime import run_stage

    return run_stage(run, started, stage, *args, **kwargs)


dctp_daily()
