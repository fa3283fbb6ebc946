#!/usr/bin/env bash
# airflow-init (docker compose): everything the DAGs need before any Airflow component starts. Idempotent:
# it runs on every `docker compose up` and re-applies .env (edit .env, not the UI, for these objects).
set -euo pipefail

echo "==> migrating the metadata database"
airflow db migrate

echo "==> admin user ${DCTP_ADMIN_USER} (simple auth manager; password from AIRFLOW_ADMIN_PASSWORD)"
python - <<'PY'
import json, os, pathlib
path = pathlib.Path(os.environ["AIRFLOW_PASSWORDS_FILE"])
path.parent.mkdir(parents=True, exist_ok=True)
path.write_text(json.dumps({os.environ["DCTP_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}) + "\n")
path.chmod(0o660)
PY

echo "==> pool ${DCTP_GPU_POOL}: ${DCTP_GPU_POOL_SLOTS} slot(s), one per GPU"
airflow pools set "${DCTP_GPU_POOL}" "${DCTP_GPU_POOL_SLOTS}" "GPU slots: one GPU task per GPU of the gpu workers"

echo "==> connections"
airflow connections delete aws_default > /dev/null 2>&1 || true
airflow connections add aws_default --conn-json "${DCTP_AWS_DEFAULT_CONN}"
if [[ -n "${DCTP_SOURCE_PG_URI:-}" ]]; then
    airflow connections delete dctp_source_pg > /dev/null 2>&1 || true
    airflow connections add dctp_source_pg --conn-uri "${DCTP_SOURCE_PG_URI}"
fi

echo "==> bucket of ${DCTP_DATA_ROOT}"
python /opt/airflow/include/compose/ensure_bucket.py "${DCTP_DATA_ROOT}"

echo "==> models in ${DCTP_MODEL_CACHE} (seeded from the image; a no-op when complete)"
python /opt/airflow/include/prepare_models.py

echo "==> airflow-init done"
