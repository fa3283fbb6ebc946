#!/usr/bin/env bash
# Entrypoint of the DCTP images: render airflow.cfg from the template with this container's environment
# (docker-compose.yaml sets every ${VAR} of airflow.cfg.template), then run the command through the
# official image's entrypoint (DB/broker wait) when there is one (Dockerfile), or directly (Dockerfile.gpu).
set -euo pipefail
python /opt/dctp/render_airflow_cfg.py /opt/dctp/airflow.cfg.template \
    "${AIRFLOW_CONFIG:-${AIRFLOW_HOME:-/opt/airflow}/airflow.cfg}"
if [[ -x /entrypoint ]]; then
    exec /entrypoint "$@"
fi
exec "$@"
