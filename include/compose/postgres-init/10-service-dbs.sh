#!/usr/bin/env bash
# Run by the postgres image on its first start (empty volume): a database of its own, owned by its own role, for
# MLflow's backend store and for DCTP's feedback store (annotation queue and judgements). Idempotent, so on an
# existing volume run it by hand:
#   docker compose exec postgres bash /docker-entrypoint-initdb.d/10-service-dbs.sh
set -euo pipefail
create() {
  psql -v ON_ERROR_STOP=1 --username "${POSTGRES_USER}" --dbname "${POSTGRES_DB}" \
      -v role="$1" -v password="$2" <<'SQL'
SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', :'role', :'password')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'role') \gexec
SELECT format('ALTER ROLE %I PASSWORD %L', :'role', :'password') \gexec
SELECT format('CREATE DATABASE %I OWNER %I', :'role', :'role')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'role') \gexec
SQL
}
create "${MLFLOW_DB_USER}" "${MLFLOW_DB_PASSWORD}"
create "${FEEDBACK_DB_USER}" "${FEEDBACK_DB_PASSWORD}"
