#!/usr/bin/env bash
# make up: `airflow standalone` (LocalExecutor, SQLite) with this package's dags/ and plugins/, on
# http://localhost:8080, sharing the demo's data root and MLflow store so `make demo` runs show up.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
: "${DEMO_HOME:=$REPO/.demo}"
: "${BIN:=$REPO/.venv/bin}"
export AIRFLOW_HOME="$DEMO_HOME/airflow" DCTP_HOME="$REPO"
# the GPU tasks take one slot of this pool (created below): one model in memory at a time
export DCTP_GPU_POOL="${DCTP_GPU_POOL:-gpu}"
export DCTP_DATA_ROOT="${DCTP_DATA_ROOT:-file://$DEMO_HOME/data}"
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$AIRFLOW_HOME/mlflow.db}"
export AIRFLOW__CORE__LOAD_EXAMPLES=False AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False PATH="$BIN:$PATH"
# the demo's config and its roster: alice, bob and carol sign in as themselves to annotate (Annotate in the nav)
if [ -z "${DCTP_CONFIG:-}" ] && [ -f "$DEMO_HOME/dctp.yaml" ]; then export DCTP_CONFIG="$DEMO_HOME/dctp.yaml"; fi
EXPERTS="$("$BIN/python" -c 'from dctp_tasks.config import load_config
print(",".join(f"{name}:user" for name in load_config().annotation.experts))')"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin${EXPERTS:+,$EXPERTS}}"
mkdir -p "$AIRFLOW_HOME" "$DEMO_HOME"
"$BIN/python" "$REPO/include/render_airflow_cfg.py" "$REPO/airflow.cfg.template" "$AIRFLOW_HOME/airflow.cfg"
airflow db migrate > "$DEMO_HOME/up-migrate.log" 2>&1
airflow dags reserialize > /dev/null 2>&1
airflow pools set "$DCTP_GPU_POOL" 1 "GPU slots: one model on the GPU at a time" > /dev/null
dctp doctor || echo "==> dctp doctor found problems (above): runs will fail at their preflight task until fixed"
airflow dags unpause dctp_daily > /dev/null  # ready to trigger, backfill, and run daily
echo "==> Airflow UI on http://localhost:8080 — users $AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS, passwords in"
echo "    $AIRFLOW_HOME/simple_auth_manager_passwords.json.generated; experts judge under Annotate in the nav"
echo "==> data root $DCTP_DATA_ROOT; MLflow store $MLFLOW_TRACKING_URI"
exec airflow standalone
