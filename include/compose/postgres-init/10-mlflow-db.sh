#!/usr/bin/env bash
# Run by the postgres image on its first start (empty volume): MLflow's backend store, a database of its own
# owned by its own role. Idempotent, so on an existing volume run it by hand:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-mlflow-db.sh
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
    -v role="${MLFLOW_DB_USER}" -v password="${MLFLOW_DB_PASSWORD}" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role') \gexec
SQL
