"""``dctp doctor`` end to end: the real command against a migrated Airflow metadata database, each check passing on
a good setup and failing, with its fix, on a broken one (missing pool, unreachable data root, unprepared model,
unreachable MLflow, a missing or unusable connection, a config that does not load)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import config_file, free_port

pytestmark = pytest.mark.slow

DCTP = str(Path(sys.executable).with_name("dctp"))
AIRFLOW = str(Path(sys.executable).with_name("airflow"))
EVERY_CHECK = {"config", "data root", "pool default_pool", "queues", "airflow version", "provider standard",
               "deltalake", "pyarrow", "model MiniLM", "model SmolLM2", "model toxicity", "mlflow", "delta table",
               "feedback store"}


@pytest.fixture
def env(airflow_db, tmp_path) -> dict[str, str]:
    """A good setup: a writable data root and MLflow store, the metadata DB migrated, the models prepared, a feedback
    store and a roster of experts."""
    env = {k: v for k, v in os.environ.items() if k not in {"DCTP_GPU_POOL", "DCTP_GPU_QUEUE", "DCTP_CONFIG"}}
    env.update(DCTP_DATA_ROOT=(tmp_path / "data").as_uri(), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
               DCTP_FEEDBACK_URL=f"sqlite:///{tmp_path / 'feedback.db'}",
               DCTP_CONFIG=str(config_file(tmp_path, {"annotation.experts": {"alice": {}}})))
    return env


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict]]:
    """Run ``dctp --json doctor``; checks that ask nothing of Airflow pass ``--no-airflow`` (each ``airflow`` call
    costs seconds)."""
    result = subprocess.run([DCTP, "--json", "doctor", *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip().startswith("["), result.stdout[-2000:] + result.stderr[-2000:]
    return result.returncode, {c["name"]: c for c in json.loads(result.stdout)}


def failed(checks: dict[str, dict]) -> dict[str, dict]:
    return {name: c for name, c in checks.items() if c["status"] == "fail"}


def test_a_good_setup_passes_every_check(env):
    code, checks = doctor(env)
    assert code == 0, failed(checks)
    assert EVERY_CHECK <= set(checks), sorted(checks)
    assert {c["status"] for c in checks.values()} == {"ok"}, checks
    assert checks["pool default_pool"]["detail"].endswith("(DCTP_GPU_POOL unset)")
    assert checks["queues"]["detail"].startswith("LocalExecutor")

    text = subprocess.run([DCTP, "doctor", "--no-airflow"], env=env, capture_output=True, text=True,
                          timeout=300).stdout
    lines = text.strip().splitlines()
    # one line per check, the pool and queue lines replaced by one SKIP line, and the summary
    assert lines[-1].startswith("preflight passed") and len(lines) == len(checks) - 2 + 1 + 1
    assert all(line.startswith(("OK ", "SKIP  airflow ")) for line in lines[:-1]), text


def test_a_missing_pool_fails_with_the_command_that_creates_it(env):
    env["DCTP_GPU_POOL"] = "dctp_gpu_test"
    code, checks = doctor(env)
    assert code == 1 and set(failed(checks)) == {"pool dctp_gpu_test"}
    check = checks["pool dctp_gpu_test"]
    assert "does not exist" in check["detail"] and "'scheduled' forever" in check["detail"]
    assert check["fix"].startswith("airflow pools set dctp_gpu_test 1 ")

    subprocess.run([AIRFLOW, "pools", "set", "dctp_gpu_test", "2", "GPU slots"], env=env, check=True,
                   capture_output=True, timeout=300)
    try:
        code, checks = doctor(env)
        assert code == 0 and checks["pool dctp_gpu_test"]["detail"].startswith("2 slot(s) for dedup_semantic")
    finally:
        subprocess.run([AIRFLOW, "pools", "delete", "dctp_gpu_test"], env=env, capture_output=True, timeout=300)


@pytest.mark.parametrize("root", ["s3://dctp-nowhere/data", "file:///proc/dctp-data"])
def test_an_unreachable_data_root_fails_with_its_fix(env, root):
    # one attempt per request (AWS_MAX_ATTEMPTS): the standard five only add a minute of backoff to the same answer
    env.update(DCTP_DATA_ROOT=root, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}", AWS_ACCESS_KEY_ID="x",
               AWS_SECRET_ACCESS_KEY="x", AWS_EC2_METADATA_DISABLED="true", AWS_MAX_ATTEMPTS="1")
    code, checks = doctor(env, "--no-airflow")
    assert code == 1 and "data root" in failed(checks)
    check = checks["data root"]
    assert check["detail"].startswith(f"{root} is not writable")
    assert ("aws_default" in check["fix"]) == root.startswith("s3://") and "DCTP_DATA_ROOT" in check["fix"]


def test_an_unprepared_model_fails_with_the_command_that_prepares_it(env, tmp_path):
    env["DCTP_MODEL_CACHE"] = str(tmp_path / "empty-cache")
    code, checks = doctor(env, "--no-airflow")
    assert code == 1 and set(failed(checks)) == {"model SmolLM2"}
    check = checks["model SmolLM2"]
    assert str(tmp_path / "empty-cache") in check["detail"] and "prepare_models.py" in check["fix"]

    # a run that does not score perplexity does not need it
    env["DCTP_CONFIG"] = str(config_file(tmp_path, {"quality.scorers.perplexity.enabled": False}))
    code, checks = doctor(env, "--no-airflow")
    assert code == 0 and "model SmolLM2" not in checks


def test_a_missing_shipped_classifier_names_dctp_home(env, tmp_path):
    env["DCTP_HOME"] = str(tmp_path)  # a pip-installed library without the checkout's include/ folder
    env["DCTP_CONFIG"] = str(config_file(tmp_path, {}))
    code, checks = doctor(env, "--no-airflow")
    # the config names the classifier, so it does not load without it
    assert code == 1 and set(failed(checks)) == {"config"}
    assert f"{tmp_path}/include/models/toxicity-minilm" in checks["config"]["detail"]
    assert f"DCTP_HOME to the folder holding include/ (now {tmp_path})" in checks["config"]["fix"]


def test_an_unreachable_mlflow_fails_with_its_fix(env):
    env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{free_port()}"
    code, checks = doctor(env, "--no-airflow")
    assert code == 1 and set(failed(checks)) == {"mlflow"}
    assert "unreachable" in checks["mlflow"]["detail"] and "MLFLOW_TRACKING_URI" in checks["mlflow"]["fix"]


def test_a_running_mlflow_server_passes(env, tmp_path):
    import httpx

    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        env["MLFLOW_TRACKING_URI"] = f"http://127.0.0.1:{port}"
        code, checks = doctor(env, "--no-airflow")
        assert code == 0 and checks["mlflow"]["detail"] == f"http://127.0.0.1:{port} answers /health"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_postgres_sources_need_their_connection_and_table(env, tmp_path, pg_dsn, articles_table):
    env["DCTP_CONFIG"] = str(config_file(tmp_path, {"ingest.sources.articles_db.enabled": True,
                                                    "ingest.sources.articles_db.postgres.table": articles_table}))
    code, checks = doctor(env)
    assert failed(checks).keys() == {"connection dctp_source_pg"}
    assert checks["connection dctp_source_pg"]["fix"].startswith("airflow connections add dctp_source_pg")

    env["AIRFLOW_CONN_DCTP_SOURCE_PG"] = pg_dsn
    code, checks = doctor(env)
    assert code == 0 and checks["connection dctp_source_pg"]["detail"].startswith(f"connects; public.{articles_table}")

    env["DCTP_CONFIG"] = str(config_file(tmp_path, {"ingest.sources.articles_db.enabled": True,
                                                    "ingest.sources.articles_db.postgres.table": "no_such_table"}))
    code, checks = doctor(env)
    assert code == 1 and "no_such_table" in checks["connection dctp_source_pg"]["detail"]


def test_a_synthetic_endpoint_needs_its_connection_and_the_templates_must_parse(env, tmp_path):
    env["DCTP_CONFIG"] = str(config_file(tmp_path, {
        "synthetic.targets": {"legal": 0.1},
        "synthetic.generator": {"backend": "openai", "model": "qwen2.5-7b-instruct"},
        "synthetic.prompts_dir": str(tmp_path / "no-prompts")}))
    code, checks = doctor(env)
    assert code == 1 and failed(checks).keys() == {"connection dctp_llm", "prompt templates"}
    assert "synthetic generator (qwen2.5-7b-instruct)" in checks["connection dctp_llm"]["detail"]
    assert checks["connection dctp_llm"]["fix"].startswith("airflow connections add dctp_llm --conn-type http")
    assert "no-prompts" in checks["prompt templates"]["detail"]
    assert "model SmolLM2 (generator)" not in checks  # an endpoint's model is not on this disk

    env["DCTP_CONFIG"] = str(config_file(tmp_path, {
        "synthetic.targets": {"legal": 0.1},
        "synthetic.generator": {"backend": "openai", "model": "qwen2.5-7b-instruct"}}))
    env["AIRFLOW_CONN_DCTP_LLM"] = json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9/v1"})
    code, checks = doctor(env)
    assert code == 0 and checks["connection dctp_llm"]["status"] == "ok", failed(checks)
    assert checks["prompt templates"]["detail"].startswith("instruction v1, judge v1, qa v1")
    # with no target, nothing can be generated: neither the templates nor a generator are checked
    env["DCTP_CONFIG"] = str(config_file(tmp_path, {"annotation.experts": {"alice": {}}}))
    code, checks = doctor(env, "--no-airflow")
    assert code == 0 and "prompt templates" not in checks and "model SmolLM2 (generator)" not in checks


def test_a_config_that_does_not_load_fails_and_skips_what_needs_it(env, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"normalize": {"min_chars": -1}}))
    env["DCTP_CONFIG"] = str(bad)
    code, checks = doctor(env, "--no-airflow")
    assert code == 1 and set(failed(checks)) == {"config"}
    assert str(bad) in checks["config"]["detail"] and "min_chars" in checks["config"]["detail"]
    assert checks["config-dependent"]["status"] == "skip" and checks["data root"]["status"] == "ok"
