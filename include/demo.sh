#!/usr/bin/env bash
# make demo: a fresh embedded Airflow (SQLite), the demo corpus in the landing zone, the daily DAG over
# consecutive dates, then what was exported. Set DCTP_DEMO_PG=postgresql://user@host/db to add the table source.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
: "${DEMO_HOME:=$REPO/.demo}"
: "${BIN:=$REPO/.venv/bin}"
DATES=("$@")
[ ${#DATES[@]} -gt 0 ] || DATES=(2026-01-01 2026-01-02 2026-01-03)

rm -rf "$DEMO_HOME"
mkdir -p "$DEMO_HOME"
export AIRFLOW_HOME="$DEMO_HOME/airflow" DCTP_HOME="$REPO"
export DCTP_DATA_ROOT="file://$DEMO_HOME/data"
export MLFLOW_TRACKING_URI="sqlite:///$AIRFLOW_HOME/mlflow.db"
export AIRFLOW__CORE__LOAD_EXAMPLES=False PATH="$BIN:$PATH"
mkdir -p "$AIRFLOW_HOME"
"$BIN/python" "$REPO/include/render_airflow_cfg.py" "$REPO/airflow.cfg.template" "$AIRFLOW_HOME/airflow.cfg"

echo "==> Airflow metadata DB (SQLite) in $AIRFLOW_HOME"
airflow db migrate > "$DEMO_HOME/db-migrate.log" 2>&1 || { tail -20 "$DEMO_HOME/db-migrate.log"; exit 1; }

CONF='{}'
PG_ARGS=()
# The demo's own config: the defaults plus a roster of three experts, so each date's batch for annotation is
# assigned, a synthetic target for the domain the demo corpus keeps short, and the table source when DCTP_DEMO_PG is
# set (a source is the deployment's setting, which a run's config_overrides may not add).
export DCTP_CONFIG="$DEMO_HOME/dctp.yaml"
if [ -n "${DCTP_DEMO_PG:-}" ]; then
  export AIRFLOW_CONN_DCTP_SOURCE_PG="$DCTP_DEMO_PG"
  PG_ARGS=(--pg-dsn "$DCTP_DEMO_PG")
fi
"$BIN/python" - "$REPO/include/config/dctp.yaml" "$DCTP_CONFIG" "${DCTP_DEMO_PG:+pg}" <<'PY'
import sys

import yaml

config = yaml.safe_load(open(sys.argv[1]))
config["annotation"]["experts"] = {
    "alice": {"seniority": "senior"},
    "bob": {"domains": ["science", "technology", "health", "finance"]},
    "carol": {"weight": 0.8, "seniority": "junior"},
}
# the corpus keeps travel short (a quarter of the other web domains): grow it to 10 % of the day with SmolLM2
# SmolLM2-135M cannot grade (it rarely writes "Score: N"): the demo keeps its judge score without applying it;
# in production set synthetic.judge to a capable instruct model and keep the threshold
config["synthetic"].update(targets={"travel": 0.10}, daily_budget=24, judge_threshold=None)
config["synthetic"]["generator"].update(max_new_tokens=160)
if sys.argv[3] == "pg":
    config["ingest"]["sources"]["articles_db"]["enabled"] = True
yaml.safe_dump(config, open(sys.argv[2], "w"), sort_keys=False)
PY

echo "==> Demo corpus for ${DATES[*]} into $DCTP_DATA_ROOT/landing"
"$BIN/python" "$REPO/include/demo_corpus.py" --root "$DCTP_DATA_ROOT" --dates "${DATES[@]}" "${PG_ARGS[@]}" \
  > "$DEMO_HOME/corpus.json"

for dt in "${DATES[@]}"; do
  echo "==> dctp_daily for dt=$dt (log: $DEMO_HOME/run-$dt.log)"
  if ! airflow dags test dctp_daily "$dt" -c "$CONF" > "$DEMO_HOME/run-$dt.log" 2>&1 \
     || ! grep -q "state=success" "$DEMO_HOME/run-$dt.log"; then
    grep -E "ERROR|error|Traceback" "$DEMO_HOME/run-$dt.log" | tail -20
    echo "run for $dt failed; full log: $DEMO_HOME/run-$dt.log" >&2
    exit 1
  fi
done

echo
echo "==> Delta versions of $DCTP_DATA_ROOT/datasets/curated"
dctp versions
LAST=$(dctp --json versions | "$BIN/python" -c 'import json,sys; print(json.load(sys.stdin)[-1]["version"])')
echo
echo "==> Latest version ($LAST): rows by split / source / domain / language"
dctp show "$LAST"
for dt in "${DATES[@]}"; do
  echo
  dctp ledger "$dt" --rows 2
done
echo
echo "==> Synthetic generation of ${DATES[-1]} (every date: reports/dt=DATE/generate_synthetic.md)"
sed -n '1,40p' "${DCTP_DATA_ROOT#file://}/reports/dt=${DATES[-1]}/generate_synthetic.md"
echo
echo "==> Quality score report of ${DATES[0]} (every date: dctp report DATE; re-decide: dctp rescore DATE --set ...)"
dctp report "${DATES[0]}" > "$DEMO_HOME/quality-${DATES[0]}.md"
head -40 "$DEMO_HOME/quality-${DATES[0]}.md"
echo "    (the whole report: $DEMO_HOME/quality-${DATES[0]}.md; plots in MLflow under plots/)"
echo
echo "==> Selection for annotation of ${DATES[-1]} (every date: reports/dt=DATE/select_for_annotation.md)"
cat "${DCTP_DATA_ROOT#file://}/reports/dt=${DATES[-1]}/select_for_annotation.md"
echo
echo "==> The annotation queue (feedback store: $AIRFLOW_HOME/dctp_feedback.db)"
dctp queue
echo "    judge it in the terminal:  DCTP_CONFIG=$DCTP_CONFIG AIRFLOW_HOME=$AIRFLOW_HOME $BIN/dctp annotate --expert alice"
echo
echo "==> Stand-in experts judge ${DATES[-1]}'s queue through the store's API (forum posts bad, the rest good)"
"$BIN/python" - <<'PY'
from dctp_tasks.config import load_config
from dctp_tasks.feedback.store import FeedbackStore

store = FeedbackStore.open(None, load_config().annotation)
judged = 0
for expert in store.roster:
    for item in store.open_queue(expert, limit=None):
        store.submit(expert, item.item_id, "bad" if item.source == "forum" else "good", client="demo")
        judged += 1
print(f"    {judged} judgements")
PY
echo "==> dctp_feedback_apply: merge them and retract what the experts rejected (log: $DEMO_HOME/apply.log)"
if ! airflow dags test dctp_feedback_apply > "$DEMO_HOME/apply.log" 2>&1 || ! grep -q "state=success" "$DEMO_HOME/apply.log"; then
  grep -E "ERROR|error|Traceback" "$DEMO_HOME/apply.log" | tail -20
  echo "dctp_feedback_apply failed; full log: $DEMO_HOME/apply.log" >&2
  exit 1
fi
dctp feedback stats
echo
dctp weights
echo
dctp ledger "${DATES[-1]}" --rows 2
echo
echo "==> MLflow: experiment dctp_daily, one run per date (run ids in 'dctp versions' above)"
echo "    look at them with:  $BIN/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI --port 5000"
echo "==> Airflow UI with this data:  make up   (http://localhost:8080, user admin, password in $AIRFLOW_HOME)"
